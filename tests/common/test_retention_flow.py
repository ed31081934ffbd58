"""The retention promise over a whole run: every object a tenant has expires, held ones excepted.

A real flow: scans uploaded through the API, aligned by ``mesial job run`` on the local
executor (real artifacts and progress document, wherever the Job entrypoint writes them),
then one sweep (:func:`mesial.common.retention.sweep_objects`, the operator's) at +91
days. Listing the tenant's prefix afterwards shows only the scan under legal hold, and
the API's record sweeper (:class:`mesial.api.services.retention.ApiRecords`) leaves no row
of what is gone: the API lists the held scan and nothing else.

Local mode (no operator): :func:`mesial.api.services.retention.sweep_local`, run
periodically by the API's lifespan, applies each organization's stored retention
(``PUT /v1/org/retention``) the same way, receipts in the tenant's chain.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from mesial.api.models import AuditEventRow
from mesial.api.services.retention import ApiRecords, sweep_local
from mesial.common.audit_sinks import MemoryAuditSink
from mesial.common.contract import classify_key
from mesial.common.objectstore import META_CREATED
from mesial.common.retention import DEFAULT_COVERS, sweep_objects
from mesial.common.settings import Settings
from mesial.common.tenancy import tenant_prefix
from tests.api.conftest import BACKEND, Harness, _started, bearer, make_settings, variant
from tests.api.realjob import JOB_COMMAND, run_real_job


@pytest.fixture
async def own_db_app(
    service_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Harness]:
    """The API on a database of its own: :func:`sweep_local` sweeps every organization it holds, and the
    session's shared database holds every other test's organizations."""
    url = await _own_database(tmp_path, request)
    async for harness in _started(make_settings(service_settings, tmp_path / "data", url), BACKEND):
        yield harness


async def _own_database(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if BACKEND == "sqlite":
        return f"sqlite://{tmp_path / 'own.sqlite3'}"
    base = request.getfixturevalue("postgres").url
    admin = await asyncpg.connect(base)
    name = f"ret_{secrets.token_hex(4)}"
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    return str(base.rsplit("/", 1)[0] + "/" + name)


@pytest.fixture
async def app(service_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if BACKEND == "sqlite":
        url = f"sqlite://{tmp_path / 'api.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres").url
    settings = make_settings(
        service_settings, tmp_path / "data", url, job_command=JOB_COMMAND, job_timeout_s=300,
        max_upload_bytes=64 << 20,
    )  # fmt: skip
    async for harness in _started(settings, BACKEND):
        yield harness


async def test_nothing_of_a_tenant_outlives_retention_but_held_objects(app: Harness, tmp_path: Path) -> None:
    org, admin = await app.new_org()
    run = await run_real_job(app, admin, tmp_path / "case", seed=5, vertices=6000)
    ids, job, done = run.scans, run.job, run.done
    assert done["state"] == "succeeded", done
    held = ids["upper"][0]
    response = await app.client.put(f"/v1/scans/{held}/legal-hold", headers=bearer(admin))
    assert response.status_code in (200, 201), response.text

    store = app.runtime.store
    before = sorted([m.key async for m in store.list(org)])
    kinds = {classify_key(key[len(tenant_prefix(org)) :]).kind for key in before}
    # the run left scans, artifacts and its progress document in the store
    assert kinds >= {"scans", "results"}, before
    assert any("/artifacts/" in key for key in before) and any(key.endswith("progress.json") for key in before)

    audit = MemoryAuditSink()
    report = await sweep_objects(
        store, audit, org, covers=DEFAULT_COVERS, max_age=timedelta(days=90), now=datetime.now(UTC) + timedelta(days=91)
    )
    after = sorted([m.key async for m in store.list(org)])
    assert after == [f"{tenant_prefix(org)}scans/{held}"], after
    assert report.errors == 0 and report.held == 1 and report.deleted == len(before) - 1
    receipts = {(e.resource_type, e.resource_id) for e in audit.events}
    assert ("job", job["id"]) in receipts and ("scan", ids["lower"][0]) in receipts

    # the rows go with their objects, through the path of DELETE /v1/scans; the held scan stays
    later = datetime.now(UTC) + timedelta(days=91)
    records = await ApiRecords(store).sweep(org, kinds=DEFAULT_COVERS, cutoff=later - timedelta(days=90), now=later)
    scan_count = sum(len(v) for v in ids.values())
    assert records.deleted == (scan_count - 1) + 1, records  # every scan but the held one, and the job
    assert records.kept == 0 and not records.problems, records
    scans = (await app.client.get("/v1/scans", headers=bearer(admin))).json()["items"]
    assert [s["id"] for s in scans] == [held]
    jobs = (await app.client.get("/v1/jobs", headers=bearer(admin))).json()["items"]
    assert jobs == []
    assert (await app.client.get(f"/v1/jobs/{job['id']}/artifacts", headers=bearer(admin))).status_code == 404


async def test_local_mode_applies_the_stored_retention(app: Harness) -> None:
    short, short_admin = await app.new_org()
    long, long_admin = await app.new_org()
    response = await app.client.put("/v1/org/retention", json={"retention_days": 2}, headers=bearer(short_admin))
    assert response.status_code == 200, response.text
    gone = (await app.upload(short_admin, "upper"))["id"]
    kept_held = (await app.upload(short_admin, "upper"))["id"]
    await app.client.put(f"/v1/scans/{kept_held}/legal-hold", headers=bearer(short_admin))
    young = (await app.upload(long_admin, "upper"))["id"]

    runtime = app.runtime
    # three days on: past the 2 days of `short`, within the 90 of `long`
    await sweep_local(runtime.store, runtime.collector, now=datetime.now(UTC) + timedelta(days=3))

    store = runtime.store
    assert sorted([m.key async for m in store.list(short)]) == [f"{tenant_prefix(short)}scans/{kept_held}"]
    assert [m.key async for m in store.list(long)] == [f"{tenant_prefix(long)}scans/{young}"]
    listed = (await app.client.get("/v1/scans", headers=bearer(short_admin))).json()["items"]
    assert [s["id"] for s in listed] == [kept_held]
    assert (await app.client.get(f"/v1/scans/{gone}", headers=bearer(short_admin))).status_code == 404
    listed = (await app.client.get("/v1/scans", headers=bearer(long_admin))).json()["items"]
    assert [s["id"] for s in listed] == [young]
    # the receipt is in the tenant's own chain
    receipts = await AuditEventRow.filter(tenant=short, action="retention.deleted").values_list(
        "resource_id", flat=True
    )
    assert gone in receipts and kept_held not in receipts, receipts
    assert not await AuditEventRow.filter(tenant=long, action="retention.deleted").exists()


async def test_the_local_api_sweeps_on_its_own_schedule(
    app: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The lifespan runs :func:`sweep_local` every ``api.retention_interval_s`` in local mode."""
    _, admin = await app.new_org()
    await app.upload(admin, "upper")
    caplog.set_level(logging.INFO, logger="mesial.api")
    async with variant(app, tmp_path / "variant", retention_interval_s=0.05):
        for _ in range(100):
            if any(r.getMessage().startswith("retention sweep:") for r in caplog.records):
                break
            await asyncio.sleep(0.05)
    sweeps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retention sweep:")]
    assert sweeps and "'examined': 0" not in sweeps[0], sweeps  # it went through the stored scans
    assert "'deleted': 0" in sweeps[0]  # nothing is past its age yet


