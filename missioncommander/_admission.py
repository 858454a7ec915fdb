"""Who a server lets in, sans-IO: the rules for a client's HELLO.

``admit`` looks at the HELLO, the server's settings and what the server
knows of the client id (its session's token, whether a connection holds it
now, whether one is already being probed) and says what to do; the server
carries it out (writes the WELCOME or the ERROR, aborts the old connection,
arms the probe's timer).  No clock, no socket: tests call it with values.

The rules, in order:

1. a protocol version we do not speak (we speak ``MIN_PROTOCOL_VERSION``
   to ``PROTOCOL_VERSION``; the connection runs the client's), a server shutting down, a wrong or
   missing token: refuse, with the code the client acts on;
2. the HELLO names the id's current session: it goes on (``RESUME``); a
   connection still attached to it is half-open, and the new one takes over;
3. the id has a session that the HELLO does not name: a detached one ends
   (``REPLACE``, the client forgot it); an attached one may belong to a live
   client, so the server asks that connection first (``PROBE``: a PING,
   answered within ``probe_timeout``), and a second newcomer meanwhile is
   told to retry (``BUSY``);
4. otherwise a new session (``NEW``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._auth import auth_proof, proof_matches
from ._events import ErrorCode, Hello
from ._frames import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION

#: The longest a liveness probe waits for its PONG: a newcomer waits that
#: long at most to learn whether the id is free.
PROBE_TIMEOUT_CAP = 3.0


class Admit(enum.Enum):
    REFUSE = "refuse"
    NEW = "new"
    RESUME = "resume"
    REPLACE = "replace"
    PROBE = "probe"
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Admit
    #: For ``REFUSE`` and ``BUSY``: what the ERROR frame says.
    code: ErrorCode | None = None
    message: str = ""
    retry: bool = False
    #: The server's own proof for the WELCOME when the client proved its token.
    server_proof: str | None = None


@dataclass(frozen=True, slots=True)
class Known:
    """What the server knows of the HELLO's client id."""

    #: The token of the id's session, or None when it has none.
    token: str | None = None
    #: A connection is attached to that session now.
    attached: bool = False
    #: That connection is being probed for another newcomer.
    probing: bool = False


def admit(
    hello: Hello,
    known: Known,
    *,
    running: bool,
    auth_required: bool,
    secret: str | None,
    nonce: str,
) -> Decision:
    """What to do with ``hello`` (see the module's docstring for the rules).

    ``secret`` is the token the server holds for this client id (None: none);
    ``nonce`` is the one the server's CHALLENGE sent on this connection.
    """
    if not MIN_PROTOCOL_VERSION <= hello.version <= PROTOCOL_VERSION:
        return _refuse(
            ErrorCode.VERSION_UNSUPPORTED,
            f"protocol version {hello.version} is not supported"
            f" (server speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})",
        )
    if not running:
        return _refuse(ErrorCode.SERVER_FULL, "server is shutting down", retry=True)
    server_proof = None
    if auth_required:
        if secret is None:
            return _refuse(ErrorCode.AUTH_FAILED, f"client id {hello.client_id!r} has no token on this server")
        if hello.proof is None or hello.cnonce is None:
            return _refuse(ErrorCode.AUTH_FAILED, "this server requires a token (set auth_token)")
        if not proof_matches(auth_proof(secret, "client", nonce, hello.cnonce, hello.client_id), hello.proof):
            return _refuse(ErrorCode.AUTH_FAILED, "wrong token")
        server_proof = auth_proof(secret, "server", nonce, hello.cnonce, hello.client_id)
    if known.token is None:
        action = Admit.NEW
    elif hello.session == known.token:
        action = Admit.RESUME
    elif not known.attached:
        action = Admit.REPLACE
    elif known.probing:
        return Decision(
            Admit.BUSY, ErrorCode.ID_IN_USE, f"client id {hello.client_id!r} is being checked; retry", retry=True
        )
    else:
        # Always ask: a connection that spoke a moment ago may be dead and
        # half-open, and a recent read proves nothing about now.
        action = Admit.PROBE
    return Decision(action, server_proof=server_proof)


def in_use_message(client_id: str) -> str:
    """The refusal a newcomer gets when the probe found the id's holder alive."""
    return f"client id {client_id!r} is in use by a live client; choose another id"


def probe_timeout(heartbeat_timeout: float) -> float:
    """How long the holder of an id has to answer the probe's PING."""
    return min(heartbeat_timeout, PROBE_TIMEOUT_CAP)


class ConnectionRate:
    """How many connections from one address a server takes in: a token
    bucket per address, refilled at ``rate`` per second and holding up to
    ``window`` seconds' worth.  A connection takes a token when it is
    accepted and gives it back once its handshake succeeds, so the bucket
    only runs dry with connections that stay silent or fail (a flood), never
    with a fleet of real clients arriving at once.

    The server's window is its ``handshake_timeout`` (at least
    ``MIN_WINDOW``): a silent connection is closed after that long, so a
    flood at ``rate`` holds ``rate * handshake_timeout`` connections open in
    its steady state whatever the bucket's size, and a bucket as large lets
    a fleet that size wait for its handshakes together (a client process
    starting 10,000 clients says HELLO on most of them only seconds after
    its connects were accepted: with 2 s' worth, 10,051 of 15,000 such
    connections were refused and came back with backoff, doubling the time
    the fleet took to get in)."""

    #: The least window, whatever the handshake timeout.
    MIN_WINDOW = 2.0
    #: Addresses tracked before quiet ones (a minute) are forgotten.
    MAX_ADDRESSES = 10_000

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    @classmethod
    def burst(cls, rate: float, window: float) -> float:
        return max(1.0, max(cls.MIN_WINDOW, window) * rate)

    def take(self, host: str, rate: float, now: float, window: float) -> bool:
        """A connection from ``host`` arrived: True if it may come in."""
        burst = self.burst(rate, window)
        tokens, last = self._buckets.get(host, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if len(self._buckets) > self.MAX_ADDRESSES:
            self._buckets = {h: v for h, v in self._buckets.items() if now - v[1] < 60}
        if tokens < 1:
            self._buckets[host] = (tokens, now)
            return False
        self._buckets[host] = (tokens - 1, now)
        return True

    def give_back(self, host: str, rate: float, window: float) -> None:
        """A connection from ``host`` completed its handshake."""
        bucket = self._buckets.get(host)
        if bucket is not None:
            self._buckets[host] = (min(self.burst(rate, window), bucket[0] + 1), bucket[1])


def _refuse(code: ErrorCode, message: str, retry: bool = False) -> Decision:
    return Decision(Admit.REFUSE, code, message, retry)
