"""A client for echo_server.py: sends a few messages and prints the echoes.

Run:  python3 examples/echo_client.py [PORT]     (default 30000)
"""

from __future__ import annotations

import sys
import threading

from missioncommander import Client, ClientState, ClientStateTransition, ConnectError, Message


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 30000
    count = 3
    echoed = threading.Semaphore(0)

    def on_message(message: Message) -> None:
        print(f"echo: {message.subject} {dict(message.payload)}")
        echoed.release()

    def on_state(t: ClientStateTransition) -> None:
        print(f"state: {ClientState.get_name(t.new_state)}")

    client = Client(address="127.0.0.1", port=port)
    client.subscribe("message", on_message)
    client.subscribe("statechange", on_state)
    try:
        client.connect()
    except ConnectError as exc:
        again = "" if port == 30000 else f" {port}"
        sys.exit(f"{exc}\n(is the server running? python3 examples/echo_server.py{again})")
    with client:
        for n in range(count):
            client.send(Message("echo", {"message": "hello", "n": n}))
        for _ in range(count):
            if not echoed.acquire(timeout=5):
                sys.exit(
                    f"no echo within 5 s: the server on port {port} does not echo"
                    " (is it examples/echo_server.py, or another one, mcd's say?)"
                )


if __name__ == "__main__":
    main()
