"""An echo server: sends every message back to the client that sent it.

Run:  python3 examples/echo_server.py [PORT]     (default 30000, loopback only)
Stop with Ctrl-C.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from missioncommander import BindError, Message, Server


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 30000
    server = Server(interface="127.0.0.1", port=port)

    def on_message(client_id: str, message: Message) -> None:
        print(f"{client_id} says {message.subject}: {dict(message.payload)}")
        server.send(client_id, Message(message.subject, message.payload))

    server.subscribe("clientconnect", lambda client_id: print(f"{client_id} connected"))
    server.subscribe("clientdisconnect", lambda client_id: print(f"{client_id} left"))
    server.subscribe("message", on_message)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server.start()
    except BindError as exc:
        # The README's quick start puts mcd's server on 30000 too.
        sys.exit(f"{exc}\n(another server has that port, mcd's say: python3 examples/echo_server.py {port + 1})")
    try:
        print(f"echo server listening on 127.0.0.1:{server.port}; Ctrl-C stops it", flush=True)
        stop.wait()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
