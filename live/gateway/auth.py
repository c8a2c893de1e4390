"""Who is calling: an API key (stored as its sha256) or an HS256 JWT naming a tenant.

Credentials are read from ``Authorization: Bearer <credential>`` (what OpenAI clients send) or ``x-api-key``.
A credential with two dots is treated as a JWT, anything else as an API key. JWT verification is written here
with ``hmac`` (PyJWT is not a dependency) and is deliberately narrow: only ``alg: HS256`` is accepted (never
``none``, never an algorithm the token itself picks), the signature is compared in constant time, and ``exp``,
``nbf``, ``iss`` and ``aud`` are checked as RFC 7519 section 4.1 describes, with a small leeway for clock
skew. A header with ``crit`` names extensions the recipient must understand or reject the token (RFC 7515
section 4.1.11); this verifier understands none, so such a token is refused.

A tenant authenticates only the ways its policy allows (``tenants.<name>.auth``): a JWT naming a tenant that
uses API keys is refused, as is an API key of a JWT-only tenant.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fleettwin.live.gateway.config import GatewayConfig, Jwt, hash_key
from fleettwin.live.protocol import ApiError


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    tenant: str
    method: str  # api_key | jwt
    key_id: str  # an API key's hash prefix or the JWT's subject: enough to audit, useless to an attacker


class Unauthenticated(ApiError):
    def __init__(self, message: str):
        super().__init__(401, message, type="AuthenticationError")


class JwtError(ValueError):
    pass


def b64url_decode(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise JwtError("token is not base64url") from None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_hs256(claims: Mapping[str, Any], secret: bytes) -> str:
    """A compact HS256 JWT (for tests, tools and the benchmark)."""
    header = b64url_encode(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = b64url_encode(json.dumps(dict(claims), separators=(",", ":")).encode())
    sig = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url_encode(sig)}"


def decode_hs256(
    token: str,
    secret: bytes,
    *,
    now: float,
    leeway_s: float = 0.0,
    issuer: str | None = None,
    audience: str | None = None,
    require_exp: bool = True,
) -> dict[str, Any]:
    """The verified claims of ``token``; raises ``JwtError`` saying why not."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("token must have three dot-separated parts")
    try:
        header = json.loads(b64url_decode(parts[0]))
    except ValueError:
        raise JwtError("token header is not JSON") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise JwtError(
            f"token algorithm must be HS256, got {header.get('alg') if isinstance(header, dict) else '?'}"
        )
    if "crit" in header:  # RFC 7515 4.1.11: critical extensions this verifier does not implement
        raise JwtError(
            "token header has a 'crit' parameter naming extensions this gateway does not understand"
        )
    expected = hmac.new(secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, b64url_decode(parts[2])):
        raise JwtError("token signature does not verify")
    try:
        claims = json.loads(b64url_decode(parts[1]))
    except ValueError:
        raise JwtError("token payload is not JSON") from None
    if not isinstance(claims, dict):
        raise JwtError("token payload is not a JSON object")
    _check_times(claims, now, leeway_s, require_exp)
    if issuer is not None and claims.get("iss") != issuer:
        raise JwtError("token issuer is not accepted")
    if audience is not None:
        aud = claims.get("aud")
        if audience not in (aud if isinstance(aud, list) else [aud]):
            raise JwtError("token audience does not include this gateway")
    return claims


def _check_times(claims: dict, now: float, leeway_s: float, require_exp: bool) -> None:
    for name in ("exp", "nbf", "iat"):
        if name in claims and (isinstance(claims[name], bool) or not isinstance(claims[name], int | float)):
            raise JwtError(f"token claim {name} must be a number")
    if "exp" not in claims and require_exp:
        raise JwtError("token has no exp claim")
    if "exp" in claims and now > claims["exp"] + leeway_s:
        raise JwtError("token has expired")
    if "nbf" in claims and now < claims["nbf"] - leeway_s:
        raise JwtError("token is not valid yet")


class Authenticator:
    """Maps request headers to a ``Principal`` or raises ``Unauthenticated`` (401)."""

    def __init__(self, cfg: GatewayConfig, clock: Callable[[], float] = time.time):
        self._by_hash = {k: name for name, t in cfg.tenants.items() for k in t.api_keys}
        self._methods = {name: t.auth_methods for name, t in cfg.tenants.items()}
        self._jwt: Jwt | None = cfg.jwt
        self._secret = cfg.jwt.secret() if cfg.jwt is not None else b""
        self._clock = clock

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        credential = _credential(headers)
        if credential.count(".") == 2:
            return self._from_jwt(credential)
        stored = hash_key(credential)
        # A dict lookup on the hash: timing can at most reveal a prefix of a sha256, not of the key.
        tenant = self._by_hash.get(stored)
        if tenant is None:
            raise Unauthenticated("Incorrect API key provided.")
        if "api_key" not in self._methods[tenant]:
            raise Unauthenticated(f"Tenant '{tenant}' does not authenticate with API keys.")
        return Principal(tenant=tenant, method="api_key", key_id=stored[7:19])

    def _from_jwt(self, token: str) -> Principal:
        j = self._jwt
        if j is None:
            raise Unauthenticated("This gateway does not accept JWTs; use an API key.")
        try:
            claims = decode_hs256(
                token,
                self._secret,
                now=self._clock(),
                leeway_s=j.leeway_s,
                issuer=j.issuer,
                audience=j.audience,
                require_exp=j.require_exp,
            )
        except JwtError as exc:
            raise Unauthenticated(f"Invalid bearer token: {exc}.") from None
        tenant = claims.get(j.tenant_claim)
        if not isinstance(tenant, str) or tenant not in self._methods:
            raise Unauthenticated(
                f"Invalid bearer token: claim {j.tenant_claim!r} does not name a known tenant."
            )
        if "jwt" not in self._methods[tenant]:
            raise Unauthenticated(f"Invalid bearer token: tenant '{tenant}' does not authenticate with JWTs.")
        return Principal(tenant=tenant, method="jwt", key_id=str(claims.get("sub", ""))[:64])


def _credential(headers: Mapping[str, str]) -> str:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("Authorization header must be 'Bearer <API key or token>'.")
        return value.strip()
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    raise Unauthenticated("You didn't provide an API key. Send 'Authorization: Bearer <key>'.")
