"""When a client tries again, sans-IO: the retry rules and the backoff.

A failed attempt (refused, timed out, cut before the WELCOME) leads to one
of three steps, decided by ``after_failure`` from values the client passes
in (the time among them, as a yes/no on its deadline):

- a ``connect()`` that waits fails at once on its first failure, except when
  the server said "busy, retry" (rate limited, or an id being checked or
  moving between cluster nodes): then it keeps trying until
  its ``connect_timeout``; and with several servers it tries each once
  before it fails;
- a ``connect(wait=False)`` and a reconnect keep trying, with backoff, until
  ``reconnect_attempts`` run out or the server refuses for good (a wrong
  token, an unsupported version: ``terminal``).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable


class Step(enum.Enum):
    RETRY = "retry"
    #: The first connect failed: CONNECT_FAILED, and connect() raises.
    FAIL = "fail"
    #: A reconnect gave up: RECONNECT_FAILED.
    GIVE_UP = "give up"


def after_failure(
    retries: int,
    *,
    reconnecting: bool,
    persistent: bool,
    terminal: bool,
    rate_limited: bool,
    limit: int | None,
    before_deadline: bool,
    untried: bool = False,
) -> tuple[Step, int]:
    """The step after a failed attempt, and the retry count that goes with
    it (``retries`` counts the failed attempts before this one).

    ``reconnecting``: the session was connected before (else this is the
    first connect); ``persistent``: ``connect(wait=False)``;
    ``before_deadline``: the first connect's ``connect_timeout`` has not
    passed; ``limit``: ``reconnect_attempts``; ``untried``: of several
    servers, some were not tried since the last success."""
    if not reconnecting:
        if (rate_limited or (untried and not terminal)) and not persistent and before_deadline:
            return Step.RETRY, retries + 1
        if not persistent or terminal:
            return Step.FAIL, retries
    retries += 1
    if terminal or (limit is not None and retries >= limit):
        return (Step.GIVE_UP if reconnecting else Step.FAIL), retries
    return Step.RETRY, retries


def reconnect_delay(
    retries: int,
    base: float,
    cap: float,
    uniform: Callable[[float, float], float] | None = None,
    servers: int = 1,
    retry_after: float | None = None,
) -> float:
    """How long to wait before attempt ``retries + 1`` of a (re)connect:
    exponential backoff from ``base``, capped at ``cap``, with full jitter
    (anywhere from 0 to the ceiling), so the clients of a server that went
    away do not all come back at the same moment.

    With ``servers`` to try in turn (a cluster's nodes) the ceiling doubles
    once per round of them, not per attempt: a dead node in the list would
    otherwise triple the wait for a live one (after a node crashed, its
    clients reached the 30 s ceiling while its lease ran out, 6 s).

    ``retry_after``: the server said its reason to refuse is over by then
    (a dead cluster node's lease on the client's id): the wait ends soon
    after it, whatever the backoff has grown to, spread over a fifth of it
    (at most a second) so that a dead node's clients do not all come back
    in the same instant."""
    draw = uniform or random.uniform
    delay = draw(0.0, min(cap, base * 2 ** min(retries // max(1, servers), 32)))
    if retry_after is not None:
        delay = min(delay, retry_after + draw(0.0, min(1.0, retry_after / 5)))
    return delay


def retry_hint(free_at: float | None, now: float) -> tuple[float | None, float | None]:
    """What a server's ``retry_after`` (kept as the time ``free_at`` it
    names) means for the next wait: ``(retry_after, free_at)`` to pass to
    ``reconnect_delay`` and to keep.  It holds for every later attempt until
    that time, whichever server they go to (a cluster's lease is the same on
    every node), since an attempt on a dead node in between says nothing;
    once past, the next attempt goes at once, and the hint is spent."""
    if free_at is None:
        return None, None
    left = free_at - now
    return (left, free_at) if left > 0 else (0.0, None)
