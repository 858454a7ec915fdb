"""A server in its own process, for tests that kill -9 it: echoes every message.

Usage: python echo_server.py PORT; prints READY when listening.
"""

from __future__ import annotations

import sys
import threading

from missioncommander import Message, Server


def main() -> None:
    server = Server(interface="127.0.0.1", port=int(sys.argv[1]), heartbeat_interval=0.5, heartbeat_timeout=3.0)

    def echo(client_id: str, message: Message) -> None:
        server.send(client_id, Message(message.subject, dict(message.payload)))

    server.subscribe("message", echo)
    server.start()
    print("READY", server.port, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
