"""``inline_callbacks``: message callbacks on the I/O thread, still in order
and one at a time, and library calls that would wait refuse to block it."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from support import DEFAULT_WAIT, Recorder, wait_until

from missioncommander import Client, ClientState, Message, QueueFullError, Server, StateError

MakeClient = Callable[..., Client]
IO_THREAD = "missioncommander-io"


def test_echo_runs_on_the_io_thread_only_when_asked(server: Server, make_client: MakeClient) -> None:
    server.inline_callbacks = True
    server_threads: list[str] = []

    def echo(client_id: str, message: Message) -> None:
        server_threads.append(threading.current_thread().name)
        server.send(client_id, message)  # from the I/O thread: written at the end of its turn

    server.subscribe("message", echo)
    inline = make_client(server, inline_callbacks=True)
    queued = make_client(server)
    seen: dict[str, list[tuple[str, int]]] = {"inline": [], "queued": []}
    done = threading.Condition()

    def recorder(key: str) -> Callable[[Message], None]:
        def on_message(message: Message) -> None:
            with done:
                seen[key].append((threading.current_thread().name, message.payload["n"]))
                done.notify_all()

        return on_message

    inline.subscribe("message", recorder("inline"))
    queued.subscribe("message", recorder("queued"))
    inline.connect()
    queued.connect()
    for n in range(50):
        inline.send(Message("echo", {"n": n}))
        queued.send(Message("echo", {"n": n}))
    with done:
        assert done.wait_for(lambda: len(seen["inline"]) == 50 and len(seen["queued"]) == 50, DEFAULT_WAIT)
    assert [n for _, n in seen["inline"]] == list(range(50)) == [n for _, n in seen["queued"]]
    assert {name for name, _ in seen["inline"]} == {IO_THREAD}
    assert IO_THREAD not in {name for name, _ in seen["queued"]}
    assert set(server_threads) == {IO_THREAD}


def test_inline_messages_wait_behind_a_pending_callback_and_never_overlap(
    server: Server, make_client: MakeClient
) -> None:
    client = make_client(server, client_id="c", inline_callbacks=True)
    release = threading.Event()
    blocked = threading.Event()
    running = 0
    overlap = False
    order: list[str] = []
    lock = threading.Lock()

    def track(name: str, block: bool = False) -> None:
        nonlocal running, overlap
        with lock:
            running += 1
            overlap = overlap or running > 1
            order.append(name)
        if block:
            blocked.set()
            release.wait(DEFAULT_WAIT)
        with lock:
            running -= 1

    # The connect callback holds the queue: messages that arrive meanwhile
    # must queue behind it instead of running at once on the I/O thread.
    client.subscribe("connect", lambda: track("connect", block=True))

    def on_message(message: Message) -> None:
        track(f"m{message.payload['n']}")

    client.subscribe("message", on_message)
    rec = Recorder().attach(server, "clientconnect")
    client.connect()
    rec.wait_count("clientconnect", 1)
    assert blocked.wait(DEFAULT_WAIT)
    for n in range(20):
        server.send("c", Message("m", {"n": n}))
    assert client.wait_callbacks(0.2) is False  # still held by the connect callback
    release.set()
    wait_until(lambda: len(order) == 21, what="every callback")
    assert order == ["connect"] + [f"m{n}" for n in range(20)]
    assert not overlap
    # Once the queue is idle again, messages run inline.
    where: list[str] = []
    client.unsubscribe("message", on_message)
    client.subscribe("message", lambda m: where.append(threading.current_thread().name))
    server.send("c", Message("m", {"n": 99}))
    wait_until(lambda: len(where) == 1, what="the message after the queue drained")
    assert where == [IO_THREAD]


def test_calls_that_would_block_the_io_thread_refuse_or_do_not_wait(server: Server, make_client: MakeClient) -> None:
    client = make_client(server, client_id="c", inline_callbacks=True, max_queued=1)
    other = make_client(server, client_id="other")
    outcomes: dict[str, object] = {}
    finished = threading.Event()

    def on_message(message: Message) -> None:
        try:
            other.connect()  # wait=True would block the loop this callback runs on
        except StateError as exc:
            outcomes["connect"] = str(exc)
        client.send(Message("one", {}))  # fills max_queued=1 (the ack comes later)
        try:
            client.send(Message("two", {}))
        except QueueFullError as exc:
            outcomes["send"] = str(exc)
        outcomes["wait_callbacks"] = client.wait_callbacks(5.0)
        client.disconnect()  # queued now, written when this callback returns
        outcomes["state"] = client.state
        finished.set()

    client.subscribe("message", on_message)
    srv = Recorder().attach(server, "clientconnect", "clientdisconnect", "message")
    client.connect()
    srv.wait_count("clientconnect", 1)
    server.send("c", Message("go", {}))
    assert finished.wait(DEFAULT_WAIT)
    assert "would block" in str(outcomes["connect"])
    assert "send queue full" in str(outcomes["send"])
    assert outcomes["wait_callbacks"] is False
    assert outcomes["state"] == ClientState.STATE_OK | ClientState.STATE_NOT_CONNECTED
    assert srv.wait_count("clientdisconnect", 1) == [("c",)]
    # "one" was written before the goodbye.
    assert [m.subject for _, m in srv.of("message")] == ["one"]


def test_server_stop_from_an_inline_callback(make_client: MakeClient) -> None:
    server = Server(interface="127.0.0.1", port=0, inline_callbacks=True)
    server.start()
    stopped = threading.Event()

    def on_message(_client_id: str, _message: Message) -> None:
        server.stop()
        stopped.set()

    server.subscribe("message", on_message)
    client = make_client(server, client_id="c")
    rec = Recorder().attach(client, "servershutdown")
    client.connect()
    client.send(Message("stop", {}))
    assert stopped.wait(DEFAULT_WAIT)
    rec.wait_count("servershutdown", 1)
    assert not server.running


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_inline_callbacks_is_a_bool(value: object) -> None:
    with pytest.raises(TypeError):
        Client(inline_callbacks=value)
    with pytest.raises(TypeError):
        Server(inline_callbacks=value)
