"""Lines a peer can cause over and over are said now and then, with a count."""

from __future__ import annotations

import errno
import logging

import pytest

from missioncommander._loop import AcceptTrouble
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


def test_accept_trouble_says_when_it_starts_while_it_lasts_and_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    trouble = AcceptTrouble(logging.getLogger("test.accept"), "connections on port 1", clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="test.accept")
    emfile = OSError(errno.EMFILE, "Too many open files")
    for _ in range(30):  # a try a second for half a minute
        trouble.failed(emfile)
        now[0] += 1.0
    now[0] = 61.0
    trouble.failed(emfile)
    trouble.accepted()
    trouble.accepted()  # nothing to say: it works
    trouble.failed(emfile)  # a new spell of trouble is said at once
    assert [r.getMessage() for r in caplog.records] == [
        "cannot accept connections on port 1: [Errno 24] Too many open files; trying again every 1 s"
        " (those already connected go on)",
        "still cannot accept connections on port 1 after 61 s: [Errno 24] Too many open files"
        " (29 more since the last said)",
        "accepting connections on port 1 again, after 61.0 s",
        "cannot accept connections on port 1: [Errno 24] Too many open files; trying again every 1 s"
        " (those already connected go on)",
    ]
