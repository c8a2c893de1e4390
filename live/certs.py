"""A local certificate authority and per-component certificates for mTLS between the live twin's services.

``make_certs(out, names)`` writes, in ``out``:

    ca.pem, ca.key                      the CA (kept and reused when present, so adding a component does not
                                        invalidate the others' certificates)
    NAME.pem, NAME.key                  NAME's server certificate (serverAuth; SANs NAME, localhost,
                                        127.0.0.1, ::1 and any extra hosts)
    NAME-client.pem, NAME-client.key    NAME's client certificate (clientAuth; CN and SAN NAME), what it
                                        presents when it calls another component; servers check the SAN
                                        against the components they accept (``--tls-client-name``)

Keys are ECDSA P-256; private keys are written 0600, certificates 0644, each file atomically (a temporary file
in the same folder, renamed). This is for local and test use: in production point the ``--tls-*`` options at
certificates from the real PKI instead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleettwin.io import atomic_write
from fleettwin.models.errors import ConfigError

DEFAULT_NAMES = ("gateway", "emulator", "controller", "retrieval")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ORG = "fleettwin local"


@dataclass(frozen=True, slots=True)
class Issued:
    name: str
    cert: Path
    key: Path
    kind: str  # ca | server | client


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _subject(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write(path, lambda p: (os.chmod(p, 0o600), p.write_bytes(pem)))


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    pem = cert.public_bytes(serialization.Encoding.PEM)
    atomic_write(path, lambda p: (p.write_bytes(pem), os.chmod(p, 0o644)))


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for h in dict.fromkeys(hosts):  # keep order, drop repeats
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def _builder(subject: x509.Name, issuer: x509.Name, public_key, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def load_or_make_ca(out: Path, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
    """The CA in ``out`` (``created`` False) or a new one written there."""
    cert_path, key_path = out / "ca.pem", out / "ca.key"
    if cert_path.exists() != key_path.exists():
        raise ConfigError(f"{out}: found only one of ca.pem and ca.key; remove it or restore the other")
    if cert_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except ValueError as exc:
            raise ConfigError(f"{out}: ca.pem/ca.key cannot be read: {exc}") from None
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise ConfigError(f"{out}: ca.key does not belong to ca.pem")
        if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
            raise ConfigError(
                f"{out}: the CA expired on {cert.not_valid_after_utc:%Y-%m-%d}; remove ca.pem and "
                "ca.key to make a new one (and reissue every component)"
            )
        return cert, key, False
    key = _key()
    name = _subject("fleettwin local CA")
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert, key, True


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Every certificate signs (the TLS handshake: ECDSA keys sign, they never encipher); a CA also signs
    certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(ca: x509.Certificate, ca_key, cn: str, *, server: bool, hosts: list[str], days: int):
    key = _key()
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    b = (
        _builder(_subject(cn), ca.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    sans = _sans(hosts) if server else [x509.DNSName(cn)]  # a client is its component's name, nothing else
    b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(ca_key, hashes.SHA256()), key


def make_certs(
    out: str | Path,
    names: list[str] | tuple[str, ...] = DEFAULT_NAMES,
    *,
    hosts: list[str] = (),
    days: int = 365,
) -> list[Issued]:
    """Write the CA (unless present) and a server and a client certificate for each name."""
    out = Path(out)
    for n in names:
        if not _NAME.match(n):
            raise ConfigError(f"component name {n!r}: use lower-case letters, digits and dashes")
    if len(set(names)) != len(names) or not names:
        raise ConfigError("give one or more distinct component names")
    if days < 1:
        raise ConfigError(f"--days must be at least 1, got {days}")
    out.mkdir(parents=True, exist_ok=True)
    ca, ca_key, _ = load_or_make_ca(out, days)
    issued = [Issued("ca", out / "ca.pem", out / "ca.key", "ca")]
    for n in names:
        for server, stem in ((True, n), (False, f"{n}-client")):
            cert, key = _leaf(
                ca, ca_key, n, server=server, hosts=[n, "localhost", "127.0.0.1", "::1", *hosts], days=days
            )
            _write_key(out / f"{stem}.key", key)
            _write_cert(out / f"{stem}.pem", cert)
            issued.append(
                Issued(n, out / f"{stem}.pem", out / f"{stem}.key", "server" if server else "client")
            )
    return issued
