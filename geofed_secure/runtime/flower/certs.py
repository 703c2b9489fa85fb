"""Self-signed TLS certificates for a Flower deployment: a CA and the SuperLink's server certificate.

``geofed deploy certs --out DIR`` writes, with :func:`make_certificates`:

- ``ca.pem``: the CA certificate every SuperNode and the ``flwr`` CLI trust (``--root-certificates``,
  ``root-certificates`` in the Flower configuration);
- ``server.pem`` / ``server.key``: the SuperLink's certificate and private key (``--ssl-certfile``,
  ``--ssl-keyfile``; ``--ssl-ca-certfile ca.pem``), valid for the names and addresses given
  (default ``127.0.0.1``, ``::1`` and ``localhost``: a loopback deployment).

The CA's private key is never written: it signs the server certificate and is dropped, so nobody can issue
another certificate under this CA. Making a certificate for another host means making a new set.
Keys are ECDSA P-256; ``server.key`` is written readable by its owner only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from geofed_secure.errors import ConfigError

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
CA_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE = "ca.pem", "server.pem", "server.key"


@dataclass(frozen=True)
class Certificates:
    """Where a certificate set lies: the CA certificate, the SuperLink's certificate and key."""

    ca: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_folder(cls, folder: str | Path) -> Certificates:
        """The set in ``folder`` (as :func:`make_certificates` writes it); ConfigError naming a missing file."""
        path = Path(folder)
        found = cls(path / CA_FILE, path / SERVER_CERT_FILE, path / SERVER_KEY_FILE)
        for file in (found.ca, found.server_cert, found.server_key):
            if not file.is_file():
                raise ConfigError("--certs", f"{file} is missing; make a set with: geofed deploy certs --out {path}")
        return found


def _names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or any(c.isspace() for c in host):
                raise ConfigError("--host", f"{host!r} is neither an IP address nor a DNS name") from None
            names.append(x509.DNSName(host))
    return names


def make_certificates(out: str | Path, *, hosts: tuple[str, ...] = LOOPBACK_HOSTS, days: int = 365,
                      overwrite: bool = False) -> Certificates:
    """Write a fresh CA certificate and a server certificate for ``hosts`` (IP addresses or DNS names) to ``out``."""
    if not hosts:
        raise ConfigError("--host", "name at least one host the SuperLink is reached at")
    if days < 1:
        raise ConfigError("--days", f"must be at least 1, got {days}")
    folder = Path(out)
    target = Certificates(folder / CA_FILE, folder / SERVER_CERT_FILE, folder / SERVER_KEY_FILE)
    existing = [p for p in (target.ca, target.server_cert, target.server_key) if p.exists()]
    if existing and not overwrite:
        raise ConfigError("--out", f"{existing[0]} already exists; choose another folder (certificates are not replaced)")
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "geofed-secure deployment CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    target.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    target.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_bytes = server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
    fd = os.open(target.server_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_bytes)
    return target
