"""A server and two clients exchanging messages in one process.

Run:  python3 examples/demo.py
"""

from __future__ import annotations

import threading

from missioncommander import Client, Message, Server

# The server's callbacks and each client's run on threads of their own, so
# two lines printed at once could mix: one line is written at a time.
_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


def main() -> None:
    # Each client is done once it has both its welcome and the broadcast:
    # they may come in either order, and the main thread stops the server
    # only after both clients have both (a callback never blocks to wait).
    expected = {"welcome", "news"}
    seen: dict[str, set[str]] = {"alice": set(), "bob": set()}
    done = {name: threading.Event() for name in seen}

    with Server(interface="127.0.0.1", port=0) as server:

        def on_server_message(client_id: str, message: Message) -> None:
            say(f"server <- {client_id}: {message.subject} {dict(message.payload)}")
            if message.subject == "hello":
                server.send(client_id, Message("welcome", {"you_are": client_id}))

        server.subscribe("clientconnect", lambda cid: say(f"server: {cid} connected"))
        server.subscribe("message", on_server_message)

        clients = []
        for name in ("alice", "bob"):
            client = Client(address="127.0.0.1", port=server.port, client_id=name)

            def on_message(message: Message, name: str = name) -> None:
                say(f"{name} <- server: {message.subject} {dict(message.payload)}")
                seen[name].add(message.subject)
                if seen[name] >= expected:
                    done[name].set()

            client.subscribe("message", on_message)
            client.connect()
            client.send(Message("hello", {"from": name}))
            clients.append(client)

        server.send("*", Message("news", {"text": "broadcast to every client"}))
        for name, event in done.items():
            if not event.wait(10):
                raise SystemExit(f"{name} did not get both its welcome and the news within 10 s")
        for client in clients:
            client.disconnect()
    print("demo finished")


if __name__ == "__main__":
    main()
