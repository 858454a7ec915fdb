"""The sending half of a session (one copy for Client and Server), with bytes and a fake clock."""

from __future__ import annotations

import pytest

from missioncommander._errors import RemoteProtocolError
from missioncommander._frames import FrameDecoder, parse_frame
from missioncommander._session import BURST_GAP, SendSession


def written(chunks: list[bytes]) -> list[tuple[int, str]]:
    """The (seq, subject) of each MESSAGE frame in ``chunks``."""
    decoder = FrameDecoder()
    events = [parse_frame(t, b) for t, b in decoder.feed(b"".join(chunks))]
    return [(e.seq, e.subject) for e in events]  # type: ignore[union-attr]


def queue(session: SendSession, *subjects: str) -> None:
    for subject in subjects:
        assert session.out.offer(f'["{subject}",{{}}]'.encode())


def test_each_message_is_written_once_in_order() -> None:
    session = SendSession(100, 1 << 20)
    queue(session, "a", "b")
    assert written(session.take_unsent()) == [(1, "a"), (2, "b")]
    assert session.take_unsent() == []
    queue(session, "c")
    assert session.unwritten == 1
    assert written(session.take_unsent()) == [(3, "c")]
    assert session.unwritten == 0


def test_an_ack_drops_what_it_names_and_never_moves_the_writing_back() -> None:
    session = SendSession(100, 1 << 20)
    queue(session, "a", "b", "c")
    session.take_unsent()
    session.acked(2)
    assert len(session.out) == 1 and session.sent_seq == 3
    session.acked(1)  # an old ack, reordered by nothing but harmless
    assert len(session.out) == 1 and session.sent_seq == 3
    with pytest.raises(RemoteProtocolError, match="only 3 were sent"):
        session.acked(4)


def test_a_resume_writes_again_what_the_peer_did_not_get() -> None:
    session = SendSession(100, 1 << 20)
    queue(session, "a", "b", "c", "d")
    session.take_unsent()  # all four written; the connection breaks
    session.resumed(2)  # the peer's HELLO or WELCOME: it had 1 and 2
    assert written(session.take_unsent()) == [(3, "c"), (4, "d")]


def test_a_restart_numbers_the_unacknowledged_again_from_one() -> None:
    session = SendSession(100, 1 << 20)
    queue(session, "a", "b", "c")
    session.take_unsent()
    session.acked(1)
    session.restarted()  # the server forgot us: a new session
    assert written(session.take_unsent()) == [(1, "b"), (2, "c")]


def test_ending_says_how_many_were_never_written() -> None:
    session = SendSession(100, 1 << 20)
    queue(session, "a", "b", "c")
    session.take_unsent()
    queue(session, "d", "e")
    assert session.end() == 2
    assert len(session.out) == 0 and session.unwritten == 0
    queue(session, "f")
    assert written(session.take_unsent()) == [(1, "f")]


def test_a_send_soon_after_another_is_a_burst() -> None:
    session = SendSession(100, 1 << 20)
    assert not session.burst(10.0)
    assert session.burst(10.0 + BURST_GAP / 2)
    assert not session.burst(10.0 + 3 * BURST_GAP)


def test_the_limits_bound_the_queue_and_can_change() -> None:
    session = SendSession(2, 1 << 20)
    queue(session, "a", "b")
    assert not session.out.offer(b'["c",{}]')
    session.set_limits(3, 1 << 20)
    assert session.out.offer(b'["c",{}]')
