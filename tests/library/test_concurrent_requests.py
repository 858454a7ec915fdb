"""``concurrent_requests``: slow responders answering side by side, through
real sockets.  By default a threaded instance's callbacks run one at a time,
so a responder that waits (a database, another service) made every other
request wait behind it: ten half-second requests took five seconds.  Above
1, each request's callbacks begin in their turn and run on a thread of
their own, up to the setting; exactly once still holds through a cut."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from support import FaultProxy, Recorder, wait_until

from missioncommander import Client, ClientState, Message, RemoteError, Server, _callbacks

MakeClient = Callable[..., Client]
WAIT = 10.0


def callback_threads() -> int:
    names = [t.name for t in threading.enumerate()]
    return sum(1 for name in names if name.startswith("missioncommander-callbacks-") and "watch" not in name)


@pytest.fixture(autouse=True)
def pool_back_to_its_base(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The pool threads started for these responders end 0.2 s after their
    work (not 30 s), and each test leaves once they have: a later test that
    counts the pool's threads back down to its base
    (tests/library/test_requests.py) must not find them still waiting."""
    monkeypatch.setattr(_callbacks, "_IDLE_END", 0.2)
    before = max(callback_threads(), _callbacks._POOL_SIZE)  # an earlier test's may still wait out 30 s
    yield
    wait_until(lambda: callback_threads() <= before, timeout=WAIT, what="the pool back to what it was")


class Gate:
    """Responders that block until let go, counting how many run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started = threading.Semaphore(0)
        self.go = threading.Event()

    def respond(self, *args: Any) -> dict[str, Any]:
        message: Message = args[-1]
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.started.release()
        try:
            if not self.go.wait(WAIT):
                raise TimeoutError("never let go")
            return {"n": message.payload["n"]}
        finally:
            with self.lock:
                self.running -= 1


def gated(server: Server, make_client: MakeClient, slots: int) -> tuple[Gate, Client]:
    """A server answering with a Gate, ``slots`` at a time, and a client of it."""
    gate = Gate()
    server.concurrent_requests = slots
    server.subscribe("request", gate.respond)
    client = make_client(server)
    client.connect()
    return gate, client


@pytest.mark.parametrize("direction", ["client asks", "server asks"])
def test_responders_answer_side_by_side_up_to_the_setting(
    server: Server, make_client: MakeClient, direction: str
) -> None:
    """Four requests meet at a barrier that only four responders running at
    once can pass (one at a time, the first waits there for the others,
    which are queued behind it, and fails)."""
    barrier = threading.Barrier(4, timeout=WAIT)

    def respond(*args: Any) -> dict[str, Any]:
        barrier.wait()
        return {"n": args[-1].payload["n"]}

    client = make_client(server, client_id="c")
    responder: Client | Server = server if direction == "client asks" else client
    responder.concurrent_requests = 4
    responder.subscribe("request", respond)
    client.connect()

    def ask(n: int) -> Message:
        if direction == "client asks":
            return client.request(Message("q", {"n": n}), timeout=WAIT)
        return server.request("c", Message("q", {"n": n}), timeout=WAIT)

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(ask, range(4)))
    assert [r.payload["n"] for r in replies] == [0, 1, 2, 3]


def test_by_default_responders_run_in_turn(server: Server, make_client: MakeClient) -> None:
    """The default keeps the promise that an instance's callbacks run one at
    a time: the barrier's first responder waits alone and gives up."""
    barrier = threading.Barrier(2, timeout=1.0)
    server.subscribe("request", lambda cid, m: (barrier.wait(), {"ok": True})[-1])
    client = make_client(server)
    client.connect()
    with ThreadPoolExecutor(2) as pool:
        asks = [pool.submit(client.request, Message("q"), WAIT) for _ in range(2)]
        errors = [f.exception(WAIT) for f in asks]
    assert any(isinstance(e, RemoteError) and e.type_name == "BrokenBarrierError" for e in errors)


