"""A send's ``timeout``.  ``server.send(target, message, timeout=)``: a
thread of the application's that streams to a client, or broadcasts a
burst, is held back to the clients' pace instead of getting
``QueueFullError`` (or cutting every client, fast ones too, for a
broadcast) at the first full queue; the default, no wait, stays: one client
that stops reading must not stall a server's callbacks.
``client.send(message, timeout=)``: less than ``send_timeout`` for one call
(mcd's sends for mcctl, which waits for the answer that long)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from support import FaultProxy, Recorder, wait_until

from missioncommander import Client, Message, QueueFullError, Server, StateError, UnknownClient

MakeClient = Callable[..., Client]
WAIT = 10.0


def stream(server: Server, target: str, count: int, timeout: float | None) -> tuple[threading.Thread, list[object]]:
    """Send ``count`` messages from a thread of their own; what it ended
    with (None, or the exception) lands in the list."""
    outcome: list[object] = []

    def run() -> None:
        try:
            for n in range(count):
                server.send(target, Message("n", {"n": n}), timeout=timeout)
        except Exception as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    sender = threading.Thread(target=run, daemon=True)
    sender.start()
    return sender, outcome


def test_a_send_with_a_timeout_waits_for_room_and_delivers_the_whole_stream(make_client: MakeClient) -> None:
    release = threading.Event()
    with Server(interface="127.0.0.1", port=0, max_queued=20) as server:
        client = make_client(server, client_id="c")
        got: list[int] = []
        client.subscribe("message", lambda m: (release.wait(WAIT), got.append(m.payload["n"])))
        client.connect()
        try:
            with pytest.raises(QueueFullError, match=r"send queue of client 'c' is full \(20 messages"):
                for n in range(21):  # without a timeout, as before: at once
                    server.send("c", Message("n", {"n": -1 - n}))
            sender, outcome = stream(server, "c", 100, timeout=WAIT)
            wait_until(lambda: server.stats()["senders_waiting"] == 1, what="the stream waiting for room")
            assert outcome == [] and server.queued("c") == 20
        finally:
            release.set()
        sender.join(WAIT)
        assert outcome == [None] and server.stats()["senders_waiting"] == 0
        wait_until(lambda: len(got) == 120, what="all delivered")
        assert got == [-1 - n for n in range(20)] + list(range(100))


def test_a_send_with_a_timeout_gives_up_on_a_client_that_takes_nothing(make_client: MakeClient) -> None:
    release = threading.Event()
    with Server(interface="127.0.0.1", port=0, max_queued=5) as server:
        client = make_client(server, client_id="stuck")
        client.subscribe("message", lambda m: release.wait(WAIT))
        client.connect()
        try:
            sender, outcome = stream(server, "stuck", 10, timeout=0.2)
            sender.join(WAIT)
            (raised,) = outcome
            assert isinstance(raised, QueueFullError)
            assert "send queue of client 'stuck' is full (5 messages" in str(raised) and "after 0.2 s" in str(raised)
            # Its session ending ends a wait with no end too: the message has nowhere to go.
            sender, outcome = stream(server, "stuck", 10, timeout=None)
            wait_until(lambda: server.stats()["senders_waiting"] == 1, what="the send waiting for room")
            server.disconnect_client("stuck", "go away")
            sender.join(WAIT)
            (raised,) = outcome
            assert isinstance(raised, UnknownClient) and "session ended while the send waited" in str(raised)
        finally:
            release.set()


def test_a_detached_clients_full_queue_raises_at_once_and_a_wait_goes_on_through_a_resume(
    make_client: MakeClient,
) -> None:
    """As a client's send while it reconnects: nothing reads a detached
    client's queue, so a send finding it full does not wait; one already
    waiting when the connection breaks waits on, and goes through once
    the client resumes and takes what was queued."""
    release = threading.Event()
    with Server(interface="127.0.0.1", port=0, max_queued=3) as server:
        detached = Recorder().attach(server, "clientdetach", "clientresume")
        proxy = FaultProxy(server.port)
        try:
            client = make_client(client_id="d", address="127.0.0.1", port=proxy.port)
            got: list[int] = []
            client.subscribe("message", lambda m: (release.wait(WAIT), got.append(m.payload["n"])))
            client.connect()
            sender, outcome = stream(server, "d", 5, timeout=WAIT)
            wait_until(lambda: server.stats()["senders_waiting"] == 1, what="the fourth send waiting for room")
            proxy.refusing = True
            proxy.cut("rst")
            detached.wait_count("clientdetach", 1)
            with pytest.raises(QueueFullError, match=r"full \(3 messages.*, and it is detached\)"):
                server.send("d", Message("n", {"n": -1}), timeout=WAIT)
            assert outcome == []  # the stream's send waits on
            proxy.refusing = False
            release.set()
            detached.wait_count("clientresume", 1)
            sender.join(WAIT)
            assert outcome == [None]
            wait_until(lambda: len(got) == 5, what="all five, once each")
            assert got == list(range(5))
        finally:
            release.set()
            proxy.close()


def test_a_broadcast_with_a_timeout_cuts_only_the_client_that_takes_nothing(make_client: MakeClient) -> None:
    """Without a timeout the burst cut both clients at their 10th queued
    message; with one, the fast client gets all of it and only the stuck
    one, after the timeout, loses its session."""
    release = threading.Event()
    with Server(interface="127.0.0.1", port=0, max_queued=10) as server:
        gone = Recorder().attach(server, "clientdisconnect")
        fast = make_client(server, client_id="fast")
        got: list[int] = []
        fast.subscribe("message", lambda m: got.append(m.payload["n"]))
        stuck = make_client(server, client_id="stuck")
        stuck.subscribe("message", lambda m: release.wait(WAIT))
        fast.connect()
        stuck.connect()
        try:
            sender, outcome = stream(server, "*", 200, timeout=0.5)
            sender.join(WAIT)
            assert outcome == [None]
            assert gone.wait_count("clientdisconnect", 1) == [("stuck",)]
            wait_until(lambda: len(got) == 200, what="the whole burst at the fast client")
            assert got == list(range(200)) and server.clients == ["fast"]
            assert server.stats()["slow_clients_cut"] == 1
        finally:
            release.set()


def test_a_servers_request_waits_for_room_within_its_timeout(make_client: MakeClient) -> None:
    """As a client's request waits for room: a server's request to a client
    whose queue is full raised ``QueueFullError`` at once."""
    release = threading.Event()
    with Server(interface="127.0.0.1", port=0, max_queued=3) as server:
        client = make_client(server, client_id="c")
        client.subscribe("message", lambda m: release.wait(WAIT))
        client.subscribe("request", lambda m: {"sum": m.payload["a"] + 1})
        client.connect()
        try:
            for n in range(3):
                server.send("c", Message("n", {"n": n}))
            with pytest.raises(QueueFullError, match=r"after 0\.2 s"):
                server.request("c", Message("add", {"a": 1}), timeout=0.2)
            outcome: list[object] = []
            asker = threading.Thread(
                target=lambda: outcome.append(server.request("c", Message("add", {"a": 41}), timeout=WAIT)),
                daemon=True,
            )
            asker.start()
            wait_until(lambda: server.stats()["senders_waiting"] == 1, what="the request waiting for room")
            assert outcome == []
        finally:
            release.set()
        asker.join(WAIT)
        (reply,) = outcome
        assert isinstance(reply, Message) and reply.payload == {"sum": 42}


def test_a_clients_send_may_wait_less_than_send_timeout(make_client: MakeClient) -> None:
    release = threading.Event()
    with Server(interface="127.0.0.1", port=0) as server:
        server.subscribe("message", lambda cid, m: release.wait(WAIT))  # acknowledges nothing
        client = make_client(server, max_queued=2, send_timeout=WAIT)
        client.connect()
        try:
            for n in range(2):
                client.send(Message("n", {"n": n}))
            with pytest.raises(QueueFullError, match=r"^send queue full \(2 messages unacknowledged\)$"):
                client.send(Message("n"), timeout=0)
            with pytest.raises(QueueFullError, match=r"acknowledged nothing for 0\.2 s"):
                client.send(Message("n"), timeout=0.2)
            client.send_timeout = 0.1  # the setting still bounds a longer timeout
            with pytest.raises(QueueFullError, match=r"acknowledged nothing for 0\.1 s"):
                client.send(Message("n"), timeout=WAIT)
            with pytest.raises(ValueError, match="timeout"):
                client.send(Message("n"), timeout=-1)
            assert client.queued == 2
        finally:
            release.set()


def test_a_send_timeout_is_refused_where_it_would_block_the_io_thread(make_client: MakeClient) -> None:
    with Server(interface="127.0.0.1", port=0, inline_callbacks=True) as server:
        refused: list[BaseException] = []
        answered = threading.Event()

        def on_message(client_id: str, message: Message) -> None:
            try:
                server.send(client_id, message, timeout=1.0)
            except StateError as exc:
                refused.append(exc)
            server.send(client_id, message)  # without one, as always
            answered.set()

        server.subscribe("message", on_message)
        client = make_client(server)
        echoed = Recorder().attach(client, "message")
        client.connect()
        client.send(Message("m"))
        assert answered.wait(WAIT) and echoed.wait_count("message", 1)
        assert "would block it" in str(refused[0])
        for bad, kind in ((-1, ValueError), (float("nan"), ValueError), ("5", TypeError), (False, TypeError)):
            with pytest.raises(kind, match="timeout"):
                server.send("*", Message("m"), timeout=bad)  # type: ignore[arg-type]
