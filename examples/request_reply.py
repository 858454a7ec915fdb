"""Request/reply both ways: the client asks the server, the server asks a client.

Run:  python3 examples/request_reply.py

A responder is a ``request`` callback that returns the reply (a ``Message``
or a dict payload) or raises.  The request and its reply travel in the
session, so a connection that breaks and resumes meanwhile still gets its
answer, exactly once (docs/PROTOCOL.md, "Requests and replies").
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from missioncommander import Client, Message, NoResponder, RemoteError, RequestTimeout, Server


def answer(client_id: str, request: Message) -> dict[str, Any]:
    """The server's responder: runs on its callback thread, one request at a
    time, unless the server's ``concurrent_requests`` lets more run at once."""
    a, b = request.payload.get("a", 0), request.payload.get("b", 0)
    if request.subject == "add":
        return {"sum": a + b}
    if request.subject == "divide":
        return {"quotient": a / b}  # b == 0 raises: the asker gets a RemoteError
    if request.subject == "slow":
        time.sleep(1.0)  # longer than the asker waits: its reply is dropped, never misdelivered
        return {"done": True}
    raise ValueError(f"no such question: {request.subject}")


def ask(client: Client, subject: str, payload: dict[str, Any], timeout: float = 5.0) -> None:
    try:
        reply = client.request(Message(subject, payload), timeout=timeout)
    except RemoteError as exc:  # the responder raised: its exception's type and message
        print(f"client asks {subject} {payload} -> RemoteError {exc.type_name}: {exc.message}")
    except RequestTimeout as exc:
        print(f"client asks {subject} {payload} -> RequestTimeout: {exc}")
    else:
        print(f"client asks {subject} {payload} -> {dict(reply.payload)}")


def main() -> None:
    # The library logs what goes wrong on the far side (a responder that
    # raised, a reply that came too late) through `logging`.
    logging.basicConfig(level=logging.WARNING, format="log: %(name)s: %(message)s")
    with Server(interface="127.0.0.1", port=0) as server:
        server.subscribe("request", answer)
        alice = Client(address="127.0.0.1", port=server.port, client_id="alice")
        alice.subscribe("request", lambda request: {"client_id": "alice", "asked": request.subject})
        bob = Client(address="127.0.0.1", port=server.port, client_id="bob")  # answers nothing
        with alice, bob:
            ask(alice, "add", {"a": 2, "b": 3})
            ask(alice, "divide", {"a": 1, "b": 0})
            ask(alice, "slow", {}, timeout=0.3)
            reply = server.request("alice", Message("whoami"), timeout=5.0)
            print(f"server asks alice whoami -> {dict(reply.payload)}")
            try:
                server.request("bob", Message("whoami"), timeout=5.0)
            except NoResponder as exc:  # at once, not after the timeout
                print(f"server asks bob whoami -> NoResponder: {exc}")
            ask(alice, "add", {"a": 40, "b": 2})  # the late reply to "slow" is not taken for this one
            # One slow responder holds every request behind it; up to four
            # may run side by side (on threads of their own) from now on.
            server.concurrent_requests = 4
            with ThreadPoolExecutor(4) as asking:
                replies = list(asking.map(lambda _: alice.request(Message("slow"), timeout=5.0), range(4)))
            print(f"client asks slow 4 times at once -> {[dict(r.payload) for r in replies]}")
    print("request_reply finished")


if __name__ == "__main__":
    main()
