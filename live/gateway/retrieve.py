"""The gateway's ``POST /v1/retrieve``: a tenant's search of one retrieval collection, checked, then
forwarded.

The caller is authenticated as for completions; the body names one ``collection``, which the tenant's
``collections`` rule must allow (403 otherwise, as for documents from that collection in a chat request); an
allowed request takes one slot of the tenant's request quota (requests/s, concurrent). The retrieval service
(``live/retrieval_service.py``) is reached with the gateway's own credentials — its bearer token from
``retrieval.token_env`` and the client certificate of ``retrieval.tls`` (default ``backend_tls``) — never
the caller's, and its answer is passed on as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from fleettwin.live.api_error import ApiError
from fleettwin.live.gateway.auth import Principal
from fleettwin.live.gateway.authz import Forbidden
from fleettwin.live.gateway.config import GatewayConfig
from fleettwin.live.gateway.pipeline import Gatekeeper, Refused, _reason, rate_limited
from fleettwin.live.gateway.quota import Ticket
from fleettwin.live.http_guard import strict_json
from fleettwin.live.retrieval_api import parse_request
from fleettwin.live.tls import client_context, transport_reason

RETRIEVE = "retrieve"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrievalAdmitted:
    principal: Principal
    collection: str
    body: dict[str, Any]
    ticket: Ticket


def check_retrieval(gate: Gatekeeper, headers: Mapping[str, str], raw: bytes) -> RetrievalAdmitted:
    """Authenticate, authorize the collection and take a quota slot; raises ``Refused``."""
    principal = collection = None
    try:
        principal = gate.auth.authenticate(headers)
        body = strict_json(raw, max_depth=gate.cfg.limits.max_json_depth)
        collection = body.get("collection") if isinstance(body, dict) else None
        if not isinstance(collection, str) or not collection:
            raise ApiError(
                400, "collection is required (a string naming a retrieval collection)", param="collection"
            )
        parse_request(body)  # the service's own rules: a malformed search never leaves the gateway
        if not gate.cfg.tenants[principal.tenant].allows("collections", collection):
            raise Forbidden(
                f"Tenant '{principal.tenant}' may not search collection '{collection}'.", "collection"
            )
        if gate.cfg.retrieval is None:
            raise ApiError(404, "This gateway has no retrieval service (policy file: retrieval.url).")
    except ApiError as exc:
        raise Refused(exc, _reason(exc), principal=principal, model=collection) from None
    got = gate.limiters[principal.tenant].admit(0)
    if not isinstance(got, Ticket):
        raise rate_limited(got, principal, collection)
    return RetrievalAdmitted(principal=principal, collection=collection, body=body, ticket=got)


class RetrievalUpstream:
    """The connection to the retrieval service; its token and TLS files are read when this is built."""

    def __init__(self, cfg: GatewayConfig):
        r = cfg.retrieval
        assert r is not None
        self.url, self.timeout_s, self.tls_name = r.url, cfg.timeout_s, r.tls_name
        tls = r.tls or cfg.backend_tls
        self.verify = client_context(tls, where="retrieval.tls" if r.tls else "backend_tls")
        self.presents_cert = tls is not None and tls.cert is not None
        token = r.token()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http: httpx.AsyncClient | None = None

    async def open(self) -> None:
        self.http = httpx.AsyncClient(verify=self.verify, timeout=httpx.Timeout(self.timeout_s, connect=5.0))

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    def unreachable(self, exc: httpx.HTTPError) -> str:
        """Why the service did not answer, naming TLS when the handshake is why."""
        return transport_reason(exc, self.url, presented_cert=self.presents_cert)

    async def send(self, body: dict[str, Any], request_id: str) -> httpx.Response:
        """The service's answer; raises ``httpx.HTTPError`` when it cannot be reached."""
        ext = {"sni_hostname": self.tls_name} if self.tls_name and self.url.startswith("https://") else {}
        req = self.http.build_request(
            "POST",
            f"{self.url}/v1/retrieve",
            json=body,
            extensions=ext,
            headers={**self.headers, "x-request-id": request_id},
        )
        return await self.http.send(req)
