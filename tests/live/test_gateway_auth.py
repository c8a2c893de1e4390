"""The gateway's authentication and authorization on loopback (the ``gw`` fixture): API keys and JWTs, which
ways each tenant may authenticate, and per-tenant rules on models, output budgets, tools, collections and
token-id prompts; plus unit tests of the JWT verifier."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time

import pytest

from fleettwin.live.gateway.auth import JwtError, b64url_decode, b64url_encode, decode_hs256, encode_hs256
from fleettwin.live.gateway.config import parse_gateway
from fleettwin.live.protocol import ApiError
from fleettwin.models.errors import ConfigError
from tests.gatewaykit import KEYS, audit_of, auth, base_policy, chat, error, jwt

# -- authentication ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": KEYS["alpha"]},
        {"Authorization": f"Basic {KEYS['alpha']}"},
        {"x-api-key": "nope"},
    ],
)
def test_missing_or_wrong_key_is_401(gw, headers):
    r = gw["client"].post("/v1/chat/completions", headers=headers, json=chat("hi", max_tokens=1))
    err = error(r, 401)
    assert err["type"] == "AuthenticationError"
    rec = audit_of(gw, r)
    assert rec["decision"] == "deny" and rec["reasons"] == ["unauthenticated"] and rec["tenant"] is None
    assert KEYS["alpha"] not in json.dumps(rec)


def test_jwt_valid_passes_and_bad_ones_are_refused(gw):
    c = gw["client"]
    r = c.post(
        "/v1/chat/completions", headers={"Authorization": f"Bearer {jwt()}"}, json=chat("hi", max_tokens=2)
    )
    assert (
        r.status_code == 200
        and audit_of(gw, r)["auth"] == "jwt"
        and audit_of(gw, r)["key_id"] == "svc-analytics"
    )
    header, payload, _ = jwt().split(".")
    forged = encode_hs256({"tenant": "gamma", "aud": "fleettwin-gateway", "exp": time.time() + 60}, b"k" * 40)
    none_alg = b64url_encode(b'{"alg":"none"}') + "." + payload + "."
    bad = {
        "wrong signature": forged,
        "expired": jwt(exp=time.time() - 3600),
        "alg none": none_alg,
        "unknown tenant": jwt(tenant="root"),
        "wrong audience": jwt(aud="someone-else"),
        "tampered": header + "." + b64url_encode(b'{"tenant":"alpha"}') + "." + jwt().split(".")[2],
    }
    for why, token in bad.items():
        r = c.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {token}"},
            json=chat("hi", max_tokens=1),
        )
        assert r.status_code == 401, why
        assert "Invalid bearer token" in r.json()["error"]["message"], why


def test_jwt_verifier_accepts_the_rfc_7515_example():
    key = b64url_decode(
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"
    )
    token = (  # RFC 7515 A.1
        "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9."
        "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ."
        "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    )
    assert decode_hs256(token, key, now=1300819000, issuer="joe")["http://example.com/is_root"] is True
    with pytest.raises(JwtError, match="expired"):
        decode_hs256(token, key, now=1300819381)
    with pytest.raises(JwtError, match="issuer"):
        decode_hs256(token, key, now=1300819000, issuer="eve")


def test_a_jwt_with_a_crit_header_is_refused():
    secret = b"s" * 40
    header = b64url_encode(json.dumps({"alg": "HS256", "crit": ["exp"], "exp": 1}).encode())
    payload = b64url_encode(json.dumps({"tenant": "t", "exp": time.time() + 60}).encode())
    sig = b64url_encode(hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    with pytest.raises(JwtError, match="crit"):
        decode_hs256(f"{header}.{payload}.{sig}", secret, now=time.time())
    assert decode_hs256(
        encode_hs256({"tenant": "t", "exp": time.time() + 60}, secret), secret, now=time.time()
    )


def test_tenants_authenticate_only_the_ways_their_policy_allows(gw):
    c = gw["client"]
    as_alpha = jwt(tenant="alpha")  # alpha uses API keys: a valid JWT naming it is refused
    r = c.post(
        "/v1/chat/completions", headers={"Authorization": f"Bearer {as_alpha}"}, json=chat("hi", max_tokens=1)
    )
    assert "does not authenticate with JWTs" in error(r, 401)["message"]
    for credential in (jwt(tenant="both"), "key-both-0123456789"):  # both ways allowed for "both"
        r = c.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {credential}"},
            json=chat("hi", model="rec", max_tokens=1),
        )
        assert r.status_code == 200, r.text
    with pytest.raises(ConfigError, match="tenants.t.auth: jwt is allowed but the file has no jwt section"):
        parse_gateway({**base_policy(auth=["api_key", "jwt"])})
    with pytest.raises(
        ConfigError, match="tenants.t.auth: api_key is allowed but the tenant has no api_keys"
    ):
        parse_gateway({**base_policy(api_keys=[], auth=["api_key"]), "jwt": {"secret_env": "X"}})
    cfg = parse_gateway({**base_policy(auth=["jwt"]), "jwt": {"secret_env": "X"}})
    from fleettwin.live.gateway.auth import Authenticator

    os.environ["X"] = "x" * 40
    try:
        with pytest.raises(ApiError, match="does not authenticate with API keys"):
            Authenticator(cfg).authenticate({"authorization": f"Bearer {'k' * 20}"})
    finally:
        del os.environ["X"]


# -- the tenant's rules --------------------------------------------------------------------------------------


def test_models_are_filtered_per_tenant(gw):
    c = gw["client"]
    assert [m["id"] for m in c.get("/v1/models", headers=auth("alpha")).json()["data"]] == ["emu", "rec"]
    assert [m["id"] for m in c.get("/v1/models", headers=auth("beta")).json()["data"]] == ["rec"]
    error(c.get("/v1/models"), 401)
    assert c.get("/health").status_code == 200


def test_model_not_allowed_is_403_and_unknown_model_404(gw):
    c = gw["client"]
    err = error(c.post("/v1/chat/completions", headers=auth("alpha"), json=chat("hi", model="emu-b")), 403)
    assert err["type"] == "PermissionDeniedError" and err["param"] == "model" and "emu-b" in err["message"]
    assert error(c.post("/v1/chat/completions", headers=auth("alpha"), json=chat("hi", model="gpt-9")), 404)
    assert (
        error(c.post("/v1/chat/completions", headers=auth("alpha"), json={"messages": []}), 400)["param"]
        == "model"
    )


def test_max_tokens_over_the_tenants_limit_is_400_naming_it(gw):
    c = gw["client"]
    err = error(
        c.post(
            "/v1/completions", headers=auth("alpha"), json={"model": "emu", "prompt": "hi", "max_tokens": 65}
        ),
        400,
    )
    assert err["param"] == "max_tokens" and "at most 64" in err["message"] and "alpha" in err["message"]
    err = error(
        c.post("/v1/chat/completions", headers=auth("alpha"), json=chat("hi", max_completion_tokens=100)), 400
    )
    assert err["param"] == "max_tokens"


def test_chat_without_max_tokens_gets_the_tenants_cap(gw):
    r = gw["client"].post("/v1/chat/completions", headers=auth("beta"), json=chat("hi", model="rec"))
    assert r.status_code == 200
    assert gw["seen"][-1]["max_tokens"] == 64 and gw["seen"][-1]["model"] == "recorded-model"


def test_tools_collections_and_token_ids_follow_the_tenants_rules(gw):
    c = gw["client"]
    tool = {"type": "function", "function": {"name": "delete_everything", "parameters": {}}}
    err = error(c.post("/v1/chat/completions", headers=auth("alpha"), json=chat("hi", tools=[tool])), 403)
    assert "delete_everything" in err["message"]
    ok_tool = {"type": "function", "function": {"name": "search", "parameters": {}}}
    r = c.post("/v1/chat/completions", headers=auth("alpha"), json=chat("hi", model="rec", tools=[ok_tool]))
    assert r.status_code == 200
    docs = [{"collection": "hr-private", "text": "salaries"}]
    r = c.post("/v1/chat/completions", headers=auth("alpha"), json=chat("q", documents=docs))
    assert "hr-private" in error(r, 403)["message"]
    err = error(
        c.post("/v1/completions", headers=auth("alpha"), json={"model": "emu", "prompt": [1, 2, 3]}), 403
    )
    assert "token-id" in err["message"]
    r = c.post(
        "/v1/completions", headers=auth("ids"), json={"model": "emu", "prompt": [1, 2, 3], "max_tokens": 2}
    )
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 3  # allowed for this tenant
