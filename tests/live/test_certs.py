"""``fleettwin data certs`` and mutual TLS: the certificates it writes (modes, SANs, key usages, CA reuse) and
the links that require them — an emulator and the gateway refuse a client without a certificate, with one
from another CA, or with a server certificate, and accept the right client certificate; the gateway reaches an
mTLS backend with its own client certificate, and reports why when it cannot; every link checks the identity
(SAN) of the certificate against the component expected there, both ways."""

from __future__ import annotations

import asyncio
import json
import stat

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from fleettwin.cli import main
from fleettwin.live.certs import make_certs
from fleettwin.live.client import VllmClient, tls_verify
from fleettwin.live.gateway.app import create_gateway_app
from fleettwin.live.gateway.config import hash_key, parse_gateway
from fleettwin.live.http_guard import HttpLimits, peer_identities
from fleettwin.live.server import serve_in_thread
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.errors import ConfigError
from tests.emukit import constant_emulator

LIMITS = EngineLimits(
    num_blocks=128, block_size=16, max_num_seqs=4, max_num_batched_tokens=256, max_model_len=512
)
SPEC = constant_emulator(0.001, LIMITS)
BODY = {"model": "emu", "prompt": "hi", "max_tokens": 2}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    good, other = tmp_path_factory.mktemp("pki"), tmp_path_factory.mktemp("other-pki")
    make_certs(
        good, ["gateway", "emulator", "controller", "retrieval"], hosts=["gpu-node-1", "10.0.0.7"], days=2
    )
    make_certs(other, ["controller"], days=2)
    return good, other


def pair(d, stem: str) -> tuple[str, str]:
    return str(d / f"{stem}.pem"), str(d / f"{stem}.key")


