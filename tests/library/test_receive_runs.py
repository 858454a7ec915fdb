"""What one read brings is handed to the callbacks as a run (one hand-over,
not one per message): on a fake driver, so that many frames arrive in
exactly one read, whatever the kernel would have done.

The rules a run must keep: every message once and in order, duplicates of a
resume dropped, a request in the middle answered in its place, and each
message taken (acknowledgeable) as its callbacks return.
"""

from __future__ import annotations

import threading

import pytest
from support.fake_driver import FakeDriver, connected_client

from missioncommander import Message, Server
from missioncommander._connection import Connection
from missioncommander._events import AckReceived, MessageReceived, Role
from missioncommander._frames import message_frames, with_id
from missioncommander._inbox import ACK_DELAY


def _body(n: int) -> bytes:
    return Message("m", {"n": n}).encode()


@pytest.mark.parametrize("inline", [True, False])
def test_a_run_with_a_duplicate_and_a_request_in_it_is_handled_in_order(inline: bool) -> None:
    driver = FakeDriver()
    client, transport, peer, _hello = connected_client(driver, inline_callbacks=inline)
    seen: list[str] = []
    done = threading.Event()

    def on_message(message: Message) -> None:
        seen.append(f"message {message.payload['n']}")
        if message.payload["n"] == 6:
            done.set()

    def on_request(message: Message) -> dict[str, int]:
        seen.append(f"request {message.payload['n']}")
        return {"answer": message.payload["n"]}

    client.subscribe("message", on_message)
    client.subscribe("request", on_request)
    # Messages 1-3, 2-3 again (as a resume resends them), request 4, messages 5-6: one read.
    chunk = b"".join(
        [
            *message_frames(1, [_body(1), _body(2), _body(3)]),
            *message_frames(2, [_body(2), _body(3)]),
            *message_frames(4, [with_id(_body(4), "request", 9)]),
            *message_frames(5, [_body(5), _body(6)]),
        ]
    )
    transport.feed(chunk)
    driver.run()
    assert done.wait(10)
    assert seen == ["message 1", "message 2", "message 3", "request 4", "message 5", "message 6"]
    # The reply went out (from the callback thread when not inline: the loop writes it).
    driver.run()
    replies = [e for e in peer.receive_data(transport.take(), driver.now) if isinstance(e, MessageReceived)]
    assert [(e.payload, e.meta) for e in replies] == [({"answer": 4}, {"reply": 9})]
    # All six taken: the ack after ACK_DELAY names the last.
    assert client.stats()["inbound_waiting"] == 0
    driver.advance(ACK_DELAY)
    assert AckReceived(6) in peer.receive_data(transport.take(), driver.now)


def test_a_server_hands_a_clients_run_over_in_order_with_its_id() -> None:
    driver = FakeDriver()
    server = Server(_driver=driver, interface="127.0.0.1", port=0, inline_callbacks=True)
    server.start()
    got: list[tuple[str, int]] = []

    def on_message(client_id: str, message: Message) -> None:
        got.append((client_id, message.payload["n"]))

    server.subscribe("message", on_message)
    transport = driver.listeners[-1].connect().transport
    assert transport is not None
    client = Connection(Role.CLIENT, now=driver.now)
    client.receive_data(transport.take(), driver.now)  # the CHALLENGE
    transport.feed(client.send_hello("c7", None, 0, 65536, 15.0, driver.now))
    driver.run()
    client.receive_data(transport.take(), driver.now)  # the WELCOME
    transport.feed(b"".join(message_frames(1, [_body(n) for n in range(1, 101)])))
    driver.run()
    assert got == [("c7", n) for n in range(1, 101)]
    # Nothing subscribed: still taken, and acknowledged.
    server.unsubscribe("message", on_message)
    transport.feed(b"".join(message_frames(101, [_body(n) for n in range(101, 111)])))
    driver.run()
    driver.advance(ACK_DELAY)
    assert AckReceived(110) in client.receive_data(transport.take(), driver.now)
    server.stop()
