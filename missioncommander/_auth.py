"""Authentication: HMAC challenge-response over a shared secret.

The server's CHALLENGE carries a fresh random nonce per connection; the
client answers with its own nonce and an HMAC over both nonces and its id,
so the secret never crosses the wire and a replayed HELLO (an old server
nonce) fails.  The server answers with an HMAC of its own (another label),
so a client with a token also knows it reached a server holding it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_nonce() -> str:
    return secrets.token_hex(16)


def auth_proof(secret: str, side: str, server_nonce: str, client_nonce: str, client_id: str) -> str:
    """``side`` is ``client`` or ``server``: the two proofs differ."""
    message = "\0".join((f"missioncommander-{side}-v1", server_nonce, client_nonce, client_id)).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def proof_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
