"""docs/SECURITY.md's certificate commands make what a strict verifier (the
default from Python 3.13 on) accepts, and a certificate it refuses gets a
client error that says where to look."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from missioncommander import Client, ConnectError, Message, Server

DOCS = Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md"


def make_documented_certificates(folder: Path) -> None:
    (commands,) = re.findall(r"```sh certificates\n(.*?)```", DOCS.read_text(), re.S)
    subprocess.run(["bash", "-euc", commands], cwd=folder, check=True, capture_output=True, timeout=60)


@pytest.fixture
def strict_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every default context checks certificates strictly, as on Python 3.13."""
    made = ssl.create_default_context

    def strict(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = made(*args, **kwargs)
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        return context

    monkeypatch.setattr(ssl, "create_default_context", strict)


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    make_documented_certificates(tmp_path)
    server = Server(
        interface="127.0.0.1", port=0, tls_cert=str(tmp_path / "server.pem"), tls_key=str(tmp_path / "server.key")
    )
    server.subscribe("request", lambda client_id, message: {"echo": dict(message.payload)})
    server.start()
    try:
        yield server, tmp_path
    finally:
        server.stop()


@pytest.mark.usefixtures("strict_by_default")
def test_the_documented_certificates_pass_strict_verification(echo_server: tuple[Server, Path]) -> None:
    server, folder = echo_server
    with Client(address="127.0.0.1", port=server.port, tls=True, tls_ca=str(folder / "ca.pem")) as client:
        client.connect()
        assert client.request(Message("ping", {"n": 1}), timeout=10).payload == {"echo": {"n": 1}}
    # And by name, with a bare strict context (no library in between).
    context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    assert context.verify_flags & ssl.VERIFY_X509_STRICT
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="server.example") as tls,
    ):
        assert tls.version() is not None


@pytest.mark.usefixtures("strict_by_default")
def test_a_ca_without_key_usage_is_refused_with_a_pointer_to_the_docs(tmp_path: Path) -> None:
    # What `openssl req -x509` makes without the documented -addext options.
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bare CA",
         "-keyout", "ca.key", "-out", "ca.pem"],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    commands = re.findall(r"```sh certificates\n(.*?)```", DOCS.read_text(), re.S)[0]
    server_part = commands[commands.index("# The server's key") :]
    subprocess.run(["bash", "-euc", server_part], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    server = Server(
        interface="127.0.0.1", port=0, tls_cert=str(tmp_path / "server.pem"), tls_key=str(tmp_path / "server.key")
    )
    server.start()
    try:
        client = Client(
            address="127.0.0.1", port=server.port, tls=True, tls_ca=str(tmp_path / "ca.pem"), reconnect_attempts=1
        )
        with pytest.raises(ConnectError) as refused:
            client.connect()
        message = str(refused.value)
        assert "CA cert does not include key usage extension" in message
        assert 'Python 3.13 and later check certificates strictly: docs/SECURITY.md, "Certificates"' in message
    finally:
        server.stop()