def test_no_more_than_the_setting_run_at_once_and_the_rest_follow(server: Server, make_client: MakeClient) -> None:
    gate, client = gated(server, make_client, slots=2)
    seen = Recorder().attach(server, "message")
    with ThreadPoolExecutor(5) as pool:
        asks = [pool.submit(client.request, Message("q", {"n": n}), WAIT) for n in range(5)]
        for _ in range(2):
            assert gate.started.acquire(timeout=WAIT)
        # The others are queued behind a free slot: a message sent now
        # waits with them (the instance's callbacks stay in arrival order).
        client.send(Message("after"))
        wait_until(lambda: server.stats(client.client_id)["messages_received"] == 6, timeout=WAIT)
        assert gate.running == 2 and seen.events == []
        gate.go.set()
        assert sorted(f.result(WAIT).payload["n"] for f in asks) == [0, 1, 2, 3, 4]
    assert seen.wait_count("message", 1) == [(client.client_id, Message("after"))]
    assert gate.most == 2


def test_raising_the_setting_while_requests_wait_lets_them_in(server: Server, make_client: MakeClient) -> None:
    gate, client = gated(server, make_client, slots=2)
    with ThreadPoolExecutor(3) as pool:
        asks = [pool.submit(client.request, Message("q", {"n": n}), WAIT) for n in range(3)]
        for _ in range(2):
            assert gate.started.acquire(timeout=WAIT)
        server.concurrent_requests = 3  # the third, waiting for a slot, starts
        assert gate.started.acquire(timeout=WAIT)
        gate.go.set()
        assert sorted(f.result(WAIT).payload["n"] for f in asks) == [0, 1, 2]


def test_messages_after_a_slow_request_run_and_all_survive_a_cut_exactly_once(
    server: Server, make_client: MakeClient
) -> None:
    """The messages behind a request still being answered reach their
    callbacks at once; their acknowledgement waits for the reply (it names
    a prefix of the stream).  Cut there, the resumed session delivers
    neither the request nor a message again, and the reply arrives once."""
    proxy = FaultProxy(server.port)
    try:
        gate = Gate()
        server.concurrent_requests = 2
        server.subscribe("request", gate.respond)
        seen = Recorder().attach(server, "message")
        client = make_client(client_id="cut", address="127.0.0.1", port=proxy.port)
        reconnected = Recorder().attach(client, "reconnect")
        client.connect()
        with ThreadPoolExecutor(1) as pool:
            asking: Future[Message] = pool.submit(client.request, Message("q", {"n": 7}), 30)
            assert gate.started.acquire(timeout=WAIT)
            for n in range(3):
                client.send(Message("m", {"n": n}))
            seen.wait_count("message", 3)  # ran while the responder still waits
            # Not taken (so not acknowledged) past the request: the first
            # two would be, were they released as their callbacks returned.
            assert server.stats("cut")["inbound_waiting"] == 4
            proxy.cut("rst")
            reconnected.wait_count("reconnect", 1)
            gate.go.set()
            assert asking.result(WAIT) == Message("q", {"n": 7})
        wait_until(lambda: client.queued == 0 and server.stats("cut")["inbound_waiting"] == 0, timeout=WAIT)
        client.send(Message("last"))
        got = seen.wait_count("message", 4)
        assert [m.payload.get("n") for _, m in got] == [0, 1, 2, None]
        assert gate.most == 1
    finally:
        proxy.close()


