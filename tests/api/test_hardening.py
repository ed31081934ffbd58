"""Security headers, sanitized errors, limits, validation, revocation and expiry."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from mesial.api.app import db_context
from mesial.api.logs import JsonFormatter
from mesial.api.models import ApiKey
from mesial.api.types import utcnow
from tests.api.conftest import Harness, bearer, variant
from tests.api.test_audit import events, export


async def test_security_headers_and_request_id_on_every_response(api: Harness) -> None:
    for response in (
        await api.client.get("/healthz"),
        await api.client.get("/v1/scans"),  # 401
        await api.client.get("/nowhere"),  # 404 from the router
    ):
        h = response.headers
        assert h["strict-transport-security"].startswith("max-age=")
        assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
        assert h["content-security-policy"].startswith("default-src 'none'")
        assert h["referrer-policy"] == "no-referrer" and "camera=()" in h["permissions-policy"]
        assert len(h["x-request-id"]) >= 8
        if response.status_code >= 400:
            assert response.json()["error"]["request_id"] == h["x-request-id"]
    kept = await api.client.get("/healthz", headers={"x-request-id": "4bf92f3577b34da6a3ce929d0e0e4736"})
    assert kept.headers["x-request-id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    uuid = "0f8fad5b-d9cb-469f-a165-70867728950e"  # docs/api.md: "hex or UUID"
    assert (await api.client.get("/healthz", headers={"x-request-id": uuid})).headers["x-request-id"] == uuid
    for bad in ("bad id", "Jane-Doe-1970", "x" * 100):
        replaced = await api.client.get("/healthz", headers={"x-request-id": bad})
        assert replaced.headers["x-request-id"] != bad


async def test_internal_errors_are_sanitized(api: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    _org, admin = await api.new_org()

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("db password is hunter2 at /srv/secret/path")

    monkeypatch.setattr("mesial.api.routes.scans.page", broken)
    response = await api.client.get("/v1/scans", headers=bearer(admin))
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal", "message": "internal error", "request_id": response.headers["x-request-id"]}
    }
    assert "hunter2" not in response.text and "Traceback" not in response.text


async def test_json_validation_gives_clear_422(api: Harness) -> None:
    _org, admin = await api.new_org()
    bad = await api.client.post("/v1/keys", json={"role": "god", "extra": 1}, headers=bearer(admin))
    assert bad.status_code == 422
    details = bad.json()["error"]["details"]
    assert {tuple(d["loc"]) for d in details} == {("body", "role"), ("body", "extra")}
    garbage = await api.client.post("/v1/keys", content=b"{not json", headers=bearer(admin))
    assert garbage.status_code == 422 and garbage.json()["error"]["code"] == "validation_failed"
    huge = await api.client.post("/v1/keys", content=b"{" + b" " * (2 << 20) + b"}", headers=bearer(admin))
    assert huge.status_code == 413


async def test_revocation_and_expiry_apply_on_the_next_request(api: Harness) -> None:
    _org, admin = await api.new_org()
    tech = await api.key(admin, "technician")
    assert (await api.client.get("/v1/scans", headers=bearer(tech))).status_code == 200
    keys = (await api.client.get("/v1/keys", headers=bearer(admin))).json()["items"]
    tech_key = next(k for k in keys if k["role"] == "technician")
    assert tech_key["prefix"] == tech[: len(tech_key["prefix"])] and "key" not in tech_key
    assert (await api.client.delete(f"/v1/keys/{tech_key['id']}", headers=bearer(admin))).status_code == 200
    revoked = await api.client.get("/v1/scans", headers=bearer(tech))
    assert revoked.status_code == 401 and revoked.json()["error"]["message"] == "credential revoked"
    clin = await api.key(admin, "clinician")
    with db_context(api.app):
        await ApiKey.filter(prefix=clin.split("_")[1]).update(expires_at=utcnow() - timedelta(seconds=1))
    assert (await api.client.get("/v1/scans", headers=bearer(clin))).json()["error"]["message"] == "credential expired"
    member = (await api.client.post("/v1/keys", json={"role": "technician"}, headers=bearer(admin))).json()
    assert (await api.client.delete(f"/v1/members/{member['member_id']}", headers=bearer(admin))).status_code == 204
    assert (await api.client.get("/v1/scans", headers=bearer(member["key"]))).status_code == 401
    forged = tech[:-4] + ("AAAA" if not tech.endswith("AAAA") else "BBBB")
    assert (await api.client.get("/v1/scans", headers=bearer(forged))).status_code == 401


@pytest.fixture
async def strict_api(api: Harness, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    """A second app on the same database with tiny rate limits."""
    limits = {"rate_per_key_per_min": 5, "rate_per_ip_per_min": 12, "rate_auth_per_ip_per_min": 3}
    async with variant(api, tmp_path_factory.mktemp("strict"), **limits) as harness:
        yield harness


async def test_rate_limits_per_key_per_ip_and_on_failed_auth(api: Harness, strict_api: Harness) -> None:
    _org, admin = await api.new_org()
    first, second = await api.key(admin, "technician"), await api.key(admin, "technician")
    codes = [(await strict_api.client.get("/v1/scans", headers=bearer(first))).status_code for _ in range(7)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
    limited = await strict_api.client.get("/v1/scans", headers=bearer(first))
    assert int(limited.headers["retry-after"]) >= 1
    assert (await strict_api.client.get("/v1/scans", headers=bearer(second))).status_code == 200  # another key
    bad = [
        (await strict_api.client.get("/v1/me", headers=bearer("mesial_000000000000_" + "x" * 43))).status_code
        for _ in range(4)
    ]
    assert bad == [401, 401, 401, 429]
    # Once the address has spent its failures, its failures are 429; a valid key from it still works
    # (tests/api/test_edges.py: 30 bad requests behind one proxy must not lock out a whole clinic).
    # The per-address budget covers everything from that address.
    statuses = [(await strict_api.client.get("/v1/jobs")).status_code for _ in range(3)]
    assert 429 in statuses


async def test_logs_are_json_and_name_route_templates_not_paths(api: Harness, caplog: pytest.LogCaptureFixture) -> None:
    _org, admin = await api.new_org()
    scan = await api.upload(admin)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mesial.api.access"):
        await api.client.get(f"/v1/scans/{scan['id']}", headers=bearer(admin))
    [record] = [r for r in caplog.records if r.name == "mesial.api.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["route"] == "/v1/scans/{scan_id}" and line["status"] == 200 and line["request_id"]
    assert scan["id"] not in json.dumps(line)


async def test_org_admin_sets_retention_and_it_is_audited(api: Harness) -> None:
    org, admin = await api.new_org()
    tech = await api.key(admin, "technician")
    assert (
        await api.client.put("/v1/org/retention", json={"retention_days": 30}, headers=bearer(tech))
    ).status_code == 403
    assert (
        await api.client.put("/v1/org/retention", json={"retention_days": 0}, headers=bearer(admin))
    ).status_code == 422
    changed = await api.client.put("/v1/org/retention", json={"retention_days": 30}, headers=bearer(admin))
    assert changed.status_code == 200 and changed.json()["retention_days"] == 30
    listed = (await api.client.get("/v1/orgs", headers=bearer(await api.platform_key()))).json()["items"]
    assert next(o for o in listed if o["name"] == org)["retention_days"] == 30


@pytest.mark.parametrize("junk", ["%00", "%ED%A0%80", "x" * 600, "..%2F..%2Fetc", "%F0%9F%A6%B7"])
async def test_malformed_path_ids_are_404_not_errors(api: Harness, junk: str) -> None:
    _org, admin = await api.new_org()
    platform = await api.platform_key()
    for method, path, key in [
        ("GET", f"/v1/scans/{junk}", admin),
        ("DELETE", f"/v1/keys/{junk}", admin),
        ("DELETE", f"/v1/members/{junk}", admin),
        ("GET", f"/v1/jobs/{junk}/artifacts", admin),
        ("POST", f"/v1/jobs/job_{'0' * 24}/artifacts/{junk}/link", admin),
        ("POST", f"/v1/orgs/{junk}/keys", platform),
        ("GET", f"/v1/links/{junk}", admin),
    ]:
        response = await api.client.request(method, path, headers=bearer(key), json={"role": "auditor"})
        assert response.status_code in (403, 404), (method, path, response.status_code, response.text)


async def test_documented_ranges_take_their_ends_and_refuse_one_past(api: Harness) -> None:
    """docs/api.md's ranges, each end accepted and one past it a 422 naming the field, with nothing changed:
    retention 1-36500 days, a page `limit` 1-200, a key's `expires_in_days` 1-3650."""
    org, admin = await api.new_org()
    platform = bearer(await api.platform_key())

    async def retention() -> int:
        listed = (await api.client.get("/v1/orgs", headers=platform)).json()["items"]
        return int(next(o["retention_days"] for o in listed if o["name"] == org))

    def refused(response: Any, field: str) -> bool:
        error = response.json()["error"]
        return (
            response.status_code == 422
            and error["request_id"] == response.headers["x-request-id"]
            and [d["loc"][-1] for d in error["details"]] == [field]
        )

    for days in (1, 36500):
        put = await api.client.put("/v1/org/retention", json={"retention_days": days}, headers=bearer(admin))
        assert put.status_code == 200 and await retention() == days
    for days in (0, 36501):
        put = await api.client.put("/v1/org/retention", json={"retention_days": days}, headers=bearer(admin))
        assert refused(put, "retention_days"), put.text
        assert await retention() == 36500
    for path in ("/v1/scans", "/v1/jobs"):
        for limit in (1, 200):
            assert (await api.client.get(path, params={"limit": limit}, headers=bearer(admin))).status_code == 200
        for limit in (0, 201):
            page = await api.client.get(path, params={"limit": limit}, headers=bearer(admin))
            assert refused(page, "limit"), page.text
    keys_before = len((await api.client.get("/v1/keys", headers=bearer(admin))).json()["items"])
    for days in (1, 3650):
        issued = await api.client.post(
            "/v1/keys", json={"role": "auditor", "expires_in_days": days}, headers=bearer(admin)
        )
        assert issued.status_code == 201, issued.text
    for days in (0, 3651):
        issued = await api.client.post(
            "/v1/keys", json={"role": "auditor", "expires_in_days": days}, headers=bearer(admin)
        )
        assert refused(issued, "expires_in_days"), issued.text
    assert len((await api.client.get("/v1/keys", headers=bearer(admin))).json()["items"]) == keys_before + 2


