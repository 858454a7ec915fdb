"""TLS contexts for Client and Server, from the standard library's ``ssl``."""

from __future__ import annotations

import ssl

from ._errors import TLSConfigError


def server_context(cert: str, key: str | None, ca: str | None) -> ssl.SSLContext:
    """The server's certificate and key; with ``ca``, clients must present a
    certificate signed by it (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        if ca:
            context.load_verify_locations(ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(
            f"cannot load the server's TLS files ({cert}, {key or 'key in the cert file'}): {exc}"
        ) from exc
    return context


def client_context(ca: str | None, verify: bool, cert: str | None, key: str | None) -> ssl.SSLContext:
    """Verify the server against ``ca`` (or the system's store) with hostname
    checking, unless ``verify`` is off; ``cert`` for mutual TLS."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        if cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(f for f in (ca, cert, key) if f) or "the system's CA store"
        raise TLSConfigError(f"cannot load the client's TLS files ({files}): {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
