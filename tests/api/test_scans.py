"""Scan upload (type, size, encryption, atomicity), listing, deletion and legal hold."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mesial.api.app import db_context
from mesial.api.models import AuditEventRow, Organization, Scan
from mesial.common.errors import StoreUnavailable
from mesial.common.retention import DEFAULT_COVERS, sweep_objects
from tests.api import meshes
from tests.api.conftest import Harness, bearer, refusing


async def _objects(api: Harness, org: str, prefix: str = "scans/") -> list[str]:
    return [m.key async for m in api.runtime.store.list(org, prefix)]


async def _rows(api: Harness, org: str) -> int:
    with db_context(api.app):
        found = await Organization.get(name=org)
        return int(await Scan.filter(org_id=found.id).count())


async def _raw_object(api: Harness, key: str) -> bytes:
    store = api.runtime.store
    response = await store.client.get_object(Bucket=store.bucket, Key=key)
    async with response["Body"] as body:
        return bytes(await body.read())


@pytest.mark.parametrize(
    ("data", "fmt", "triangles"),
    [
        (meshes.stl_binary(7), "stl", 7),
        (meshes.stl_binary(3, header=b"solid but binary"), "stl", 3),
        (meshes.stl_ascii(), "stl", 2),
        (meshes.ply_ascii(), "ply", 2),
        (meshes.ply_binary(), "ply", 2),
        (meshes.obj(), "obj", 2),
    ],
)
async def test_each_mesh_format_is_accepted_and_stored_encrypted(
    api: Harness, data: bytes, fmt: str, triangles: int
) -> None:
    org, admin = await api.new_org()
    scan = await api.upload(admin, "bite", data)
    assert (scan["format"], scan["triangles"], scan["size"], scan["kind"]) == (fmt, triangles, len(data), "bite")
    [key] = await _objects(api, org)
    raw = await _raw_object(api, key)
    assert raw.startswith(b"MSLE") and data not in raw
    assert await api.runtime.store.read_bytes(org, f"scans/{scan['id']}") == data


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"hello, this is not a mesh at all\n", 415),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 200, 415),
        (meshes.stl_binary(4)[:-10], 422),  # size does not match the triangle count
        (meshes.stl_ascii().replace(b"      vertex 10.0 0.0 0.0\n", b"", 1), 422),
        (meshes.ply_ascii()[:-8], 422),  # fewer faces than declared
        (meshes.obj() + b"f 1 2 9\n", 422),  # face refers to a missing vertex
        (b"", 415),
    ],
)
async def test_refused_uploads_leave_no_object_and_no_row(api: Harness, data: bytes, status: int) -> None:
    org, admin = await api.new_org()
    response = await api.client.post(
        "/v1/scans", params={"kind": "upper"}, content=data, headers={**bearer(admin), "content-type": "model/stl"}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["request_id"] == response.headers["x-request-id"]
    assert await _objects(api, org) == []
    assert await _rows(api, org) == 0
    listed = await api.client.get("/v1/scans", headers=bearer(admin))
    assert listed.json()["items"] == []


async def test_upload_checks_kind_media_type_and_size(api: Harness) -> None:
    org, admin = await api.new_org()
    h = bearer(admin)
    assert (
        await api.client.post("/v1/scans", params={"kind": "molar"}, content=meshes.obj(), headers=h)
    ).status_code == 422
    wrong_type = await api.client.post(
        "/v1/scans", params={"kind": "upper"}, content=meshes.obj(), headers={**h, "content-type": "image/png"}
    )
    assert wrong_type.status_code == 415
    limit = api.runtime.settings.api.max_upload_bytes
    too_big = meshes.stl_binary((limit // 50) + 10)
    declared = await api.client.post("/v1/scans", params={"kind": "upper"}, content=too_big, headers=h)
    assert declared.status_code == 413

    async def chunks() -> Any:  # no Content-Length: the limit applies while streaming
        for start in range(0, len(too_big), 1 << 20):
            yield too_big[start : start + (1 << 20)]

    streamed = await api.client.post("/v1/scans", params={"kind": "upper"}, content=chunks(), headers=h)
    assert streamed.status_code == 413
    assert await _objects(api, org) == []
    assert (await api.client.get("/v1/scans", headers=h)).json()["items"] == []


async def test_upload_cut_by_the_client_leaves_nothing(api: Harness) -> None:
    org, admin = await api.new_org()
    body = meshes.stl_binary(120_000)  # 6 MB: spans several S3 parts' worth of envelope chunks
    sent = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent < 3:
            sent += 1
            return {"type": "http.request", "body": body[(sent - 1) << 20 : sent << 20], "more_body": True}
        return {"type": "http.disconnect"}

    messages: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": "/v1/scans",
        "raw_path": b"/v1/scans",
        "query_string": b"kind=upper",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {admin}".encode())],
        "client": ("203.0.113.9", 1234),
        "server": ("testserver", 443),
    }
    settings = api.runtime.settings.api
    old = settings.max_upload_bytes
    object.__setattr__(settings, "max_upload_bytes", 64 << 20)
    try:
        await api.app(scope, receive, send)
    finally:
        object.__setattr__(settings, "max_upload_bytes", old)
    await asyncio.sleep(0.1)
    assert sent == 3
    assert [m["status"] for m in messages if m["type"] == "http.response.start"] != [201]
    assert await _rows(api, org) == 0
    assert await _objects(api, org) == []
    store = api.runtime.store
    uploads = await store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=f"tenants/{org}/")
    assert uploads.get("Uploads", []) == []
    assert (await api.client.get("/v1/scans", headers=bearer(admin))).json()["items"] == []


async def test_pagination_walks_every_scan_once(api: Harness) -> None:
    _org, admin = await api.new_org()
    ids = {(await api.upload(admin, "bite", meshes.obj()))["id"] for _ in range(5)}
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.client.get("/v1/scans", params=params, headers=bearer(admin))).json()
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    bad = await api.client.get("/v1/scans", params={"cursor": "!!"}, headers=bearer(admin))
    assert bad.status_code == 422


async def test_delete_and_legal_hold(api: Harness) -> None:
    org, admin = await api.new_org()
    tech = await api.key(admin, "technician")
    scan = await api.upload(tech, "upper")
    path = f"/v1/scans/{scan['id']}"
    assert (await api.client.delete(path, headers=bearer(tech))).status_code == 403  # no deletion for technicians
    held = await api.client.put(f"{path}/legal-hold", headers=bearer(admin))
    assert held.status_code == 200 and held.json()["legal_hold"] is True
    assert await api.runtime.store.legal_hold(org, f"scans/{scan['id']}")
    refused = await api.client.delete(path, headers=bearer(admin))
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
    assert (await api.client.delete(f"{path}/legal-hold", headers=bearer(admin))).json()["legal_hold"] is False
    assert (await api.client.delete(path, headers=bearer(admin))).status_code == 204
    assert await _objects(api, org) == []
    assert (await api.client.get(path, headers=bearer(admin))).status_code == 404
    assert (await api.client.delete(path, headers=bearer(admin))).status_code == 404


async def test_clinicians_see_their_own_cases_technicians_all(api: Harness) -> None:
    _org, admin = await api.new_org()
    alice, bob = await api.key(admin, "clinician"), await api.key(admin, "clinician")
    tech = await api.key(admin, "technician")
    mine = await api.upload(alice)
    theirs = await api.upload(bob)

    async def ids(key: str) -> set[str]:
        return {s["id"] for s in (await api.client.get("/v1/scans", headers=bearer(key))).json()["items"]}

    assert await ids(alice) == {mine["id"]}
    assert await ids(tech) == {mine["id"], theirs["id"]}
    assert (await api.client.get(f"/v1/scans/{theirs['id']}", headers=bearer(alice))).status_code == 404


async def test_auditor_and_platform_admin_get_no_scan_data(api: Harness) -> None:
    _org, admin = await api.new_org()
    auditor = await api.key(admin, "auditor")
    scan = await api.upload(admin)
    for key in (auditor, await api.platform_key()):
        assert (await api.client.get("/v1/scans", headers=bearer(key))).status_code == 403
        assert (await api.client.get(f"/v1/scans/{scan['id']}", headers=bearer(key))).status_code == 403
        up = await api.client.post("/v1/scans", params={"kind": "upper"}, content=meshes.obj(), headers=bearer(key))
        assert up.status_code == 403


async def _upload_refused(api: Harness, admin: str) -> None:
    """An upload whose ``scan.uploaded`` cannot be written: the 503 of a failed append."""
    h = {**bearer(admin), "content-type": "application/octet-stream"}
    refused = await api.client.post("/v1/scans", params={"kind": "upper"}, content=meshes.arch_stl(), headers=h)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["request_id"] == refused.headers["x-request-id"]
    assert "sha256" not in refused.text


async def test_an_upload_whose_event_cannot_be_written_leaves_no_row_and_no_object(api: Harness) -> None:
    """docs/audit.md: a scan's row is written in the transaction that appends its ``scan.uploaded``, after
    its encrypted object is stored; when that append fails the object is deleted again: neither is left.
    Asked again, the upload makes one scan, with one event naming it and its stored size."""
    org, admin = await api.new_org()
    with refusing("scan.uploaded", org):
        await _upload_refused(api, admin)
    assert await _rows(api, org) == 0
    assert await _objects(api, org) == []

    scan = await api.upload(admin)
    assert await _objects(api, org) == [f"tenants/{org}/scans/{scan['id']}"]
    with db_context(api.app):
        recorded = await AuditEventRow.filter(tenant=org, action="scan.uploaded")
    assert [(e.resource_id, e.outcome, json.loads(e.details)) for e in recorded] == [
        (scan["id"], "success", {"status": 201, "size": scan["size"]})
    ]


async def test_an_object_whose_deletion_fails_too_is_never_served_and_retention_removes_it_at_its_age(
    api: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload's append fails and so does the deletion of its object: the object stays with no row.
    The API never serves it (not listed, 404 by its id, no job's input), and retention's sweep of the
    tenant's prefix (local mode's, :func:`~mesial.api.services.retention.sweep_local`, per organization)
    removes it at its age, with a receipt naming it, not before."""
    org, admin = await api.new_org()
    store = api.runtime.store

    async def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("store down")

    with refusing("scan.uploaded", org), monkeypatch.context() as patched:
        patched.setattr(store, "delete", down)
        await _upload_refused(api, admin)
    [key] = await _objects(api, org)
    orphan = key.rsplit("/", 1)[1]
    assert await _rows(api, org) == 0
    assert (await api.client.get("/v1/scans", headers=bearer(admin))).json()["items"] == []
    assert (await api.client.get(f"/v1/scans/{orphan}", headers=bearer(admin))).status_code == 404
    case = await api.case(admin)
    body = {"upper": orphan, "lower": case["lower"], "bites": [case["bite"]]}
    assert (await api.client.post("/v1/jobs", json=body, headers=bearer(admin))).status_code == 404

    now, age = datetime.now(UTC), timedelta(days=90)
    collector = api.runtime.collector
    with db_context(api.app):
        for days, left in ((89, [key]), (91, [])):
            await sweep_objects(store, collector, org, covers=DEFAULT_COVERS, max_age=age, now=now + timedelta(days))
            assert [k for k in await _objects(api, org) if orphan in k] == left
        receipts = await AuditEventRow.filter(tenant=org, action="retention.deleted", resource_id=orphan)
    assert [(e.resource_type, json.loads(e.details)["objects_deleted"]) for e in receipts] == [("scan", 1)]