async def test_an_api_key_is_its_documented_shape_and_only_its_hash_is_stored(api: Harness) -> None:
    """docs/api.md: `mesial_<12 hex>_<43 base64url>`, the secret 256 random bits, only its SHA-256 stored,
    shown once (the listing shows the prefix only)."""
    _org, admin = await api.new_org()
    key = await api.key(admin, "technician")
    match = re.fullmatch(r"mesial_([0-9a-f]{12})_([A-Za-z0-9_-]{43})", key)
    assert match, key
    prefix, secret = match.groups()
    with db_context(api.app):
        row = await ApiKey.get(prefix=prefix)
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    stored = json.dumps({name: str(getattr(row, name)) for name in ApiKey._meta.fields_map})
    assert secret not in stored and key not in stored
    listed = (await api.client.get("/v1/keys", headers=bearer(admin))).text
    assert secret not in listed and f"mesial_{prefix}" in listed


async def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(
    api: Harness, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """api.md: `X-Forwarded-For` is believed only from `TRUSTED_PROXIES`. Anyone else could write any
    address into it: to get a fresh failed-authentication budget per request, or to put another
    address into the audit chain. The variants' client is 198.51.100.1."""
    _org, admin = await api.new_org()
    guess = bearer("mesial_000000000000_" + "x" * 43)

    async def tries(harness: Harness, claimed: list[str]) -> list[int]:
        return [
            (await harness.client.get("/v1/me", headers={**guess, "x-forwarded-for": c})).status_code for c in claimed
        ]

    async def audited_address(harness: Harness, claimed: str) -> str:
        headers = {**bearer(admin), "x-forwarded-for": claimed}
        done = await harness.client.put("/v1/org/retention", json={"retention_days": 90}, headers=headers)
        assert done.status_code == 200, done.text
        (event,) = [e for e in events(await export(api, admin)) if e["request_id"] == done.headers["x-request-id"]]
        return str(event["source_ip"])

    limits = {"rate_auth_per_ip_per_min": 3}
    async with variant(api, tmp_path_factory.mktemp("direct"), **limits) as direct:
        assert await tries(direct, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]) == [401, 401, 401, 429]
        assert await audited_address(direct, "10.0.0.9") == "198.51.100.1"
    proxied = {**limits, "trusted_proxies": ["198.51.100.0/24"]}
    async with variant(api, tmp_path_factory.mktemp("proxied"), **proxied) as behind:
        # behind the trusted proxy each client is its own address (the last one the proxy added)
        assert await tries(behind, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]) == [401] * 4
        assert await tries(behind, ["10.0.0.5"] * 4) == [401, 401, 401, 429]
        assert await audited_address(behind, "192.0.2.1, 10.0.0.9") == "10.0.0.9"


async def test_metrics_name_route_templates_never_ids_or_paths(api: Harness) -> None:
    """api.md: `GET /metrics` carries route templates only: a scan's id, a junk path or a name a
    client put in the path never becomes a label (Prometheus keeps every label value it sees)."""
    _org, admin = await api.new_org()
    scan = await api.upload(admin)
    assert (await api.client.get(f"/v1/scans/{scan['id']}", headers=bearer(admin))).status_code == 200
    assert (await api.client.get("/v1/scans/Jane-Doe-1970", headers=bearer(admin))).status_code == 404
    assert (await api.client.get("/v1/Jane-Doe-1970/records", headers=bearer(admin))).status_code == 404
    text = (await api.client.get("/metrics")).text
    assert 'route="/v1/scans/{scan_id}",status="200"' in text and 'route="/v1/scans/{scan_id}",status="404"' in text
    assert 'route="unmatched",status="404"' in text
    assert scan["id"] not in text and "Jane-Doe" not in text
