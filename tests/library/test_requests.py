"""Request/reply, both ways, through real sockets: each rule of the
request's life (answered, refused, raised, timed out, lost, bounded) and
the cut in the middle that a session makes harmless."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from support import FaultProxy, Recorder, server_frames, wait_until

from missioncommander import (
    Client,
    ClientState,
    Message,
    NoResponder,
    QueueFullError,
    RemoteError,
    RequestTimeout,
    Server,
    SessionLost,
    StateError,
    _callbacks,
)
from missioncommander._events import Welcome
from missioncommander._frames import FrameType, encode_json_frame
from missioncommander._requests import ReplyWaiter, Requests

MakeClient = Callable[..., Client]
WAIT = 10.0


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """Threads for requests that must wait while the test goes on."""
    with ThreadPoolExecutor(4) as executor:
        yield executor


def test_a_request_is_answered_both_ways_and_is_not_a_message(server: Server, make_client: MakeClient) -> None:
    server.subscribe("request", lambda cid, m: {"n": m.payload["n"] + 1, "from": cid})
    client = make_client(server, client_id="c1")
    client.subscribe("request", lambda m: Message("pong", {"got": m.subject}))
    messages = Recorder().attach(client, "message").attach(server, "message")
    client.connect()
    assert client.request(Message("inc", {"n": 41}), timeout=WAIT) == Message("inc", {"n": 42, "from": "c1"})
    assert server.request("c1", Message("ping"), timeout=WAIT) == Message("pong", {"got": "ping"})
    client.send(Message("plain"))
    got = messages.wait_count("message", 1)
    # Requests and replies went to the responders and the requesters only.
    assert got == [("c1", Message("plain"))]


def test_a_callback_may_ask_and_wait_for_the_reply_both_ways(server: Server, make_client: MakeClient) -> None:
    """Asking from a callback (on a message: ask for the details) timed out
    every time: the reply waited its turn behind the callbacks, the asking
    one first.  A callback's request is woken at once."""
    server.subscribe("request", lambda cid, m: {"detail": m.payload["of"]})
    client = make_client(server, client_id="c1")
    client.subscribe("request", lambda m: {"answer": m.subject})
    asked: list[object] = []

    def ask(ask_it: Callable[[], Message]) -> None:
        try:
            asked.append(ask_it().payload)
        except Exception as exc:  # the test reads it
            asked.append(exc)

    client.subscribe("message", lambda m: ask(lambda: client.request(Message("q", {"of": m.subject}), timeout=5)))
    server.subscribe("message", lambda cid, m: ask(lambda: server.request(cid, Message(m.subject), timeout=5)))
    later = Recorder().attach(client, "message")
    client.connect()
    server.send("c1", Message("task"))
    wait_until(lambda: len(asked) == 1)
    client.send(Message("status"))
    wait_until(lambda: len(asked) == 2)
    assert asked == [{"detail": "task"}, {"answer": "status"}]
    # The replies were acknowledged in their turn: what comes next comes once.
    server.send("c1", Message("next"))
    assert later.wait_count("message", 2)[1] == (Message("next"),)
    wait_until(lambda: len(asked) == 3)
    assert asked[2] == {"detail": "next"}
    wait_until(lambda: server.queued("c1") == 0 and client.queued == 0)  # every frame acknowledged, in the end


def test_a_responder_may_return_a_message_a_dict_or_nothing(server: Server, make_client: MakeClient) -> None:
    answers: dict[str, Any] = {"msg": Message("other", {"a": 1}), "dict": {"b": 2}, "none": None}
    server.subscribe("request", lambda cid, m: answers[m.subject])
    client = make_client(server)
    client.connect()
    assert client.request(Message("msg")) == Message("other", {"a": 1})
    assert client.request(Message("dict")) == Message("dict", {"b": 2})
    assert client.request(Message("none")) == Message("none", {})


def test_nobody_to_answer_is_told_at_once(server: Server, make_client: MakeClient) -> None:
    client = make_client(server, client_id="quiet")
    client.connect()
    with pytest.raises(NoResponder) as info:
        client.request(Message("anyone?"), timeout=60)  # not a 60 s wait: the answer is immediate
    assert str(info.value) == "the peer has no request responder"  # said once, not after its own name
    with pytest.raises(NoResponder):
        server.request("quiet", Message("anyone?"), timeout=60)