async def test_local_mode_keeps_a_new_organizations_scans_90_days_and_sweeps_them_on_day_91(
    own_db_app: Harness,
) -> None:
    """docs/api.md: a new organization keeps its scans 90 days unless it says otherwise. The local sweep
    a minute before day 90 leaves the scan and its row; the sweep on day 91 takes both, with the receipt
    in the organization's chain."""
    app = own_db_app
    org, admin = await app.new_org()
    listed = (await app.client.get("/v1/orgs", headers=bearer(await app.platform_key()))).json()["items"]
    assert [o["retention_days"] for o in listed if o["name"] == org] == [90]
    scan = (await app.upload(admin, "upper"))["id"]
    runtime, start = app.runtime, datetime.now(UTC)
    key = f"{tenant_prefix(org)}scans/{scan}"

    await sweep_local(runtime.store, runtime.collector, now=start + timedelta(days=90) - timedelta(minutes=1))
    assert [m.key async for m in runtime.store.list(org)] == [key]
    assert (await app.client.get(f"/v1/scans/{scan}", headers=bearer(admin))).status_code == 200

    await sweep_local(runtime.store, runtime.collector, now=start + timedelta(days=91))
    assert [m.key async for m in runtime.store.list(org)] == []
    assert (await app.client.get(f"/v1/scans/{scan}", headers=bearer(admin))).status_code == 404
    receipts = await AuditEventRow.filter(tenant=org, action="retention.deleted").values_list("resource_id", flat=True)
    assert list(receipts) == [scan]


async def test_the_local_api_sweeps_soon_after_it_starts_not_only_an_interval_later(
    service_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With the default `api.retention_interval_s` (3600 s) the first sweep used to come an hour after
    the start: an API restarted more often than hourly (a laptop, a rolling update) never swept, and
    what was past its age stayed. The first sweep now comes right after the start. 0 is off: an API
    started with 0 leaves it."""
    url = await _own_database(tmp_path, request)
    off = make_settings(service_settings, tmp_path / "data", url, retention_interval_s=0)
    settings = make_settings(service_settings, tmp_path / "data", url, retention_interval_s=3600)
    async for first in _started(off, BACKEND):
        org, admin = await first.new_org()
        put = await first.client.put("/v1/org/retention", json={"retention_days": 1}, headers=bearer(admin))
        assert put.status_code == 200, put.text
        store = first.runtime.store
        two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat()
        stray = f"{tenant_prefix(org)}imported/old-export"  # not written by Mesial: always swept at its age
        await store.client.put_object(Bucket=store.bucket, Key=stray, Body=b"x", Metadata={META_CREATED: two_days_ago})
    async for still_off in _started(off, BACKEND):
        await asyncio.sleep(1.0)  # started with 3600 s, the API below has swept it by 0.1-0.2 s
        assert [m.key async for m in still_off.runtime.store.list(org)] == [stray]
    async for restarted in _started(settings, BACKEND):  # a restart, as a laptop or a rollout does
        for _ in range(100):
            if [m.key async for m in restarted.runtime.store.list(org)] == []:
                break
            await asyncio.sleep(0.1)
        assert [m.key async for m in restarted.runtime.store.list(org)] == []
        receipts = await AuditEventRow.filter(tenant=org, action="retention.deleted").values_list(
            "resource_type", flat=True
        )
        assert [str(r) for r in receipts] == ["object"]