def load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_files_modes_chains_sans_and_usages(pki):
    good, _ = pki
    ca = load(good / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in ("gateway", "emulator", "controller", "retrieval"):
        server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
        for stem, usage in ((name, server), (f"{name}-client", client)):
            cert = load(good / f"{stem}.pem")
            cert.verify_directly_issued_by(ca)
            assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
            assert cert.subject.rfc4514_string().startswith(f"CN={name}")
            assert stat.S_IMODE((good / f"{stem}.key").stat().st_mode) == 0o600
            assert stat.S_IMODE((good / f"{stem}.pem").stat().st_mode) == 0o644
        sans = (
            load(good / f"{name}.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        )
        assert {str(v) for v in sans.get_values_for_type(x509.DNSName)} == {name, "localhost", "gpu-node-1"}
        assert {str(v) for v in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "10.0.0.7"}
    assert stat.S_IMODE((good / "ca.key").stat().st_mode) == 0o600
    assert not list(good.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_a_second_run_reuses_the_ca_and_bad_input_is_refused(tmp_path, capsys):
    assert main(["certs", "--out", str(tmp_path), "--names", "gateway"]) == 0
    assert "gateway-client.pem" in capsys.readouterr().out
    ca, leaf = (tmp_path / "ca.pem").read_bytes(), (tmp_path / "gateway.pem").read_bytes()
    assert main(["certs", "--out", str(tmp_path), "--names", "gateway,retrieval"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() == ca and (tmp_path / "gateway.pem").read_bytes() != leaf
    load(tmp_path / "retrieval.pem").verify_directly_issued_by(load(tmp_path / "ca.pem"))
    assert main(["certs", "--out", str(tmp_path), "--names", "Bad/Name"]) == 2
    assert "component name 'Bad/Name'" in capsys.readouterr().err
    (tmp_path / "ca.key").unlink()
    with pytest.raises(ConfigError, match="only one of ca.pem and ca.key"):
        make_certs(tmp_path, ["gateway"])


def refused(url: str, verify) -> None:
    with pytest.raises(httpx.TransportError):  # the handshake (or the first read after it) fails
        httpx.post(f"{url}/v1/completions", json=BODY, verify=verify, timeout=5)


def test_emulator_with_a_ca_requires_a_client_certificate_from_it(pki):
    good, other = pki
    ca = str(good / "ca.pem")
    with serve_in_thread(
        SPEC, ssl_certfile=str(good / "emulator.pem"), ssl_keyfile=str(good / "emulator.key"), ssl_ca_certs=ca
    ) as srv:
        assert srv.url.startswith("https://127.0.0.1:")
        refused(srv.url, tls_verify(ca))  # no client certificate
        refused(srv.url, tls_verify(ca, pair(other, "controller-client")))  # signed by another CA
        refused(srv.url, tls_verify(ca, pair(good, "controller")))  # a server certificate is not a client's
        r = httpx.post(
            f"{srv.url}/v1/completions", json=BODY, verify=tls_verify(ca, pair(good, "controller-client"))
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2

        async def via_client():
            async with VllmClient(srv.url, verify=ca, cert=pair(good, "controller-client"), retries=0) as c:
                return await c.completion("hello", 3)

        res = asyncio.run(via_client())
        assert res.ok and res.output_tokens == 3


def test_gateway_mtls_in_front_and_behind(pki, tmp_path):
    good, other = pki
    ca = str(good / "ca.pem")
    key = "k" * 24
    with serve_in_thread(
        SPEC, ssl_certfile=str(good / "emulator.pem"), ssl_keyfile=str(good / "emulator.key"), ssl_ca_certs=ca
    ) as emu:

        def policy(**tls) -> dict:
            return {
                "tenants": {"t": {"api_keys": [hash_key(key)], "models": ["emu"]}},
                "backends": {"emu": {"urls": [emu.url]}},
                "backend_tls": {"ca": ca, **tls},
                "audit_log": str(tmp_path / "audit.jsonl"),
            }

        cfg = parse_gateway(
            policy(cert=str(good / "gateway-client.pem"), key=str(good / "gateway-client.key"))
        )
        with serve_in_thread(
            create_gateway_app(cfg),
            ssl_certfile=str(good / "gateway.pem"),
            ssl_keyfile=str(good / "gateway.key"),
            ssl_ca_certs=ca,
        ) as gw:
            headers = {"Authorization": f"Bearer {key}"}
            refused(gw.url, tls_verify(ca))
            refused(gw.url, tls_verify(ca, pair(other, "controller-client")))
            trusted = tls_verify(ca, pair(good, "controller-client"))
            r = httpx.post(f"{gw.url}/v1/completions", json=BODY, headers=headers, verify=trusted)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2  # mTLS on both links
            r = httpx.post(
                f"{gw.url}/v1/completions",
                json=BODY,
                headers={"Authorization": "Bearer wrong"},
                verify=trusted,
            )
            assert r.status_code == 401  # a valid certificate does not replace the API key
        # a gateway without a client certificate of its own is refused by the backend: 502, not a hang
        with serve_in_thread(create_gateway_app(parse_gateway(policy()))) as gw:
            r = httpx.post(f"{gw.url}/v1/completions", json=BODY, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 502 and r.json()["error"]["type"] == "BadGatewayError"
            msg = r.json()["error"]["message"]  # the reason, not "did not answer: ReadError:"
            assert "did not answer: TLS:" in msg and "no client certificate was presented" in msg
    records = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == [200, 401, 502]


def test_unreadable_backend_certificate_is_a_config_error(tmp_path):
    cfg = parse_gateway(
        {
            "tenants": {"t": {"api_keys": [hash_key("k" * 24)], "models": ["emu"]}},
            "backends": {"emu": {"urls": ["https://127.0.0.1:1"]}},
            "backend_tls": {"cert": str(tmp_path / "no.pem"), "key": str(tmp_path / "no.key")},
            "audit_log": str(tmp_path / "a.jsonl"),
        }
    )
    with pytest.raises(ConfigError, match="backend_tls: cannot load"):
        create_gateway_app(cfg)


def test_each_link_checks_the_certificates_identity_against_the_component_expected(pki, tmp_path):
    """The retrieval service's client certificate is from the right CA but names another component: an
    emulator that accepts the gateway and the controller refuses it (403 naming it); and a gateway that
    expects the emulator's certificate at a backend refuses another component's server answering there."""
    good, _ = pki
    ca = str(good / "ca.pem")
    spec = constant_emulator(0.001, LIMITS, http=HttpLimits(allowed_clients=("gateway", "controller")))
    with serve_in_thread(
        spec, ssl_certfile=str(good / "emulator.pem"), ssl_keyfile=str(good / "emulator.key"), ssl_ca_certs=ca
    ) as emu:
        for who in ("gateway", "controller"):
            r = httpx.post(
                f"{emu.url}/v1/completions", json=BODY, verify=tls_verify(ca, pair(good, f"{who}-client"))
            )
            assert r.status_code == 200, who
        r = httpx.post(
            f"{emu.url}/v1/completions", json=BODY, verify=tls_verify(ca, pair(good, "retrieval-client"))
        )
        assert r.status_code == 403 and r.json()["error"]["type"] == "PermissionDeniedError"
        assert "client certificate for retrieval is not accepted here" in r.json()["error"]["message"]
        assert (
            httpx.get(f"{emu.url}/metrics", verify=tls_verify(ca, pair(good, "retrieval-client"))).status_code
            == 403
        )
    # another component's server at the backend's address: its certificate is valid for 127.0.0.1 too
    with serve_in_thread(
        SPEC,
        ssl_certfile=str(good / "retrieval.pem"),
        ssl_keyfile=str(good / "retrieval.key"),
        ssl_ca_certs=ca,
    ) as impostor:
        key = "k" * 24
        tls = {"ca": ca, "cert": str(good / "gateway-client.pem"), "key": str(good / "gateway-client.key")}

        def ask(tls_name: str | None) -> httpx.Response:
            backend = {"urls": [impostor.url]} | ({"tls_name": tls_name} if tls_name else {})
            cfg = parse_gateway(
                {
                    "tenants": {"t": {"api_keys": [hash_key(key)], "models": ["emu"]}},
                    "backends": {"emu": backend},
                    "backend_tls": tls,
                    "audit_log": str(tmp_path / "audit.jsonl"),
                }
            )
            with serve_in_thread(create_gateway_app(cfg)) as gw:
                return httpx.post(
                    f"{gw.url}/v1/completions", json=BODY, headers={"Authorization": f"Bearer {key}"}
                )

        assert ask(None).status_code == 200  # the chain and the address alone let it through
        r = ask("emulator")
        msg = r.json()["error"]["message"]
        assert (
            r.status_code == 502
            and "TLS:" in msg
            and "emulator" in msg
            and "CERTIFICATE_VERIFY_FAILED" in msg
        )


def test_client_certificates_name_their_component_in_a_san(pki):
    good, _ = pki
    for name in ("gateway", "controller"):
        cert = load(good / f"{name}-client.pem")
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(v) for v in sans.get_values_for_type(x509.DNSName)] == [name]
        assert peer_identities({"subjectAltName": (("DNS", name),)}) == (name,)
    assert peer_identities({"subject": ((("commonName", "old-cert"),),)}) == ("old-cert",)  # no SAN: the CN
    assert peer_identities(None) is None
