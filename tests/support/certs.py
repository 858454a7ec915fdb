"""Throwaway certificates for TLS tests, made with the openssl command."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # signed nothing of ours but the stranger's certificate
    stranger_cert: Path  # a client certificate other_ca signed
    stranger_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


# The extensions Python 3.13's default TLS context (VERIFY_X509_STRICT)
# requires, as a real CA sets them: without keyUsage a CA is refused ("CA
# cert does not include key usage extension"), without an authority key
# identifier a leaf is.
_CA_EXTENSIONS = ("basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign")
_LEAF_EXTENSIONS = (
    "basicConstraints=CA:FALSE",
    "keyUsage=critical,digitalSignature,keyEncipherment",
    "extendedKeyUsage=serverAuth,clientAuth",
    "subjectKeyIdentifier=hash",
    "authorityKeyIdentifier=keyid,issuer",
)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    extensions = [arg for ext in _CA_EXTENSIONS for arg in ("-addext", ext)]
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
             "-days", "2", "-subj", f"/CN={name}", *extensions)  # fmt: skip
    return cert, key


def _signed(folder: Path, name: str, ca: tuple[Path, Path], san: str) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    ext = folder / f"{name}.ext"
    ext.write_text("".join(f"{line}\n" for line in (f"subjectAltName={san}", *_LEAF_EXTENSIONS)))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return cert, key


def make_certs(folder: Path) -> Certs:
    ca = _ca(folder, "test-ca")
    other = _ca(folder, "other-ca")
    server = _signed(folder, "server", ca, "IP:127.0.0.1,DNS:localhost")
    client = _signed(folder, "client", ca, "DNS:client.test")
    stranger = _signed(folder, "stranger", other, "DNS:stranger.test")
    return Certs(ca[0], server[0], server[1], client[0], client[1], other[0], stranger[0], stranger[1])