def test_a_responders_exception_comes_back_by_type_and_message_without_traceback(
    server: Server, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(client_id: str, message: Message) -> None:
        raise KeyError("no such widget")

    server.subscribe("request", broken)
    client = make_client(server)
    client.connect()
    with pytest.raises(RemoteError) as info:
        client.request(Message("widget"))
    assert (info.value.type_name, info.value.message) == ("KeyError", "'no such widget'")
    assert info.value.remote_traceback is None
    assert not isinstance(info.value, NoResponder)
    server.reply_tracebacks = True
    with pytest.raises(RemoteError) as info:
        client.request(Message("widget"))
    assert info.value.remote_traceback is not None and "in broken" in info.value.remote_traceback
    # The server logged what its responder raised.
    assert any("KeyError" in r.getMessage() for r in caplog.records)


def test_a_responders_message_is_shown_escaped_and_kept_as_written(server: Server, make_client: MakeClient) -> None:
    """What a traceback or a log line shows of a remote error (its str) has
    the peer's control characters escaped, as every other text a peer
    wrote (a close reason, an ERROR's message): a responder's message could
    clear or retitle the terminal the asker's traceback lands in.  The
    attributes keep what the responder wrote, for code that reads them."""
    raw = "\x1b[2J\x1b]0;owned\x07wiped\nfake line \u202eexe.txt"

    def broken(client_id: str, message: Message) -> None:
        raise ValueError(raw)

    server.subscribe("request", broken)
    client = make_client(server)
    client.connect()
    with pytest.raises(RemoteError) as info:
        client.request(Message("widget"))
    assert info.value.message == raw and info.value.type_name == "ValueError"
    shown = str(info.value)
    assert shown == "ValueError: \\x1b[2J\\x1b]0;owned\\x07wiped\\nfake line \\u202eexe.txt", shown
    assert not any(c in shown for c in "\x1b\x07\n\u202e")


def test_a_coroutine_responder_on_the_threaded_api_is_a_clear_remote_error(
    server: Server, make_client: MakeClient, recwarn: pytest.WarningsRecorder
) -> None:
    async def respond(client_id: str, message: Message) -> dict[str, Any]:
        return {}

    server.subscribe("request", respond)
    client = make_client(server)
    client.connect()
    with pytest.raises(RemoteError) as info:
        client.request(Message("q"))
    assert info.value.type_name == "TypeError"
    assert "missioncommander.aio" in info.value.message
    # The coroutine was closed, not left for the collector to warn about.
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_a_timeout_drops_the_late_reply_and_the_next_request_gets_its_own(
    server: Server, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    answered = threading.Event()

    def slow_then_fast(client_id: str, message: Message) -> dict[str, Any]:
        if message.subject == "slow":
            release.wait(WAIT)
            answered.set()
        return {"answer_to": message.subject}

    server.subscribe("request", slow_then_fast)
    client = make_client(server)
    client.connect()
    with pytest.raises(RequestTimeout):
        client.request(Message("slow"), timeout=0.2)
    caplog.set_level(logging.INFO, logger="missioncommander")
    release.set()
    assert answered.wait(WAIT)
    # Callbacks run in order: this request is answered after the slow one.
    assert client.request(Message("fast"), timeout=WAIT) == Message("fast", {"answer_to": "fast"})
    assert any("came after its caller gave up" in r.getMessage() for r in caplog.records)


def test_the_session_ending_fails_a_waiting_request_at_once(make_client: MakeClient, pool: ThreadPoolExecutor) -> None:
    entered = threading.Event()
    release = threading.Event()
    server = Server(interface="127.0.0.1", port=0)

    def long(client_id: str, message: Message) -> None:
        entered.set()
        release.wait(WAIT)

    server.subscribe("request", long)
    server.start()
    try:
        client = make_client(server, client_id="c")
        client.connect()
        waiting: Future[Message] = pool.submit(client.request, Message("long"), 60)
        assert entered.wait(WAIT)
        stopping = pool.submit(server.stop, 2.0)
        with pytest.raises(SessionLost, match="server"):
            waiting.result(WAIT)  # well before its 60 s
        release.set()
        stopping.result(WAIT)
    finally:
        release.set()
        server.stop()


def test_a_client_that_leaves_fails_the_servers_request_to_it_at_once(
    server: Server, make_client: MakeClient, pool: ThreadPoolExecutor
) -> None:
    entered = threading.Event()
    client = make_client(server, client_id="leaver")
    client.subscribe("request", lambda m: entered.set() or client.disconnect())
    client.connect()
    asking: Future[Message] = pool.submit(server.request, "leaver", Message("still there?"), 60)
    assert entered.wait(WAIT)
    with pytest.raises(SessionLost):
        asking.result(WAIT)


def test_requests_in_flight_are_bounded(server: Server, make_client: MakeClient, pool: ThreadPoolExecutor) -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)

    def held(client_id: str, message: Message) -> None:
        entered.release()
        release.wait(WAIT)

    server.subscribe("request", held)
    client = make_client(server, max_requests=2, inline_callbacks=False)
    client.connect()
    first = pool.submit(client.request, Message("a"), WAIT)
    second = pool.submit(client.request, Message("b"), WAIT)
    assert entered.acquire(timeout=WAIT)  # the first is with the responder, the second queued behind it
    wait_until(lambda: client._requests.in_flight("") == 2, what="both requests registered")
    with pytest.raises(QueueFullError, match="max_requests=2"):
        client.request(Message("c"))
    release.set()
    assert first.result(WAIT) == Message("a") and second.result(WAIT) == Message("b")
    assert client.request(Message("d")) == Message("d")  # room again


def test_a_bad_timeout_is_refused_before_the_request_is_sent_and_infinity_waits(
    server: Server, make_client: MakeClient
) -> None:
    """A timeout a lock cannot take (``"10"``, NaN, -1, infinity) raised only
    once the request was out: the peer ran it, and the request's slot in
    ``max_requests`` was never freed. Now a clear error before anything is
    sent; infinity waits as long as it takes, as None does."""
    asked: list[str] = []
    server.subscribe("request", lambda client_id, message: asked.append(client_id) or message.payload)
    client = make_client(server, client_id="c", max_requests=1)
    client.subscribe("request", lambda message: message.payload)
    client.connect()
    wait_until(lambda: "c" in server.clients, what="the server to list the client")
    for bad, error in (("10", TypeError), (True, TypeError), (float("nan"), ValueError), (-1, ValueError)):
        with pytest.raises(error, match="timeout must be"):
            client.request(Message("q"), timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(error, match="timeout must be"):
            server.request("c", Message("q"), timeout=bad)  # type: ignore[arg-type]
    assert client.request(Message("q", {"n": 1}), timeout=float("inf")).payload == {"n": 1}
    assert server.request("c", Message("q", {"n": 2}), timeout=1e308).payload == {"n": 2}
    assert asked == ["c"]  # only the good request reached the server's responder
    assert client._requests.in_flight("") == 0 and server._requests.in_flight("c") == 0
    with pytest.raises(ValueError, match="timeout must be"):
        client.wait_state(ClientState.STATE_CONNECTED, timeout=-1)
    assert client.wait_callbacks(timeout=float("inf"))


def test_request_from_an_inline_callback_is_refused(server: Server, make_client: MakeClient) -> None:
    seen: list[BaseException] = []
    done = threading.Event()

    def on_message(message: Message) -> None:
        try:
            client.request(Message("nested"))
        except StateError as exc:
            seen.append(exc)
        done.set()

    client = make_client(server, client_id="inl", inline_callbacks=True)
    client.subscribe("message", on_message)
    client.connect()
    server.send("inl", Message("go"))
    assert done.wait(WAIT)
    assert seen and "would block" in str(seen[0])


@pytest.mark.parametrize("direction", ["client asks", "server asks"])
def test_a_cut_between_request_and_reply_delivers_both_exactly_once(
    server: Server, make_client: MakeClient, pool: ThreadPoolExecutor, direction: str
) -> None:
    """Request sent, connection cut before the reply, reply delivered once after resume."""
    proxy = FaultProxy(server.port)
    try:
        calls: list[str] = []
        entered = threading.Event()
        release = threading.Event()

        def respond(*args: Any) -> dict[str, int]:
            calls.append(args[-1].subject)
            entered.set()
            release.wait(WAIT)
            return {"calls": len(calls)}

        client = make_client(client_id="cut", address="127.0.0.1", port=proxy.port)
        if direction == "client asks":
            server.subscribe("request", respond)
        else:
            client.subscribe("request", respond)
        reconnected = Recorder().attach(client, "reconnect")
        client.connect()
        if direction == "client asks":
            asking: Future[Message] = pool.submit(client.request, Message("q"), 30)
        else:
            asking = pool.submit(server.request, "cut", Message("q"), 30)
        assert entered.wait(WAIT)
        proxy.cut("rst")  # the request is with the responder; its reply is not written yet
        release.set()  # the reply goes into the session while the link is down
        reconnected.wait_count("reconnect", 1)
        assert asking.result(WAIT) == Message("q", {"calls": 1})
        assert calls == ["q"]  # run once: the resumed session did not deliver the request again
    finally:
        proxy.close()


def test_a_request_lost_with_a_server_restart_is_not_sent_to_the_new_server(
    make_client: MakeClient, pool: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    """Its asker is told SessionLost; the new server never runs it (a retry
    by the asker would otherwise run it twice)."""
    entered = threading.Event()
    release = threading.Event()
    old = Server(interface="127.0.0.1", port=0)
    old.subscribe("request", lambda cid, m: (entered.set(), release.wait(WAIT), {"from": "old"})[-1])
    old.start()
    port = old.port
    proxy = FaultProxy(port)
    try:
        client = make_client(client_id="r", address="127.0.0.1", port=proxy.port)
        rec = Recorder().attach(client, "sessionlost", "reconnect")
        client.connect()
        client.send(Message("plain", {"n": 1}))
        wait_until(lambda: client.queued == 0, what="the plain message acknowledged")  # so never sent again
        asking: Future[Message] = pool.submit(client.request, Message("lost"), 60)
        assert entered.wait(WAIT)
        proxy.refusing = True
        proxy.cut("rst")  # the old server dies with the request unanswered and unacknowledged
        release.set()
        old.stop()
        with Server(interface="127.0.0.1", port=port) as new:
            asked: list[str] = []
            new.subscribe("request", lambda cid, m: (asked.append(m.subject), {"from": "new"})[-1])
            got = Recorder().attach(new, "message")
            proxy.refusing = False
            with pytest.raises(SessionLost, match="new session"):
                asking.result(WAIT)
            rec.wait_count("reconnect", 1)
            assert len(rec.of("sessionlost")) == 1
            # The count is of messages: a request, or a reply to the server's.
            assert "resending 0 unacknowledged message(s), leaving out the old session's 1 request" in caplog.text
            assert client.request(Message("fresh"), timeout=WAIT) == Message("fresh", {"from": "new"})
            client.send(Message("after"))
            got.wait_count("message", 1)
            assert asked == ["fresh"]
            assert got.of("message") == [("r", Message("after"))]
    finally:
        release.set()
        proxy.close()
        old.stop()


def test_a_request_sent_while_reconnecting_goes_out_on_resume(
    server: Server, make_client: MakeClient, pool: ThreadPoolExecutor
) -> None:
    proxy = FaultProxy(server.port)
    try:
        server.subscribe("request", lambda cid, m: {"ok": True})
        client = make_client(client_id="q", address="127.0.0.1", port=proxy.port)
        client.connect()
        proxy.refusing = True
        proxy.cut("rst")
        wait_until(lambda: bool(client.state & client.state.STATE_RECONNECTING), what="reconnecting")
        asking: Future[Message] = pool.submit(client.request, Message("later"), 30)
        proxy.refusing = False
        assert asking.result(WAIT) == Message("later", {"ok": True})
    finally:
        proxy.close()


def test_a_timeout_while_the_peer_is_cut_off_says_so_both_ways(server: Server, make_client: MakeClient) -> None:
    """A request waits through a cut, so "no reply within 0.1 s" alone hides
    the likeliest cause: the timeout says the connection is down."""
    release = threading.Event()
    proxy = FaultProxy(server.port)
    try:
        server.subscribe("request", lambda cid, m: release.wait(WAIT) and {"ok": True})
        client = make_client(client_id="q", address="127.0.0.1", port=proxy.port)
        client.subscribe("request", lambda m: {"ok": True})
        client.connect()
        # Connected, with a slow responder: the timeout alone.
        with pytest.raises(RequestTimeout, match=r"^no reply within 0.1 s$"):
            client.request(Message("slow"), timeout=0.1)
        release.set()
        proxy.refusing = True
        proxy.cut("rst")
        wait_until(lambda: server.detached_clients == ["q"], what="the server to see the cut")
        with pytest.raises(
            RequestTimeout, match=r"^no reply within 0.1 s \(client 'q' is detached: its connection broke"
        ):
            server.request("q", Message("ping"), timeout=0.1)
        wait_until(lambda: bool(client.state & client.state.STATE_RECONNECTING), what="reconnecting")
        with pytest.raises(RequestTimeout, match=r"^no reply within 0.1 s \(the connection to the server is down"):
            client.request(Message("ping"), timeout=0.1)
    finally:
        release.set()
        proxy.close()


def test_a_version_1_peer_has_no_request_reply_and_is_told_so(server: Server) -> None:
    """An older client (protocol 1) still connects; asking it is a clear error."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            encode_json_frame(
                FrameType.HELLO,
                {
                    "version": 1,
                    "client_id": "old",
                    "session": None,
                    "last_seq": 0,
                    "max_frame_size": 65536,
                    "heartbeat_timeout": 15,
                },
            )
        )
        frames = server_frames(sock)
        next(frames)  # CHALLENGE
        welcome = next(frames)
        assert isinstance(welcome, Welcome) and welcome.version == 1
        with pytest.raises(StateError, match="protocol version 1, which has no request/reply"):
            server.request("old", Message("hi"))
        server.send("old", Message("plain messages still work"))
        assert next(frames).subject == "plain messages still work"  # type: ignore[attr-defined]


def test_a_request_written_by_another_encoder_is_answered_the_same(
    server: Server, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer may space its JSON as it likes: the reply is built from what
    was decoded, not from the bytes (the responder returns the payload)."""
    import missioncommander._requests as requests_module

    def spaced(body: bytes, key: str, value: int) -> bytes:
        return body[:-1] + b' , { "%s" : %d } ]' % (key.encode(), value)

    server.subscribe("request", lambda cid, msg: msg.payload)
    client = make_client(server, client_id="spaced")
    client.connect()
    monkeypatch.setattr(requests_module, "with_id", spaced)  # the client's requests and the server's replies
    reply = client.request(Message("ask", {"n": 1, "text": "é"}), timeout=10)
    assert reply == Message("ask", {"n": 1, "text": "é"})


def test_callbacks_blocked_in_requests_do_not_starve_the_server_that_answers(
    server: Server, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Callbacks of every instance in a process share a pool of threads.
    With more clients asking from their callbacks than the pool had threads,
    every thread waited for a reply that the server in the same process
    could not give, its responder queued behind them: each request timed
    out.  The pool grows while its threads are stuck, and shrinks after."""
    monkeypatch.setattr(_callbacks, "_IDLE_END", 0.2)
    server.subscribe("request", lambda cid, m: {"n": m.payload["n"]})
    count = 3 * _callbacks._POOL_SIZE
    answers: list[object] = []
    lock = threading.Lock()
    clients = []
    for i in range(count):
        client = make_client(server, client_id=f"asker{i}")

        def ask(message: Message, client: Client = client) -> None:
            try:
                answer: object = client.request(Message("q", {"n": message.payload["n"]}), timeout=WAIT).payload
            except Exception as exc:  # the test reads it
                answer = exc
            with lock:
                answers.append(answer)

        client.subscribe("message", ask)
        client.connect()
        clients.append(client)
    for n in range(3):
        server.send("*", Message("tick", {"n": n}))
    wait_until(lambda: len(answers) == 3 * count, timeout=WAIT)
    assert sorted(a["n"] for a in answers) == sorted(n for n in range(3) for _ in range(count))  # type: ignore[index]
    wait_until(lambda: _callback_threads() <= _callbacks._POOL_SIZE, timeout=WAIT)


def test_a_blocked_callback_holds_up_only_its_own_instance(
    server: Server, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More instances than the pool has threads, each with a callback that
    blocks: one more instance's callbacks still run."""
    monkeypatch.setattr(_callbacks, "_IDLE_END", 0.2)
    release = threading.Event()
    blocked = threading.Semaphore(0)

    def stuck(message: Message) -> None:
        blocked.release()
        release.wait(WAIT)

    try:
        for i in range(2 * _callbacks._POOL_SIZE):
            client = make_client(server, client_id=f"stuck{i}")
            client.subscribe("message", stuck)
            client.connect()
        free = make_client(server, client_id="free")
        got = Recorder().attach(free, "message")
        free.connect()
        server.send("*", Message("go"))
        assert got.wait_count("message", 1) == [(Message("go"),)]
        for _ in range(2 * _callbacks._POOL_SIZE):  # and every stuck one got its thread
            assert blocked.acquire(timeout=WAIT)
    finally:
        release.set()
    wait_until(lambda: _callback_threads() <= _callbacks._POOL_SIZE, timeout=WAIT)


def test_pool_threads_never_reuse_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Extra threads come and go: a new one took the number of the count, so
    two threads could show the same name in a dump while both lived."""
    monkeypatch.setattr(_callbacks, "_IDLE_END", 0.05)
    pool = _callbacks._Pool(0, 8)  # every thread an extra, which ends when idle
    names: list[str] = []
    work = pool._work

    def named_work(extra: bool) -> None:
        names.append(threading.current_thread().name)
        work(extra)

    pool._work = named_work  # type: ignore[method-assign]
    for batch in (3, 2):
        with pool._lock:
            for _ in range(batch):
                pool._start_locked()
        wait_until(lambda: pool._threads == 0, timeout=WAIT, what="the idle threads to end")
    assert len(names) == 5 and len(set(names)) == 5, names


def _callback_threads() -> int:
    return sum(
        1 for t in threading.enumerate() if t.name.startswith("missioncommander-callbacks-") and "watch" not in t.name
    )


def test_the_registry_passes_on_only_replies_to_ids_it_never_gave_out(caplog: pytest.LogCaptureFixture) -> None:
    """A cluster node numbers from a random point and passes on a reply it
    did not ask for (another node did); one to its own id that timed out
    is dropped here, and one from a client the request did not go to is
    dropped whoever asked."""
    caplog.set_level(logging.INFO, logger="missioncommander")
    passed_on: list[tuple[str, int, Message]] = []
    registry = Requests()
    registry.elsewhere = lambda peer, request_id, reply, error: passed_on.append((peer, request_id, reply))
    registry.number_from(1_000)
    waiter = ReplyWaiter()
    first, _ = registry.open("c1", 10, Message("q"), waiter)
    timed_out_id, _ = registry.open("c1", 10, Message("q"), ReplyWaiter())
    registry.forget(timed_out_id)
    assert (first, timed_out_id) == (1_001, 1_002)
    assert registry.waiting_for("c1", first) and not registry.waiting_for("c2", first)
    assert not registry.waiting_for("c1", timed_out_id)
    registry.resolve("c2", first, Message("forged"), None)  # not c1: dropped, still pending
    assert not waiter.done() and "client 'c2' answered request 1001" in caplog.text
    registry.resolve("c1", timed_out_id, Message("late"), None)  # ours, timed out
    registry.resolve("c1", 7, Message("theirs"), None)  # another node's id
    registry.resolve("c1", 8, Message("passed on to us"), None, forward=False)  # not ours, not again
    assert passed_on == [("c1", 7, Message("theirs"))]
    registry.resolve("c1", first, Message("answer"), None)
    assert waiter.outcome() == Message("answer") and registry.in_flight("c1") == 0


def test_the_registry_loses_only_the_requests_of_the_session_that_ended() -> None:
    """A cluster's client may end one session and begin another (on another
    node) while requests wait: the news of the first names its token, and
    only the requests stored in it fail."""
    registry = Requests()
    old, new, other = ReplyWaiter(), ReplyWaiter(), ReplyWaiter()
    old_id, _ = registry.open("c1", 10, Message("q"), old)
    new_id, _ = registry.open("c1", 10, Message("q"), new)
    other_id, _ = registry.open("c2", 10, Message("q"), other)
    assert registry.stored_in(old_id, "T1") and registry.stored_in(new_id, "T2") and registry.stored_in(other_id, "T1")
    registry.lose("c1", "expired", session="T1")
    assert old.done() and not new.done() and not other.done()
    with pytest.raises(SessionLost, match="the session ended before the reply came: expired"):
        old.outcome()
    assert registry.in_flight("c1") == 1
    registry.forget(new_id)
    assert not registry.stored_in(new_id, "T2")  # no longer waits: nothing to tag