def test_a_slow_request_holds_back_only_its_own_clients_acknowledgements(
    server: Server, make_client: MakeClient
) -> None:
    """Acknowledgements wait in arrival order per session: another client's
    messages are acknowledged while one client's request is still being
    answered (held behind it, a client sending with a small queue got
    ``QueueFullError`` once ``send_timeout`` passed)."""
    gate, asker = gated(server, make_client, slots=2)
    seen = Recorder().attach(server, "message")
    other = make_client(server, client_id="other", max_queued=3, send_timeout=WAIT)
    other.connect()
    with ThreadPoolExecutor(1) as pool:
        asking: Future[Message] = pool.submit(asker.request, Message("q", {"n": 1}), 30)
        assert gate.started.acquire(timeout=WAIT)
        for n in range(6):  # twice its queue: each send waits for room the acks make
            other.send(Message("m", {"n": n}))
        seen.wait_count("message", 6)
        # Bounded well below the gate's own timeout, which would let it go anyway.
        wait_until(lambda: other.queued == 0, timeout=WAIT / 2, what="the other client's messages acknowledged")
        assert server.stats(asker.client_id)["inbound_waiting"] == 1  # the request, still being answered
        gate.go.set()
        assert asking.result(WAIT) == Message("q", {"n": 1})


def test_stop_waits_for_responders_running_beside_the_others(server: Server, make_client: MakeClient) -> None:
    """``disconnect()`` and ``stop()`` return once the callbacks of earlier
    events have run: those of requests answered beside the others too."""
    gate = Gate()
    client = make_client(server, concurrent_requests=3)
    client.subscribe("request", gate.respond)
    client.connect()

    def let_go_once_disconnected() -> None:
        client.wait_state(ClientState.STATE_NOT_CONNECTED, timeout=WAIT)
        gate.go.set()

    with ThreadPoolExecutor(2) as pool:
        pool.submit(server.request, client.client_id, Message("q", {"n": 1}), WAIT)
        assert gate.started.acquire(timeout=WAIT)
        letting_go = pool.submit(let_go_once_disconnected)
        client.disconnect()  # returns only after the responder, let go meanwhile
        assert gate.running == 0 and gate.go.is_set()
        letting_go.result(WAIT)


def test_a_responder_beside_the_others_may_ask_back_and_wait(server: Server, make_client: MakeClient) -> None:
    """A responder on a thread of its own asks the client for details: the
    reply wakes it at once, not in the queue its slot holds up."""
    server.concurrent_requests = 2

    def respond(client_id: str, message: Message) -> dict[str, Any]:
        detail = server.request(client_id, Message("detail"), timeout=WAIT)
        return {"n": message.payload["n"], "detail": detail.payload["id"]}

    server.subscribe("request", respond)
    clients = [make_client(server, client_id=f"c{i}") for i in range(3)]
    for client in clients:
        client.subscribe("request", lambda m, client=client: {"id": client.client_id})
        client.connect()
    with ThreadPoolExecutor(6) as pool:
        asks = [pool.submit(c.request, Message("q", {"n": n}), WAIT) for n in range(2) for c in clients]
        replies = sorted((r.payload["detail"], r.payload["n"]) for r in (f.result(WAIT) for f in asks))
    assert replies == sorted((f"c{i}", n) for i in range(3) for n in range(2))


def test_the_pool_has_a_thread_for_each_responder_from_the_first(
    server: Server, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The callback pool grows when its threads are stuck, a step per look
    (50 ms): ten slow requests took 0.72 s the first time.  A responder run
    beside the others gets a thread as it starts.  Here the pool's looks are
    4 s apart, so only that can let more responders than the pool has
    threads meet at a barrier that gives up after 3 s."""
    monkeypatch.setattr(_callbacks, "STUCK_AFTER", 4.0)
    client = make_client(server)
    client.connect()
    # More than the threads the pool has now (at least its base four).
    count = max(callback_threads(), _callbacks._POOL_SIZE) + 4
    barrier = threading.Barrier(count, timeout=3.0)
    server.concurrent_requests = count
    server.subscribe("request", lambda cid, m: (barrier.wait(), {"n": m.payload["n"]})[-1])
    with ThreadPoolExecutor(count) as pool:
        replies = list(pool.map(lambda n: client.request(Message("q", {"n": n}), timeout=WAIT), range(count)))
    assert sorted(r.payload["n"] for r in replies) == list(range(count))
