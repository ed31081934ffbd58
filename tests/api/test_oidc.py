"""OIDC bearer JWTs: verified against a JWKS, mapped to organization and role by claims."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.api.conftest import AUDIENCE, ISSUER, Harness, bearer, variant


def token(key: Any, *, alg: str = "RS256", kid: str = "k1", drop: tuple[str, ...] = (), **claims: Any) -> str:
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "exp": int(time.time()) + 300, **claims}
    for name in drop:
        del body[name]
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


async def test_oidc_token_maps_to_organization_and_role(idp: tuple[Harness, Any]) -> None:
    api, key = idp
    org, admin = await api.new_org()
    scan = await api.upload(admin)
    tech = token(key, mesial_org=org, mesial_role="technician")
    me = await api.client.get("/v1/me", headers=bearer(tech))
    assert me.status_code == 200, me.text
    assert me.json()["organization"] == org and me.json()["role"] == "technician"
    assert me.json()["actor"].startswith("oidc:mem_")
    assert (await api.client.get(f"/v1/scans/{scan['id']}", headers=bearer(tech))).status_code == 200
    assert (await api.client.delete(f"/v1/scans/{scan['id']}", headers=bearer(tech))).status_code == 403


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "someone-else"},
        {"iss": "https://evil.example"},
        {"exp": int(time.time()) - 3600},
        {"mesial_role": "platform-admin"},
        {"mesial_role": "wizard"},
        {"mesial_org": "no-such-org"},
    ],
)
async def test_bad_tokens_are_refused(idp: tuple[Harness, Any], claims: dict[str, Any]) -> None:
    api, key = idp
    org, _admin = await api.new_org()
    bad = token(key, **{"mesial_org": org, "mesial_role": "clinician", **claims})
    assert (await api.client.get("/v1/me", headers=bearer(bad))).status_code == 401


async def test_tokens_signed_by_another_key_or_alg_none_are_refused(idp: tuple[Harness, Any]) -> None:
    api, _key = idp
    org, _admin = await api.new_org()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = token(other, mesial_org=org, mesial_role="org-admin")
    assert (await api.client.get("/v1/me", headers=bearer(forged))).status_code == 401
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60, "mesial_org": org}
    parts = [{"alg": "none", "typ": "JWT", "kid": "k1"}, {**claims, "mesial_role": "org-admin"}]
    unsigned = ".".join(base64.urlsafe_b64encode(json.dumps(p).encode()).decode().rstrip("=") for p in parts) + "."
    assert (await api.client.get("/v1/me", headers=bearer(unsigned))).status_code == 401


async def test_disabling_the_member_revokes_its_tokens(idp: tuple[Harness, Any]) -> None:
    api, key = idp
    org, admin = await api.new_org()
    clinician = token(key, sub="dr-who", mesial_org=org, mesial_role="clinician")
    me = (await api.client.get("/v1/me", headers=bearer(clinician))).json()
    member_id = me["actor"].split(":", 1)[1]
    assert (await api.client.delete(f"/v1/members/{member_id}", headers=bearer(admin))).status_code == 204
    assert (await api.client.get("/v1/me", headers=bearer(clinician))).status_code == 401


@pytest.mark.parametrize("claim", ["exp", "iss", "sub"])
async def test_a_token_without_exp_iss_or_sub_is_refused(idp: tuple[Harness, Any], claim: str) -> None:
    """api.md: `exp`/`iss`/`sub` required (a token without `exp` would never expire)."""
    api, key = idp
    org, _admin = await api.new_org()
    assert (
        await api.client.get("/v1/me", headers=bearer(token(key, mesial_org=org, mesial_role="clinician")))
    ).status_code == 200
    bad = token(key, drop=(claim,), mesial_org=org, mesial_role="clinician")
    assert (await api.client.get("/v1/me", headers=bearer(bad))).status_code == 401


async def test_only_rs256_es256_and_eddsa_are_accepted(api: Harness, tmp_path: Path) -> None:
    """api.md: RS256/ES256/EdDSA only. Each verifies with its key of the JWKS; RS512 is refused even
    where the JWKS publishes a key for it, and so is HS256 keyed with the RSA public key (the
    algorithm-confusion forgery)."""
    keys: dict[str, tuple[Any, str, Any]] = {
        "k1": (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256", jwt.algorithms.RSAAlgorithm),
        "k2": (ec.generate_private_key(ec.SECP256R1()), "ES256", jwt.algorithms.ECAlgorithm),
        "k3": (ed25519.Ed25519PrivateKey.generate(), "EdDSA", jwt.algorithms.OKPAlgorithm),
    }
    published = [
        {**json.loads(kind.to_jwk(k.public_key())), "kid": kid, "use": "sig"} for kid, (k, _, kind) in keys.items()
    ]
    rsa_key = keys["k1"][0]
    published.append({**published[0], "kid": "k4", "alg": "RS512"})  # the same RSA key, offered for RS512
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": published}))
    settings = {"oidc_issuer": ISSUER, "oidc_audience": AUDIENCE, "oidc_jwks": str(jwks)}
    async with variant(api, tmp_path / "data", **settings) as harness:
        org, _admin = await harness.new_org()

        async def answer(credential: str) -> int:
            return (await harness.client.get("/v1/me", headers=bearer(credential))).status_code

        for kid, (key, alg, _) in keys.items():
            assert await answer(token(key, alg=alg, kid=kid, mesial_org=org, mesial_role="clinician")) == 200, alg
        for kid in ("k1", "k4"):
            assert await answer(token(rsa_key, alg="RS512", kid=kid, mesial_org=org, mesial_role="clinician")) == 401
        public_pem = rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60, "mesial_org": org,
                  "mesial_role": "org-admin"}  # fmt: skip
        segments = [
            base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=")
            for p in ({"alg": "HS256", "kid": "k1"}, claims)
        ]
        signed = b".".join(segments)
        mac = base64.urlsafe_b64encode(hmac.new(public_pem, signed, hashlib.sha256).digest()).rstrip(b"=")
        assert await answer((signed + b"." + mac).decode()) == 401


async def test_break_glass_counts_an_sso_admin_and_not_an_admin_whose_keys_are_revoked(
    idp: tuple[Harness, Any],
) -> None:
    """api.md: break-glass is accepted only when the organization has no active org-admin left: a
    member not disabled with a live key *or an SSO login*. An org-admin who signs in by SSO keeps
    the platform out though it has no key; one whose every key is revoked does not."""
    api, key = idp
    platform = bearer(await api.platform_key())
    org, admin = await api.new_org()
    glass = {"role": "org-admin", "break_glass": True}

    async def break_glass() -> int:
        return (await api.client.post(f"/v1/orgs/{org}/keys", json=glass, headers=platform)).status_code

    sso_admin = bearer(token(key, sub="dr-admin", mesial_org=org, mesial_role="org-admin"))
    sso_member = (await api.client.get("/v1/me", headers=sso_admin)).json()["actor"].split(":", 1)[1]
    (own,) = (await api.client.get("/v1/keys", headers=bearer(admin))).json()["items"]
    assert (await api.client.delete(f"/v1/keys/{own['id']}", headers=bearer(admin))).status_code == 200
    assert await break_glass() == 409  # the SSO admin is still there
    assert (await api.client.delete(f"/v1/members/{sso_member}", headers=sso_admin)).status_code == 204
    assert await break_glass() == 201  # the key admin is not disabled, but its only key is revoked
