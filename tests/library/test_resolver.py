"""The resolving threads: few at once, never waited for, each answer to its asker."""

from __future__ import annotations

import threading

import pytest

from missioncommander import _resolver


def resolving_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "missioncommander-resolve")


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
        assert resolving_threads() <= _resolver.LIMIT
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
