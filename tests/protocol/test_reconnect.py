"""The client's retry rules, values in and step out."""

from __future__ import annotations

import pytest

from missioncommander._reconnect import Step, after_failure


def step(
    retries: int = 0,
    *,
    reconnecting: bool = False,
    persistent: bool = False,
    terminal: bool = False,
    rate_limited: bool = False,
    limit: int | None = None,
    before_deadline: bool = True,
) -> tuple[Step, int]:
    return after_failure(
        retries,
        reconnecting=reconnecting,
        persistent=persistent,
        terminal=terminal,
        rate_limited=rate_limited,
        limit=limit,
        before_deadline=before_deadline,
    )


def test_a_waiting_connect_fails_on_its_first_failure() -> None:
    assert step() == (Step.FAIL, 0)


def test_a_waiting_connect_told_busy_retries_until_its_deadline() -> None:
    assert step(2, rate_limited=True) == (Step.RETRY, 3)
    assert step(2, rate_limited=True, before_deadline=False) == (Step.FAIL, 2)


def test_a_background_connect_retries_until_the_attempts_run_out_or_a_final_refusal() -> None:
    assert step(0, persistent=True, limit=3) == (Step.RETRY, 1)
    assert step(1, persistent=True, limit=3) == (Step.RETRY, 2)
    assert step(2, persistent=True, limit=3) == (Step.FAIL, 3)
    assert step(5, persistent=True, terminal=True) == (Step.FAIL, 5)
    assert step(1000, persistent=True, limit=None) == (Step.RETRY, 1001)


@pytest.mark.parametrize("rate_limited", [False, True])
def test_a_reconnect_retries_until_the_attempts_run_out_or_a_final_refusal(rate_limited: bool) -> None:
    assert step(0, reconnecting=True, rate_limited=rate_limited, limit=2) == (Step.RETRY, 1)
    assert step(1, reconnecting=True, rate_limited=rate_limited, limit=2) == (Step.GIVE_UP, 2)
    assert step(0, reconnecting=True, terminal=True) == (Step.GIVE_UP, 1)
    # A reconnect has no deadline: only attempts count.
    assert step(7, reconnecting=True, before_deadline=False) == (Step.RETRY, 8)
