"""Edges of the HTTP surface: malformed ids on every route, redirects, duplicated credentials,
lockouts that must not lock out the innocent, JWKS lookups, and the server's own errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mesial.api.app import db_context
from mesial.api.middleware.headers import SECURITY_HEADERS
from mesial.api.openapi import specs
from mesial.api.services import orgs
from mesial.common.services import free_port
from mesial.common.settings import Settings
from tests.api.conftest import AUDIENCE, ISSUER, Harness, bearer, variant
from tests.api.test_hardening import strict_api  # noqa: F401  (fixture)

JUNK_IDS = ["job_" + "0" * 25, "x" * 41, "%00", "job_%00" + "0" * 20, "%C0%80", "%ED%A0%80", "%FF", "a%0Ab"]


@pytest.mark.parametrize("junk", JUNK_IDS)
async def test_every_path_parameter_refuses_junk_with_a_4xx(api: Harness, junk: str) -> None:
    """Every route with a path parameter, called by a role it admits, answers junk ids with 4xx."""
    org, admin = await api.new_org()
    with db_context(api.app):
        _, operator = await orgs.issue_service_key("operator")
    keys = {"org-admin": admin, "platform-admin": await api.platform_key(), "service": operator}
    bodies = {
        "/internal/v1/jobs/{job_id}/status": {"state": "running", "tenant": org},
        "/v1/orgs/{name}/keys": {"role": "auditor"},
    }
    checked = 0
    for spec in specs(api.app.routes):
        if "{" not in spec.path:
            continue
        role = next((r.value for r in spec.roles if r.value in keys), None)
        key = keys[role] if role else admin
        path = spec.path
        for name in ("job_id", "scan_id", "key_id", "member_id", "name", "token"):
            path = path.replace("{" + name + "}", junk)
        response = await api.client.request(
            spec.method, path, headers=bearer(key), json=bodies.get(spec.path, {"role": "auditor"})
        )
        assert 400 <= response.status_code < 500, (spec.method, spec.path, junk, response.status_code, response.text)
        checked += 1
    assert checked >= 12


async def test_trailing_slash_is_not_redirected_to_the_callers_host(api: Harness) -> None:
    _org, admin = await api.new_org()
    for path in ("/v1/scans/", "/v1/jobs/", "/healthz/"):
        response = await api.client.get(path, headers={**bearer(admin), "host": "evil.example"})
        assert response.status_code == 404, (path, response.status_code)
        assert "evil.example" not in response.headers.get("location", "")
        assert "evil.example" not in response.text


async def test_two_authorization_headers_are_refused(api: Harness) -> None:
    _org, admin = await api.new_org()
    forged = "Bearer mesial_000000000000_" + "x" * 43
    for pair in ((forged, f"Bearer {admin}"), (f"Bearer {admin}", forged), (f"Bearer {admin}", f"Bearer {admin}")):
        headers = [("authorization", pair[0]), ("authorization", pair[1])]
        response = await api.client.get("/v1/scans", headers=headers)
        assert response.status_code == 401, (pair, response.status_code)
    assert (await api.client.get("/v1/scans", headers=bearer(admin))).status_code == 200


async def test_failed_auth_lockout_spares_valid_keys_from_the_same_address(
    api: Harness,
    strict_api: Harness,  # noqa: F811
) -> None:
    _org, admin = await api.new_org()
    good = await api.key(admin, "technician")
    bad = [
        (await strict_api.client.get("/v1/me", headers=bearer("mesial_000000000000_" + "y" * 43))).status_code
        for _ in range(5)
    ]
    assert bad[:3] == [401, 401, 401] and bad[3:] == [429, 429]  # the guesser is slowed down
    assert (await strict_api.client.get("/v1/me", headers=bearer(good))).status_code == 200  # the clinic is not


@contextlib.asynccontextmanager
async def jwks_server(document: dict[str, Any]) -> AsyncIterator[tuple[str, list[float]]]:
    hits: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        hits.append(time.monotonic())
        body = json.dumps(document).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        writer.write(b"connection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/jwks", hits
    finally:
        server.close()
        await server.wait_closed()


async def test_unknown_jwks_key_ids_do_not_each_trigger_a_fetch(api: Harness, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    async with jwks_server({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}) as (url, hits):
        settings = {"oidc_issuer": ISSUER, "oidc_audience": AUDIENCE, "oidc_jwks": url}
        async with variant(api, tmp_path / "data", **settings) as idp:
            org, _admin = await idp.new_org()
            claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u1", "exp": int(time.time()) + 300}
            good = jwt.encode({**claims, "mesial_org": org, "mesial_role": "technician"}, key, "RS256", {"kid": "k1"})
            assert (await idp.client.get("/v1/me", headers=bearer(good))).status_code == 200
            fetched = len(hits)
            forged = [
                jwt.encode(claims, key, algorithm="RS256", headers={"kid": secrets.token_hex(4)}) for _ in range(25)
            ]
            codes = [(await idp.client.get("/v1/me", headers=bearer(t))).status_code for t in forged]
            assert set(codes) <= {401, 429}
            assert len(hits) - fetched <= 1, f"{len(hits) - fetched} JWKS fetches for 25 unknown key ids"
            assert (await idp.client.get("/v1/me", headers=bearer(good))).status_code == 200


async def test_the_servers_own_400s_carry_the_security_headers(service_settings: Settings) -> None:
    """uvicorn answers a request it cannot parse itself, before the app: its 400 is hardened too."""
    import uvicorn

    from mesial.api.app import create_app
    from mesial.api.server import server_config

    port = free_port()
    config = server_config(create_app(service_settings), "127.0.0.1", port, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.05)
        for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            await writer.drain()
            answer = (await reader.read()).decode("latin-1")
            writer.close()
            head = answer.split("\r\n\r\n", 1)[0].lower()
            assert head.startswith("http/1.1 400"), answer
            for name, value in SECURITY_HEADERS:
                assert f"{name.decode()}: {value.decode().lower()}" in head, (name, answer)
        async with httpx.AsyncClient() as client:
            ok = await client.get(f"http://127.0.0.1:{port}/healthz")
        assert ok.status_code == 200 and ok.headers["x-frame-options"] == "DENY"
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize(
    "claims",
    [
        {"mesial_org": "lab\x00", "sub": "u1"},
        {"sub": "user\x00one"},
        {"mesial_org": "x" * 300, "sub": "u1"},
        {"sub": "\ud800"[:0] + "é" * 300},
    ],
)
async def test_oidc_claims_that_no_row_can_hold_are_401(idp: tuple[Harness, Any], claims: dict[str, Any]) -> None:
    """Claims are client text too: a NUL or an overlong organization never reaches the database as a 500."""
    app, key = idp
    org, _admin = await app.new_org()
    body = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300, "mesial_org": org}
    body.update({"mesial_role": "technician", **claims})
    token = jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})
    response = await app.client.get("/v1/me", headers=bearer(token))
    assert response.status_code in (200, 401), (claims, response.status_code, response.text)
    if "\x00" in json.dumps(claims, ensure_ascii=False) or len(str(claims.get("mesial_org", ""))) > 64:
        assert response.status_code == 401


def _cursor(value: Any) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("cursor", "refused"),
    [
        (_cursor(["2026-01-01T00:00:00Z", "scn_\u0000"]), True),
        (_cursor(["2026-01-01T00:00:00Z", "x" * 41]), True),
        (_cursor(["2026-01-01T00:00:00", "scn_" + "0" * 24]), True),  # no time zone
        (_cursor({"a": 1}), True),
        (_cursor([1e308, 2]), True),
        ("%00", True),
        (_cursor(["9999-12-31T23:59:59+14:00", "scn_" + "0" * 24]), False),  # odd but well-formed
    ],
)
async def test_crafted_cursors_are_422(api: Harness, cursor: str, refused: bool) -> None:
    _org, admin = await api.new_org()
    for path in ("/v1/scans", "/v1/jobs"):
        response = await api.client.get(f"{path}?cursor={cursor}", headers=bearer(admin))
        assert response.status_code == (422 if refused else 200), (path, cursor, response.status_code, response.text)


async def test_link_downloads_are_throttled_only_when_refused(
    api: Harness,
    strict_api: Harness,  # noqa: F811
) -> None:
    """A clinic behind one address downloads as many artifacts as it has links; only refused links
    spend the address's failure budget (then 429)."""
    from tests.api.test_jobs import finished_job

    org, admin = await api.new_org()
    job = await finished_job(api, admin)
    links = strict_api.runtime.links  # its own link secret: links as it would sign them
    with db_context(api.app):
        org_id = (await orgs.org_by_name(org)).id
    me = (await api.client.get("/v1/me", headers=bearer(admin))).json()["actor"]
    urls = [f"/v1/links/{links.token(links.sign(org_id, job['id'], 'summary.json', me))}" for _ in range(5)]
    assert [(await strict_api.client.get(url)).status_code for url in urls] == [200] * 5
    expired = links.token(links.sign(org_id, job["id"], "summary.json", me, now=time.time() - 3600))
    codes = [(await strict_api.client.get(f"/v1/links/{expired}")).status_code for _ in range(4)]
    assert codes == [403, 403, 403, 429]
    assert (await strict_api.client.get(urls[0])).status_code == 200


async def test_an_error_outside_the_apps_middleware_is_still_hardened(
    api: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starlette's outermost ServerErrorMiddleware answers an exception raised in the outer middleware
    (outside SecurityHeaders and ErrorBodies): that 500 too carries the headers and no internals."""
    from mesial.api.middleware.context import DatabaseContext

    async def broken(self: Any, scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("db password is hunter2")

    monkeypatch.setattr(DatabaseContext, "__call__", broken)
    api.app.middleware_stack = None  # rebuilt on the next request, with the broken middleware
    transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
            response = await client.get("/healthz")
    finally:
        monkeypatch.undo()
        api.app.middleware_stack = None
    assert response.status_code == 500
    assert "hunter2" not in response.text and response.json()["error"]["code"] == "internal"
    for name, value in SECURITY_HEADERS:
        assert response.headers[name.decode()] == value.decode()
