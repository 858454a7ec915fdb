"""The server's rules for a HELLO, without a server: values in, decision out."""

from __future__ import annotations

import dataclasses

import pytest

from missioncommander._admission import Admit, ConnectionRate, Decision, Known, admit, probe_timeout
from missioncommander._auth import auth_proof
from missioncommander._events import ErrorCode, Hello
from missioncommander._frames import PROTOCOL_VERSION

NONCE = "n" * 32
HELLO = Hello(PROTOCOL_VERSION, "c1", None, 0, 1 << 20, 10.0)


NOBODY = Known()


def decide(hello: Hello = HELLO, known: Known = NOBODY, *, running: bool = True, secret: str | None = None) -> Decision:
    return admit(hello, known, running=running, auth_required=secret is not None, secret=secret, nonce=NONCE)


def test_an_unknown_id_gets_a_new_session() -> None:
    assert decide().action is Admit.NEW


def test_the_session_named_goes_on_whether_or_not_a_connection_holds_it() -> None:
    hello = dataclasses.replace(HELLO, session="tok")
    assert decide(hello, Known("tok")).action is Admit.RESUME
    # Attached: the old connection is half-open and the new one takes over.
    assert decide(hello, Known("tok", attached=True, probing=True)).action is Admit.RESUME


def test_a_session_not_named_ends_if_detached_and_is_probed_if_attached() -> None:
    hello = dataclasses.replace(HELLO, session="old-token-the-server-forgot")
    assert decide(hello, Known("tok")).action is Admit.REPLACE
    assert decide(HELLO, Known("tok", attached=True)).action is Admit.PROBE
    busy = decide(HELLO, Known("tok", attached=True, probing=True))
    assert (busy.action, busy.code, busy.retry) == (Admit.BUSY, ErrorCode.ID_IN_USE, True)


@pytest.mark.parametrize(
    ("hello", "running", "code", "retry"),
    [
        (dataclasses.replace(HELLO, version=PROTOCOL_VERSION + 1), True, ErrorCode.VERSION_UNSUPPORTED, False),
        (HELLO, False, ErrorCode.SERVER_FULL, True),
    ],
)
def test_refusals_say_why_and_whether_to_retry(hello: Hello, running: bool, code: ErrorCode, retry: bool) -> None:
    decision = decide(hello, Known("tok", attached=True), running=running)
    assert (decision.action, decision.code, decision.retry) == (Admit.REFUSE, code, retry)
    assert decision.message


def test_a_token_is_checked_before_any_session_is_touched() -> None:
    good = auth_proof("s3cret", "client", NONCE, "cn", "c1")
    ok = decide(dataclasses.replace(HELLO, cnonce="cn", proof=good), secret="s3cret")
    assert ok.action is Admit.NEW
    assert ok.server_proof == auth_proof("s3cret", "server", NONCE, "cn", "c1")
    forged = dataclasses.replace(HELLO, session="tok", cnonce="cn", proof="0" * 64)
    wrong = decide(forged, Known("tok"), secret="s3cret")
    assert (wrong.action, wrong.code, wrong.message) == (Admit.REFUSE, ErrorCode.AUTH_FAILED, "wrong token")
    missing = decide(HELLO, secret="s3cret")
    assert (missing.action, missing.code) == (Admit.REFUSE, ErrorCode.AUTH_FAILED)
    unknown = admit(HELLO, Known(), running=True, auth_required=True, secret=None, nonce=NONCE)
    assert "has no token" in unknown.message


def test_a_probe_waits_for_the_heartbeat_timeout_but_never_more_than_3_s() -> None:
    assert probe_timeout(1.0) == 1.0
    assert probe_timeout(30.0) == 3.0


def test_the_connection_rate_counts_only_handshakes_that_do_not_succeed() -> None:
    rates = ConnectionRate()
    # rate 5/s over a 2 s window: an allowance of 10 pending handshakes.
    assert [rates.take("a", 5.0, now=0.0, window=2.0) for _ in range(11)] == [True] * 10 + [False]
    assert rates.take("b", 5.0, now=0.0, window=2.0)  # per address
    rates.give_back("a", 5.0, window=2.0)  # one of them said HELLO and was welcomed
    assert rates.take("a", 5.0, now=0.0, window=2.0)
    assert not rates.take("a", 5.0, now=0.1, window=2.0)
    assert rates.take("a", 5.0, now=0.3, window=2.0)  # refilled at the rate
    # A fleet whose handshakes all succeed never runs it dry.
    for _ in range(1000):
        assert rates.take("fleet", 5.0, now=5.0, window=2.0)
        rates.give_back("fleet", 5.0, window=2.0)
    # Giving back never raises the allowance past its size.
    for _ in range(50):
        rates.give_back("b", 5.0, window=2.0)
    assert [rates.take("b", 5.0, now=0.0, window=2.0) for _ in range(11)] == [True] * 10 + [False]


def test_the_allowance_is_the_windows_worth_and_never_under_two_seconds() -> None:
    # The server's window is its handshake_timeout: a flood at the rate holds
    # that many silent connections open anyway, and a fleet that size may
    # wait for its handshakes together.
    rates = ConnectionRate()
    assert [rates.take("a", 5.0, now=0.0, window=10.0) for _ in range(51)] == [True] * 50 + [False]
    assert [rates.take("b", 5.0, now=0.0, window=0.5) for _ in range(11)] == [True] * 10 + [False]
    assert ConnectionRate.burst(1000.0, 10.0) == 10_000  # the defaults: max_clients' worth
    assert ConnectionRate.burst(0.01, 10.0) == 1  # never below one connection
