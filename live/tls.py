"""TLS settings shared by every link of the live twin: which files a component serves with, trusts and
presents.

Servers (emulator, gateway, retrieval service) take ``--tls-cert``/``--tls-key`` to serve HTTPS and
``--tls-ca`` to require a client certificate signed by that CA (mTLS); ``check_server_files`` validates the
three together before a server binds. Clients (the gateway's upstreams, the shadow controller's scraper, the
load generator) take a ``TlsFiles`` record ``{ca, cert, key}``: ``ca`` to verify the server, ``cert``/``key``
to present. ``client_context`` turns one into what httpx wants, and an unreadable file into a ``ConfigError``
naming it before the first request rather than a handshake failure on every request.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, model_validator

from fleettwin.live.client import tls_verify
from fleettwin.models.errors import ConfigError


class TlsFiles(BaseModel):
    """PEM files: ``ca`` to verify the peer (default: the system's trust store), ``cert``/``key`` to present
    (a client certificate for mTLS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsFiles:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self

    def resolved(self, base: Path) -> TlsFiles:
        """Relative paths taken against ``base`` (the folder of the file that named them)."""

        def at(p: Path | None) -> Path | None:
            return None if p is None else Path(os.path.normpath(base / p))

        return TlsFiles(ca=at(self.ca), cert=at(self.cert), key=at(self.key))

    @property
    def pair(self) -> tuple[str, str] | None:
        return (str(self.cert), str(self.key)) if self.cert is not None else None


def client_context(tls: TlsFiles | None, *, where: str, verify: bool | str = True) -> bool | ssl.SSLContext:
    """What an httpx client is given as ``verify=``: without ``tls``, ``verify`` (a CA path as a context,
    since httpx deprecates paths); with it, a context trusting ``tls.ca`` (or, without one, ``verify``) and
    presenting ``tls.cert``. ``where`` names the setting in errors."""
    try:
        if tls is None:
            return tls_verify(verify)
        return tls_verify(str(tls.ca) if tls.ca else verify, cert=tls.pair)
    except (OSError, ssl.SSLError) as exc:
        given = (tls.ca, tls.cert, tls.key) if tls is not None else (verify,)
        files = ", ".join(str(p) for p in given if p is not None)
        raise ConfigError(f"{where}: cannot load {files}: {exc}") from None


def client_files(
    ca: str | None, cert: str | None, key: str | None, *, where: str = "--tls-*"
) -> TlsFiles | None:
    """Command-line ``--tls-ca/--tls-cert/--tls-key`` as a ``TlsFiles`` (None when none is given)."""
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise ConfigError(f"{where}: --tls-cert and --tls-key go together")
    return TlsFiles(ca=ca, cert=cert, key=key)


def check_server_files(cert: str | None, key: str | None, ca: str | None) -> None:
    """A server's ``--tls-cert/--tls-key/--tls-ca``: the pair together, a CA only with them, every file
    readable."""
    if (cert is None) != (key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if ca is not None and cert is None:
        raise ConfigError("--tls-ca (client certificates) needs --tls-cert and --tls-key")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{flag}: no such file {path}")


def transport_reason(exc: BaseException, url: str, *, presented_cert: bool) -> str:
    """Why a request got no answer, in words that name TLS when TLS is why. A TLS 1.3 server checks the
    client's certificate after the client's handshake has completed, and uvicorn then closes the connection
    without a readable alert, so the client sees only "disconnected without sending a response" (or a reset,
    when the close crosses its request); on an https URL that is what an mTLS server does to a client
    certificate it does not accept, and the reason says so."""
    text = f"{type(exc).__name__}: {exc}"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "[SSL" in str(seen):
            return f"TLS: {text}"
        seen = seen.__cause__ or seen.__context__
    # The server's close shows as an EOF before the response or, when it lands mid-write, a reset (ReadError).
    closed = isinstance(exc, httpx.ReadError) or "without sending a response" in str(exc)
    if url.startswith("https://") and closed:
        which = (
            "the client certificate presented was refused"
            if presented_cert
            else "no client certificate was presented"
        )
        return (
            f"TLS: the server closed the connection without answering; an mTLS server does so when {which} "
            f"({text})"
        )
    return text
