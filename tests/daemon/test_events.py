"""The event ring and its cursors, without sockets or threads."""

from __future__ import annotations

import threading

import pytest

from mc_daemon.events import EventRing, Subscription


def ring_of(size: int) -> EventRing:
    return EventRing(size, threading.Condition(threading.RLock()))


def publish(ring: EventRing, count: int, kind: str = "client", event: str = "message") -> None:
    with ring.cond:
        for _ in range(count):
            ring.append({"seq": ring.last_seq + 1, "kind": kind, "name": "default", "event": event})


def seqs(sub: Subscription, count: int) -> list[int]:
    out = []
    for _ in range(count):
        event = sub.get(timeout=0)
        assert event is not None
        out.append(event["seq"])
    return out


def test_the_ring_keeps_the_last_events_and_says_what_is_gone() -> None:
    ring = ring_of(4)
    publish(ring, 10)
    assert (ring.first_seq, ring.last_seq) == (7, 10)
    assert ring.kept(6) and not ring.kept(5)
    with ring.cond:
        assert [r["seq"] for r in ring.read(6)] == [7, 8, 9, 10]


def test_a_reader_follows_at_its_own_pace_and_times_out_when_idle() -> None:
    ring = ring_of(100)
    sub = Subscription(ring, ring.last_seq, None, None)
    assert sub.get(timeout=0) is None
    publish(ring, 3)
    assert seqs(sub, 3) == [1, 2, 3]
    assert sub.get(timeout=0) is None


def test_filters_skip_events_without_losing_the_place() -> None:
    ring = ring_of(100)
    sub = Subscription(ring, 0, frozenset({("server", "default")}), frozenset({"message"}))
    publish(ring, 5, kind="client")
    publish(ring, 2, kind="server")
    publish(ring, 2, kind="server", event="settings")
    assert seqs(sub, 2) == [6, 7]
    assert sub.get(timeout=0) is None and sub.cursor == 9


def test_a_reader_that_falls_behind_its_limit_overflows() -> None:
    ring = ring_of(1000)
    sub = Subscription(ring, 0, None, None, limit=10)
    publish(ring, 5)
    assert seqs(sub, 5) == [1, 2, 3, 4, 5]
    publish(ring, 11)
    assert sub.overflowed
    with pytest.raises(OverflowError):
        sub.get(timeout=0)
    # Counted for mcd's statistics: one subscriber cut off, 11 events it never read.
    assert (ring.subscribers_cut_off, ring.events_dropped) == (1, 11)


def test_a_catch_up_from_far_behind_is_not_an_overflow_until_it_caught_up() -> None:
    ring = ring_of(1000)
    publish(ring, 500)
    sub = Subscription(ring, 100, None, None, limit=10)  # 400 behind: a catch-up with since
    assert not sub.overflowed
    assert seqs(sub, 400) == list(range(101, 501))
    publish(ring, 11)  # now caught up, falling 11 behind is falling out
    assert sub.overflowed


def test_events_that_left_the_ring_are_an_overflow_whatever_the_limit() -> None:
    ring = ring_of(10)
    sub = Subscription(ring, 0, None, None)
    publish(ring, 11)
    assert sub.overflowed


def test_close_ends_the_stream() -> None:
    ring = ring_of(10)
    sub = Subscription(ring, 0, None, None)
    sub.close()
    with pytest.raises(EOFError):
        sub.get(timeout=1)
