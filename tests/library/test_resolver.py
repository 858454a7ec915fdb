"""The resolving threads: few at once, never waited for, each answer to its asker."""

from __future__ import annotations

import threading

import pytest
from support import refuse_resolving_threads, resolving_threads, wait_for_resolvers_to_end

from missioncommander import _resolver


def test_many_names_at_once_queue_for_a_few_threads_and_each_gets_its_own_answer() -> None:
    release = threading.Event()
    started = threading.Semaphore(0)

    def slow(n: int) -> int:
        started.release()
        release.wait(30)
        return n

    count = _resolver.LIMIT + 8
    try:
        futures = [_resolver.soon(lambda n=n: slow(n), RuntimeError) for n in range(count)]
        for _ in range(_resolver.LIMIT):
            assert started.acquire(timeout=10)  # LIMIT of them run...
        assert not started.acquire(timeout=0.2)  # ...and the rest wait for a thread
        assert len(resolving_threads()) <= _resolver.LIMIT
        given_up = futures[-1].cancel()  # one that has not begun can be given up
    finally:
        release.set()
    assert given_up
    assert [future.result(10) for future in futures[:-1]] == list(range(count - 1))


def test_an_error_reaches_its_asker() -> None:
    def fails() -> None:
        raise OSError("no")

    with pytest.raises(OSError, match="no"):
        _resolver.soon(fails, RuntimeError).result(10)


def test_with_no_thread_running_and_none_to_start_the_name_fails_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wait_for_resolvers_to_end()
    refuse_resolving_threads(monkeypatch)
    future = _resolver.soon(lambda: "never", lambda exc: ConnectionError(f"no thread ({exc})"))
    with pytest.raises(ConnectionError, match=r"^no thread \(can't start new thread\)$"):
        future.result(10)


def test_a_thread_already_running_takes_the_name_when_no_new_one_can_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wait_for_resolvers_to_end()
    release = threading.Event()
    busy = _resolver.soon(lambda: release.wait(30), RuntimeError)  # one thread, held
    refuse_resolving_threads(monkeypatch)
    try:
        waiting = _resolver.soon(lambda: "answered", RuntimeError)
        assert not waiting.done()  # queued for the running thread, not failed
    finally:
        release.set()
    assert busy.result(10) is True
    assert waiting.result(10) == "answered"
