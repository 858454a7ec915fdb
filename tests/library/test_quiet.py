"""Lines a peer can cause over and over are said now and then, with a count."""

from __future__ import annotations

from missioncommander._quiet import Quiet, more


def test_a_line_is_said_at_most_every_period_and_counts_what_went_unsaid() -> None:
    now = [100.0]
    quiet = Quiet(5.0, clock=lambda: now[0])
    assert quiet.due() == 0  # the first is said
    assert [quiet.due() for _ in range(3)] == [None, None, None]
    now[0] += 4.9
    assert quiet.due() is None
    now[0] += 0.1
    assert quiet.due() == 4  # said again, with the four kept back
    now[0] += 60
    assert quiet.due() == 0
    assert more(0) == "" and more(4) == " (4 more since the last said)"
