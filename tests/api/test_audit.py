"""The audit collector: events per action, linear chains under concurrency, append-only storage,
internal ingestion, signed checkpoints, export and offline verification against tampering."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tortoise.exceptions import BaseORMException

from mesial.api.app import db_context
from mesial.api.cli import audit as audit_cli
from mesial.api.errors import ValidationFailed
from mesial.api.models import (
    ApiKey,
    Artifact,
    AuditCheckpoint,
    AuditEventRow,
    Job,
    LegalHold,
    Member,
    Organization,
    Scan,
)
from mesial.api.services import orgs
from mesial.common.audit import GENESIS_HASH, PLATFORM_TENANT, verify_export
from mesial.common.contract import job_prefix
from mesial.common.settings import Settings
from mesial.common.tenancy import tenant_prefix
from tests.api import meshes
from tests.api.conftest import Harness, bearer, refusing
from tests.api.test_cli import cli_env, run

EVENT_FIELDS = {
    "type", "tenant", "actor", "source_ip", "action", "resource_type", "resource_id", "outcome", "request_id",
    "time", "details", "sequence", "previous_hash", "hash",
}  # fmt: skip


async def export(api: Harness, admin: str, **params: str) -> list[str]:
    auditor = await api.key(admin, "auditor")
    response = await api.client.get("/v1/audit/export", params=params, headers=bearer(auditor))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return response.text.splitlines(keepends=True)


def events(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if json.loads(line)["type"] == "event"]


async def test_actions_are_audited_with_who_what_where_and_no_names(api: Harness) -> None:
    org, admin = await api.new_org()
    scan = await api.upload(admin, "upper", meshes.arch_stl(header=b"PATIENT Jane Doe 1970-01-01"))
    await api.client.get(f"/v1/scans/{scan['id']}", headers=bearer(admin))
    await api.client.delete(
        f"/v1/scans/{scan['id']}", headers={**bearer(admin), "x-request-id": "0b1e0f2c-5d3a-4c1b-9e7f-123456789abc"}
    )
    tech = await api.key(admin, "technician")
    await api.client.delete(f"/v1/scans/{scan['id']}", headers=bearer(tech))  # denied: 403
    await api.client.delete("/v1/scans/Jane-Doe-1970", headers=bearer(admin))  # a name in the path: 404
    lines = await export(api, admin)
    found = events(lines)
    actions = [(e["action"], e["outcome"]) for e in found]
    assert actions[:2] == [("key.issued", "success"), ("scan.uploaded", "success")]
    assert ("scan.viewed", "success") in actions and ("scan.deleted", "success") in actions
    assert ("scan.deleted", "denied") in actions and ("key.issued", "success") in actions
    deleted = next(e for e in found if e["action"] == "scan.deleted" and e["outcome"] == "success")
    assert set(deleted) == EVENT_FIELDS
    assert deleted["tenant"] == org and deleted["resource_type"] == "scan" and deleted["resource_id"] == scan["id"]
    assert deleted["actor"].startswith("key:") and deleted["source_ip"] == "203.0.113.7"
    assert deleted["request_id"] == "0b1e0f2c-5d3a-4c1b-9e7f-123456789abc" and deleted["time"].endswith("Z")
    assert deleted["details"]["sha256"] == scan["sha256"]  # the deletion receipt names what was deleted
    text = "".join(lines)
    assert "Jane" not in text and "PATIENT" not in text
    assert ("scan.deleted", "denied") in [
        (e["action"], e["outcome"]) for e in found if e["resource_id"] == "(malformed)"
    ]
    assert [e["sequence"] for e in found] == list(range(1, len(found) + 1))
    assert found[0]["previous_hash"] == GENESIS_HASH
    assert verify_export(lines).ok


async def test_chain_stays_linear_under_concurrent_writers(api: Harness) -> None:
    org_a, admin_a = await api.new_org()
    org_b, admin_b = await api.new_org()

    async def work(key: str) -> int:
        return int(
            (
                await api.client.post("/v1/scans", params={"kind": "bite"}, content=meshes.obj(), headers=bearer(key))
            ).status_code
        )

    async def direct(tenant: str, i: int) -> None:
        from mesial.common.audit import AuditEvent

        with db_context(api.app):
            await api.runtime.collector.append(AuditEvent(tenant, "service:test", "test.concurrent", "scan", f"r{i}"))

    codes = await asyncio.gather(
        *[work(admin_a) for _ in range(12)],
        *[work(admin_b) for _ in range(12)],
        *[direct(org_a, i) for i in range(20)],
        *[direct(org_b, i) for i in range(20)],
    )
    assert codes[:24] == [201] * 24
    for admin, count in ((admin_a, 12), (admin_b, 12)):
        lines = await export(api, admin)
        report = verify_export(lines)
        assert report.ok, str(report)
        found = events(lines)
        assert sum(e["action"] == "scan.uploaded" for e in found) == count
        assert sum(e["action"] == "test.concurrent" for e in found) == 20


async def test_audit_tables_refuse_update_and_delete(api: Harness) -> None:
    org, admin = await api.new_org()
    await export(api, admin)  # makes a checkpoint too
    with db_context(api.app):
        row = await AuditEventRow.filter(tenant=org).first()
        assert row is not None
        row.outcome = "failure"
        with pytest.raises(BaseORMException, match="append-only"):
            await row.save()
        with pytest.raises(BaseORMException, match="append-only"):
            await AuditEventRow.filter(tenant=org).update(actor="nobody")
        with pytest.raises(BaseORMException, match="append-only"):
            await AuditEventRow.filter(tenant=org).delete()
        with pytest.raises(BaseORMException, match="append-only"):
            await AuditCheckpoint.filter(tenant=org).delete()
        with pytest.raises(BaseORMException, match="append-only"):
            await AuditCheckpoint.filter(tenant=org).update(signature="vault:v1:AAAA")
        assert await AuditEventRow.filter(tenant=org, outcome="failure").count() == 0


async def _gone_scan(api: Harness, admin: str, org: str) -> str:
    """A scan whose row is there and whose object retention has deleted (what a receipt is about)."""
    scan = await api.upload(admin, "upper")
    await api.runtime.store.delete(org, f"scans/{scan['id']}")
    return str(scan["id"])


async def test_internal_ingestion_is_per_service(api: Harness) -> None:
    org, admin = await api.new_org()
    other, _ = await api.new_org()
    from tests.api.test_jobs import finished_job

    job = await finished_job(api, admin)
    with db_context(api.app):
        org_row = await orgs.org_by_name(org)
        _, job_key = await orgs.issue_service_key("job", org_row.id)
        _, operator_key = await orgs.issue_service_key("operator")
    gone = await _gone_scan(api, admin, org)
    event = {"tenant": org, "action": "retention.deleted", "resource_type": "scan", "resource_id": gone}
    ok = await api.client.post("/internal/v1/audit/events", json=event, headers=bearer(operator_key))
    assert ok.status_code == 201, ok.text
    progress = {**event, "action": "job.progress", "resource_type": "job", "resource_id": job["id"]}
    own = await api.client.post("/internal/v1/audit/events", json=progress, headers=bearer(job_key))
    assert own.status_code == 201 and own.json()["sequence"] == ok.json()["sequence"] + 1
    foreign = await api.client.post(
        "/internal/v1/audit/events", json={**progress, "tenant": other}, headers=bearer(job_key)
    )
    assert foreign.status_code == 403
    assert (await api.client.post("/internal/v1/audit/events", json=event, headers=bearer(admin))).status_code == 403
    bad = await api.client.post(
        "/internal/v1/audit/events", json={**event, "resource_id": "Jane Doe.stl"}, headers=bearer(operator_key)
    )
    assert bad.status_code == 422
    free_text = {**event, "details": {"note": "patient Jane Doe, born 1970"}}
    assert (
        await api.client.post("/internal/v1/audit/events", json=free_text, headers=bearer(operator_key))
    ).status_code == 422
    assert (await api.client.get("/v1/scans", headers=bearer(operator_key))).status_code == 403
    found = events(await export(api, admin))
    receipt = next(e for e in found if e["action"] == "retention.deleted")
    assert receipt["actor"] == "service:operator"
    assert next(e for e in found if e["action"] == "job.progress")["actor"] == "service:job"


async def test_scheduled_checkpoints_sign_moved_heads(api: Harness) -> None:
    org, _admin = await api.new_org()
    collector = api.runtime.collector
    with db_context(api.app):
        before = await AuditCheckpoint.filter(tenant=org).count()
        assert await collector.checkpoint_all() >= 1
        assert await AuditCheckpoint.filter(tenant=org).count() == before + 1
        head = await collector.head(org)
        again = await collector.checkpoint(org)
        assert again is not None and again.sequence == head.sequence
        assert await AuditCheckpoint.filter(tenant=org).count() == before + 1  # head did not move
        assert api.runtime.keys.verify(
            __import__("mesial.common.audit", fromlist=["x"]).checkpoint_message(
                org, again.sequence, again.head_hash, again.time
            ),
            again.signature,
        )


@pytest.fixture
async def exported(api: Harness, tmp_path: Path) -> tuple[list[str], Path]:
    _org, admin = await api.new_org()
    for kind in ("upper", "lower", "bite", "bite"):
        await api.upload(admin, kind)
    with db_context(api.app):
        await api.runtime.collector.checkpoint_all()  # a checkpoint in the middle of the range
    await api.upload(admin, "bite")
    lines = await export(api, admin)
    path = tmp_path / "export.jsonl"
    path.write_text("".join(lines))
    return lines, path


def _tampered(lines: list[str], how: str) -> tuple[list[str], int]:
    """(tampered lines, 1-based number of the first line the verifier must name)."""
    out = list(lines)
    first_event = 1
    if how == "change":
        record = json.loads(out[3])
        record["outcome"] = "failure"
        out[3] = json.dumps(record) + "\n"
        return out, 4
    if how == "delete":
        del out[3]
        return out, 4
    if how == "insert":
        out.insert(3, out[2])
        return out, 4
    if how == "reorder":
        out[2], out[3] = out[3], out[2]
        return out, 3
    if how == "truncate-end":
        last_event = max(i for i, line in enumerate(out) if json.loads(line)["type"] == "event")
        return out[:last_event] + [line for line in out[last_event + 1 :]], last_event + 1
    if how == "truncate-tail":
        return out[:-1], len(out)
    if how == "truncate-start":
        return [out[0], *out[2:]], first_event + 1
    if how == "re-sign":
        manifest = json.loads(out[-1])
        manifest["count"] = 1
        out[-1] = json.dumps(manifest) + "\n"
        return out, len(out)
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["change", "delete", "insert", "reorder", "truncate-end", "truncate-tail", "truncate-start", "re-sign"]
)
async def test_offline_verify_names_the_first_bad_line(exported: tuple[list[str], Path], how: str) -> None:
    lines, _ = exported
    assert verify_export(lines).ok
    tampered, line = _tampered(lines, how)
    report = verify_export(tampered)
    assert not report.ok
    assert report.first_bad_line == line, str(report)


async def test_cli_verify_works_offline_on_the_file(exported: tuple[list[str], Path], tmp_path: Path) -> None:
    lines, path = exported
    runner = CliRunner()
    result = runner.invoke(audit_cli, ["verify", str(path)])
    assert result.exit_code == 0, result.output
    assert "OK:" in result.output
    header = json.loads(lines[0])
    pinned = next(iter(header["public_keys"].values()))
    assert runner.invoke(audit_cli, ["verify", str(path), "--public-key", pinned]).exit_code == 0
    wrong_key = "A" * 43 + "="
    assert runner.invoke(audit_cli, ["verify", str(path), "--public-key", wrong_key]).exit_code == 1
    bad = tmp_path / "bad.jsonl"
    tampered, number = _tampered(lines, "change")
    bad.write_text("".join(tampered))
    result = runner.invoke(audit_cli, ["verify", str(bad)])
    assert result.exit_code == 1 and f"line {number}" in result.output


async def test_cli_verify_names_the_line_of_bytes_that_are_not_utf8(
    exported: tuple[list[str], Path], tmp_path: Path
) -> None:
    lines, _ = exported
    raw = bytearray("".join(lines).encode())
    line_starts = [0]
    for line in lines[:-1]:
        line_starts.append(line_starts[-1] + len(line.encode()))
    # one flipped bit: an ASCII letter of the fourth line becomes a lone continuation byte
    at = raw.index(b'"outcome"', line_starts[3])
    raw[at + 1] ^= 0x80
    bad = tmp_path / "flipped.jsonl"
    bad.write_bytes(bytes(raw))
    result = CliRunner().invoke(audit_cli, ["verify", str(bad)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "FAILED at line 4: not UTF-8 text" in result.output and "Traceback" not in result.output
    # the library names it the same way when handed the bytes
    report = verify_export(bytes(raw).splitlines(keepends=True))
    assert (report.ok, report.first_bad_line) == (False, 4)


async def test_export_range_is_contiguous_and_verifies(api: Harness) -> None:
    _org, admin = await api.new_org()
    await api.upload(admin)
    everything = events(await export(api, admin))
    middle = everything[1]["time"]
    later = events(await export(api, admin, **{"from": middle}))
    assert later[0]["sequence"] == 2 and verify_export(await export(api, admin, **{"from": middle})).ok
    empty = await export(api, admin, **{"from": "2001-01-01T00:00:00Z", "to": "2001-01-02T00:00:00Z"})
    assert events(empty) == [] and verify_export(empty).ok


APPENDER = """
import asyncio, sys
from mesial.api.app import _current, open_database
from mesial.api.audit.collector import AuditCollector
from mesial.api.migrations import dialect_of
from mesial.common.audit import AuditEvent
from mesial.common.settings import Settings

async def main(url, tenant, count, who):
    context = await open_database(Settings(database_url=url), migrate=False)
    with _current(context):
        collector = AuditCollector(None, dialect_of(context.db()))
        await asyncio.gather(*(
            collector.append(AuditEvent(tenant, f"service:{who}", "test.multiprocess", "scan", f"r{who}{i}"))
            for i in range(count)
        ))
    await context.close_connections()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
"""


async def test_chain_stays_linear_across_processes_on_postgres(pg: Harness) -> None:
    """Several API replicas: the advisory lock keeps one chain per tenant, no forks, no failures."""
    org, admin = await pg.new_org()
    url = pg.runtime.settings.database_url
    processes = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", APPENDER, url, org, "40", f"p{n}") for n in range(3)
    ]
    codes = [await process.wait() for process in processes]
    assert codes == [0, 0, 0]
    lines = await export(pg, admin)
    report = verify_export(lines)
    assert report.ok, str(report)
    assert sum(e["action"] == "test.multiprocess" for e in events(lines)) == 120


BOUND_S = 120.0  # 80 appends from two processes and this app's own take 10-35 s on the shared machine


async def test_appends_of_other_connections_wait_instead_of_failing(api: Harness) -> None:
    """Other connections to the same database (``mesial admin`` beside a local-mode server on one
    SQLite file, a second app) append to the chain while this app does: every append waits its turn
    (SQLite: the write lock taken at the transaction's start, not a read snapshot that another
    connection's commit makes stale, which SQLite refuses at once as "database is locked")."""
    org, admin = await api.new_org()
    url = api.runtime.settings.database_url

    async def here(i: int) -> None:
        from mesial.common.audit import AuditEvent

        with db_context(api.app):
            await api.runtime.collector.append(AuditEvent(org, "service:here", "test.multiprocess", "scan", f"h{i}"))

    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", APPENDER, url, org, "40", f"p{n}", stderr=asyncio.subprocess.PIPE
        )
        for n in range(2)
    ]
    waited = asyncio.gather(*(process.communicate() for process in processes))
    appended = 0
    failed: list[str] = []

    async def append_while_they_do() -> list[tuple[bytes, bytes]]:
        nonlocal appended
        while not waited.done() and not failed:  # this app appends for as long as the others do
            found = await asyncio.gather(*(here(appended + i) for i in range(4)), return_exceptions=True)
            failed.extend(repr(error) for error in found if error is not None)
            appended += 4 - len([error for error in found if error is not None])
        if failed:  # before the fix: "database is locked"
            for process in processes:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        return await waited

    # Bounded: a regression that makes the appends wait on each other forever fails here, not at
    # the suite's timeout (the appenders are killed either way).
    try:
        results = await asyncio.wait_for(append_while_they_do(), timeout=BOUND_S)
    except TimeoutError:
        pytest.fail(f"the appends did not finish within {BOUND_S} s ({appended} here, failures: {failed[:3]})")
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    assert failed == []
    assert [process.returncode for process in processes] == [0, 0], [err.decode()[-1500:] for _, err in results]
    lines = await export(api, admin)
    report = verify_export(lines)
    assert report.ok, str(report)
    assert sum(e["action"] == "test.multiprocess" for e in events(lines)) == 80 + appended


async def test_refused_link_downloads_are_in_the_data_owners_chain(api: Harness) -> None:
    """Denials of data access are audited: an expired link, a revoked issuer, a foreign credential,
    and an authentic link to an artifact that is gone, each a denied event in the owner's chain."""
    from tests.api.test_jobs import finished_job

    org, admin = await api.new_org()
    _other, admin_b = await api.new_org()
    job = await finished_job(api, admin)
    tech = await api.key(admin, "technician")
    path = f"/v1/jobs/{job['id']}/artifacts/summary.json/link"
    links = api.runtime.links
    with db_context(api.app):
        org_id = (await orgs.org_by_name(org)).id
    me = (await api.client.get("/v1/me", headers=bearer(admin))).json()["actor"]
    expired = links.token(links.sign(org_id, job["id"], "summary.json", me, now=time.time() - 3600))
    gone = links.token(links.sign(org_id, job["id"], "missing.json", me))
    revoked = (await api.client.post(path, headers=bearer(tech))).json()["url"]
    valid = (await api.client.post(path, headers=bearer(admin))).json()["url"]
    tech_key = next(
        k["id"]
        for k in (await api.client.get("/v1/keys", headers=bearer(admin))).json()["items"]
        if k["role"] == "technician"
    )
    assert (await api.client.delete(f"/v1/keys/{tech_key}", headers=bearer(admin))).status_code == 200
    before = len(events(await export(api, admin)))
    assert (await api.client.get(f"/v1/links/{expired}")).status_code == 403
    assert (await api.client.get(revoked)).status_code == 403
    assert (await api.client.get(valid, headers=bearer(admin_b))).status_code == 403
    assert (await api.client.get(f"/v1/links/{gone}")).status_code == 404
    assert (await api.client.get("/v1/links/" + "A" * 40 + ".bogus")).status_code == 403  # no tenant to name
    assert (await api.client.get(valid)).status_code == 200
    found = events(await export(api, admin))[before:]
    downloads = [e for e in found if e["action"] == "artifact.downloaded"]
    assert [(e["outcome"], e["details"].get("reason")) for e in downloads] == [
        ("denied", "expired"),
        ("denied", "issuer_revoked"),
        ("denied", "foreign_credential"),
        ("denied", None),
        ("success", None),
    ]
    assert all(e["tenant"] == org and e["actor"].startswith("link:") for e in downloads)
    assert downloads[2]["details"]["presented_by"].startswith("key:")


async def test_an_accepted_retention_receipt_removes_the_rows_of_what_is_gone(api: Harness) -> None:
    """Cluster mode: the operator's accepted retention.deleted receipt for a scan or job removes its
    rows (the scan through the one scan deletion; the job with its artifact rows) in the same request;
    a refused receipt (the object still there) and a held scan keep theirs."""
    from tests.api.test_jobs import finished_job

    org, admin = await api.new_org()
    job = await finished_job(api, admin)
    held = await api.upload(admin, "upper")
    live = await api.upload(admin, "upper")
    with db_context(api.app):
        _, operator_key = await orgs.issue_service_key("operator")
        org_id = (await orgs.org_by_name(org)).id
        assert await Artifact.filter(org_id=org_id, job_id=job["id"]).exists()
    url = "/internal/v1/audit/events"
    # refused while the scan's object still exists: the row stays
    live_receipt = {"tenant": org, "action": "retention.deleted", "resource_type": "scan", "resource_id": live["id"]}
    assert (await api.client.post(url, json=live_receipt, headers=bearer(operator_key))).status_code == 409
    assert (await api.client.get(f"/v1/scans/{live['id']}", headers=bearer(admin))).status_code == 200
    # the operator deleted the objects: the receipt is accepted and the rows go with it
    gone = await _gone_scan(api, admin, org)
    async for meta in api.runtime.store.list(org, job_prefix(job["id"])):
        await api.runtime.store.delete(org, meta.key[len(tenant_prefix(org)) :])
    for resource_type, resource_id in (("scan", gone), ("job", job["id"])):
        receipt = {"tenant": org, "action": "retention.deleted", "resource_type": resource_type,
                   "resource_id": resource_id}  # fmt: skip
        response = await api.client.post(url, json=receipt, headers=bearer(operator_key))
        assert response.status_code == 201, response.text
    assert (await api.client.get(f"/v1/scans/{gone}", headers=bearer(admin))).status_code == 404
    assert (await api.client.get(f"/v1/jobs/{job['id']}", headers=bearer(admin))).status_code == 404
    listed = (await api.client.get("/v1/scans", headers=bearer(admin))).json()["items"]
    assert gone not in {s["id"] for s in listed} and live["id"] in {s["id"] for s in listed}
    assert job["id"] not in {j["id"] for j in (await api.client.get("/v1/jobs", headers=bearer(admin))).json()["items"]}
    with db_context(api.app):
        assert not await Scan.exists(id=gone)
        assert not await Job.exists(id=job["id"])
        assert not await Artifact.filter(job_id=job["id"]).exists()
        assert await Scan.exists(id=live["id"])
    # a held scan keeps its row even if a receipt for it is accepted (its object gone by other means)
    assert (await api.client.put(f"/v1/scans/{held['id']}/legal-hold", headers=bearer(admin))).status_code < 300
    with db_context(api.app):
        assert (await Scan.get(id=held["id"])).legal_hold
    await api.runtime.store.set_legal_hold(org, f"scans/{held['id']}", False)
    await api.runtime.store.delete(org, f"scans/{held['id']}")
    held_receipt = {**live_receipt, "resource_id": held["id"]}
    assert (await api.client.post(url, json=held_receipt, headers=bearer(operator_key))).status_code == 201
    with db_context(api.app):
        assert await Scan.exists(id=held["id"])


async def test_a_receipt_sent_again_is_acknowledged_once(api: Harness) -> None:
    """A receipt sent again after a lost answer (the rows it removes went with the first) is acknowledged
    with the entry the chain holds (200), sent as it was or rebuilt with a fresh time, and never appended
    twice, also when two copies arrive at once; a different receipt for the same subject is refused."""
    from tests.api.test_jobs import finished_job

    org, admin = await api.new_org()
    shredded, _ = await api.new_org()
    job = await finished_job(api, admin)
    with db_context(api.app):
        _, operator_key = await orgs.issue_service_key("operator")
    gone = await _gone_scan(api, admin, org)
    async for meta in api.runtime.store.list(org, job_prefix(job["id"])):
        await api.runtime.store.delete(org, meta.key[len(tenant_prefix(org)) :])
    url, operator = "/internal/v1/audit/events", bearer(operator_key)
    details = {"objects_deleted": 1, "objects_held": 0, "max_age_days": 90, "policy": "default"}
    receipt = {"tenant": org, "action": "retention.deleted", "resource_type": "scan", "resource_id": gone,
               "time": "2026-12-01T10:00:00.000000Z", "details": details}  # fmt: skip
    first = await api.client.post(url, json=receipt, headers=operator)
    assert first.status_code == 201, first.text
    assert (await api.client.get(f"/v1/scans/{gone}", headers=bearer(admin))).status_code == 404
    for resent in (receipt, {**receipt, "time": "2026-12-01T10:05:00.000000Z"}):  # as sent; rebuilt by the sender
        again = await api.client.post(url, json=resent, headers=operator)
        assert (again.status_code, again.json()) == (200, first.json()), again.text
    different = await api.client.post(
        url, json={**receipt, "details": {**details, "objects_deleted": 2}}, headers=operator
    )
    assert different.status_code == 409, different.text
    error = different.json()["error"]
    assert f"sequence {first.json()['sequence']}" in error["message"]
    assert error["request_id"] == different.headers["x-request-id"]
    # two copies at once (the sender retried before the first answer came): one entry
    job_receipt = {**receipt, "resource_type": "job", "resource_id": job["id"]}
    both = await asyncio.gather(*(api.client.post(url, json=job_receipt, headers=operator) for _ in range(2)))
    assert sorted(r.status_code for r in both) == [200, 201], [r.text for r in both]
    assert both[0].json() == both[1].json()
    assert (await api.client.get(f"/v1/jobs/{job['id']}", headers=bearer(admin))).status_code == 404
    # an organization's deletion receipt (its key shredded) is acknowledged the same way
    await asyncio.to_thread(api.runtime.keys.shred, shredded)
    org_receipt = {"tenant": shredded, "action": "organization.deleted", "resource_type": "organization",
                   "resource_id": shredded, "details": {"key_shredded": True}}  # fmt: skip
    org_first = await api.client.post(url, json=org_receipt, headers=operator)
    assert org_first.status_code == 201, org_first.text
    org_again = await api.client.post(url, json=org_receipt, headers=operator)
    assert (org_again.status_code, org_again.json()) == (200, org_first.json())
    forged = {**org_receipt, "details": {"key_shredded": False}}
    assert (await api.client.post(url, json=forged, headers=operator)).status_code == 409
    # a key outside the layout can be written and deleted again: only the identical receipt is the same
    stray = {**receipt, "resource_type": "object", "resource_id": "stray-1"}
    assert (await api.client.post(url, json=stray, headers=operator)).status_code == 201
    assert (await api.client.post(url, json=stray, headers=operator)).status_code == 200
    later = {**stray, "time": "2026-12-02T10:00:00.000000Z"}
    assert (await api.client.post(url, json=later, headers=operator)).status_code == 201
    # sent again, a receipt retries the removal of its rows (kept the first time: the scan was held)
    held = await api.upload(admin, "upper")
    assert (await api.client.put(f"/v1/scans/{held['id']}/legal-hold", headers=bearer(admin))).status_code < 300
    await api.runtime.store.set_legal_hold(org, f"scans/{held['id']}", False)
    await api.runtime.store.delete(org, f"scans/{held['id']}")
    held_receipt = {**receipt, "resource_id": held["id"]}
    assert (await api.client.post(url, json=held_receipt, headers=operator)).status_code == 201
    assert (await api.client.get(f"/v1/scans/{held['id']}", headers=bearer(admin))).status_code == 200
    with db_context(api.app):  # the hold is lifted (the API's route would also touch the object, gone)
        await Scan.filter(id=held["id"]).update(legal_hold=False)
    assert (await api.client.post(url, json=held_receipt, headers=operator)).status_code == 200
    assert (await api.client.get(f"/v1/scans/{held['id']}", headers=bearer(admin))).status_code == 404
    found = [e for e in events(await export(api, admin)) if e["actor"] == "service:operator"]
    assert [(e["action"], e["resource_type"], e["resource_id"]) for e in found] == [
        ("retention.deleted", "scan", gone),
        ("retention.deleted", "job", job["id"]),
        ("retention.deleted", "object", "stray-1"),
        ("retention.deleted", "object", "stray-1"),
        ("retention.deleted", "scan", held["id"]),
    ]
    with db_context(api.app):
        assert await AuditEventRow.filter(tenant=shredded, action="organization.deleted").count() == 1


async def test_a_service_writes_only_its_own_actions_about_what_exists(api: Harness) -> None:
    """No forged receipts: a service key writes only its service's actions, about resources of that
    tenant, and a deletion receipt only for what is gone (the store, Vault) — never an API action."""
    org, admin = await api.new_org()
    other, admin_b = await api.new_org()
    live = await api.upload(admin, "upper")
    foreign_scan = await api.upload(admin_b, "upper")
    with db_context(api.app):
        _, operator_key = await orgs.issue_service_key("operator")
        _, job_key = await orgs.issue_service_key("job", (await orgs.org_by_name(org)).id)
        for name, bound in (("job-runner", None), ("operator", "bound"), ("job", None)):
            org_id = (await orgs.org_by_name(org)).id if bound else None
            with pytest.raises(ValidationFailed):
                await orgs.issue_service_key(name, org_id)
    url = "/internal/v1/audit/events"
    scan_event = {"tenant": org, "resource_type": "scan", "resource_id": live["id"]}
    cases = [
        # the API's own action, claimed by a service, for a live scan: the finding
        ({**scan_event, "action": "scan.deleted"}, operator_key, 422),
        ({**scan_event, "action": "scan.deleted"}, job_key, 422),
        # a retention receipt for a scan whose object is still in the store
        ({**scan_event, "action": "retention.deleted"}, operator_key, 409),
        # ... for another tenant's scan, or for one that never existed
        ({**scan_event, "action": "retention.deleted", "resource_id": foreign_scan["id"]}, operator_key, 404),
        ({**scan_event, "action": "retention.deleted", "resource_id": "scn_" + "0" * 24}, operator_key, 404),
        # the organization's deletion receipt while its key is alive
        ({"tenant": org, "action": "organization.deleted", "resource_type": "organization", "resource_id": org},
         operator_key, 409),
        # a job key writing the operator's receipts, or progress of a job that is not there
        ({**scan_event, "action": "retention.deleted"}, job_key, 422),
        ({"tenant": org, "action": "job.progress", "resource_type": "job", "resource_id": "job_" + "0" * 24},
         job_key, 404),
        ({**scan_event, "action": "job.progress"}, job_key, 422),
    ]  # fmt: skip
    for body, key, status in cases:
        response = await api.client.post(url, json=body, headers=bearer(key))
        assert response.status_code == status, (body, response.status_code, response.text)
    assert (await api.client.get(f"/v1/scans/{live['id']}", headers=bearer(admin))).status_code == 200
    found = events(await export(api, admin))
    assert not [e for e in found if e["actor"].startswith("service:")]
    gone = await _gone_scan(api, admin, org)
    receipt = {**scan_event, "action": "retention.deleted", "resource_id": gone}
    assert (await api.client.post(url, json=receipt, headers=bearer(operator_key))).status_code == 201
    assert other not in json.dumps(events(await export(api, admin)))


async def test_only_the_operator_reports_job_states(api: Harness) -> None:
    """A job's own bound key cannot conclude its job: the state reports (and their job.succeeded
    events) are the operator's action."""
    from tests.api.test_jobs import start_job, wait_job

    org, admin = await api.new_org()
    job = await start_job(api, admin)
    with db_context(api.app):
        _, job_key = await orgs.issue_service_key("job", (await orgs.org_by_name(org)).id)
    report = {"state": "failed", "tenant": org, "message": "forged"}
    response = await api.client.post(f"/internal/v1/jobs/{job['id']}/status", json=report, headers=bearer(job_key))
    assert response.status_code == 403, response.text
    found = events(await export(api, admin))
    assert not [e for e in found if e["action"] == "job.failed" and e["actor"] == "service:job"]
    # Nothing left running for the tests after this one.
    cancelled = await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer(admin))
    assert cancelled.status_code == 200, cancelled.text
    done = await wait_job(api, admin, job["id"])
    assert done["state"] == "cancelled", done
    # the row says cancelled once the process is stopped; its worker forgets it a moment later
    deadline = asyncio.get_running_loop().time() + 30
    while job["id"] in api.runtime.dispatcher.running and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    assert job["id"] not in api.runtime.dispatcher.running


async def test_a_failed_audit_append_is_a_503_and_nothing_leaves(
    api: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/audit.md: "if the audit store fails, the client gets 503, not a success without a trace". Neither
    a new key's secret nor scan metadata leaves without its event; the log names the request id; routes
    that are not audited keep working."""
    _org, admin = await api.new_org()
    scan = await api.upload(admin)

    async def down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("audit database down")

    # every append's write: the middleware's, and Call.commit's (a key issued with its event)
    monkeypatch.setattr(api.runtime.collector, "append_unless", down)
    with caplog.at_level("ERROR", logger="mesial.api.audit"):
        refused = [
            await api.client.post("/v1/keys", json={"role": "technician"}, headers=bearer(admin)),  # key.issued
            await api.client.get(f"/v1/scans/{scan['id']}", headers=bearer(admin)),  # scan.viewed
        ]
    for response in refused:
        assert response.status_code == 503, response.text
        request_id = response.headers["x-request-id"]
        assert response.json()["error"] == {
            "code": "unavailable",
            "message": "a backing service is unavailable",
            "request_id": request_id,
        }
        assert any(request_id in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert "mesial_" not in refused[0].text and scan["sha256"] not in refused[1].text
    listed = await api.client.get("/v1/scans", headers=bearer(admin))  # not audited: unaffected
    assert listed.status_code == 200 and [s["id"] for s in listed.json()["items"]] == [scan["id"]]


async def test_an_export_range_that_ends_before_it_starts_is_422(api: Harness) -> None:
    """`from` after `to` selects nothing: a signed empty export an auditor could take for an empty chain.
    It is a 422 saying so; `from` equal to `to` (an empty range, asked as such) and naive times (UTC) pass."""
    _org, admin = await api.new_org()
    auditor = await api.key(admin, "auditor")
    refused = await api.client.get(
        "/v1/audit/export",
        params={"from": "2027-01-01T00:00:00Z", "to": "2026-12-31T18:00:00-05:00"},  # 23:00 UTC: an hour before
        headers=bearer(auditor),
    )
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["request_id"] == refused.headers["x-request-id"]
    assert any("from is after to" in d["msg"] for d in error["details"]), error
    for params in ({"from": "2026-01-01T00:00:00", "to": "2026-01-01T00:00:00Z"}, {"from": "2026-01-01"}):
        response = await api.client.get("/v1/audit/export", params=params, headers=bearer(auditor))
        assert response.status_code == 200, response.text


async def test_a_scan_deletion_whose_event_cannot_be_written_is_undone_and_finished_when_asked_again(
    api: Harness,
) -> None:
    """A deletion is never gone without its ``scan.deleted``: the row goes in the transaction that
    appends the event. With the chain's insert failing the client gets a 503 and the scan is still
    listed (its object already gone); asked again, the deletion finishes, with one event."""
    org, admin = await api.new_org()
    scan = await api.upload(admin)
    with refusing("scan.deleted"):
        refused = await api.client.delete(f"/v1/scans/{scan['id']}", headers=bearer(admin))
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["request_id"] == refused.headers["x-request-id"]
    listed = await api.client.get("/v1/scans", headers=bearer(admin))
    assert [s["id"] for s in listed.json()["items"]] == [scan["id"]]  # not deleted without its event

    done = await api.client.delete(f"/v1/scans/{scan['id']}", headers=bearer(admin))
    assert done.status_code == 204, done.text
    assert (await api.client.get(f"/v1/scans/{scan['id']}", headers=bearer(admin))).status_code == 404
    deleted = await AuditEventRow.filter(tenant=org, action="scan.deleted", resource_id=scan["id"])
    assert [(e.outcome, json.loads(e.details)) for e in deleted] == [
        ("success", {"status": 204, "sha256": scan["sha256"]})
    ]
    assert deleted[0].request_id == done.headers["x-request-id"]


async def _key_request(api: Harness, kind: str) -> tuple[str, str, dict[str, Any], dict[str, str], str]:
    """An organization and a request issuing a key into it: its name, url, body, headers and audit action."""
    if kind == "first":  # the platform admin's first key of an organization without members
        name = f"org-{secrets.token_hex(4)}"
        platform = bearer(await api.platform_key())
        assert (await api.client.post("/v1/orgs", json={"name": name}, headers=platform)).status_code == 201
        return name, f"/v1/orgs/{name}/keys", {"role": "org-admin"}, platform, "key.issued"
    name, admin = await api.new_org()
    if kind == "member":  # an org-admin's key for a new member
        return name, "/v1/keys", {"role": "technician"}, bearer(admin), "key.issued"
    # break-glass: the organization's only admin is lost (its member disabled by itself)
    me = (await api.client.get("/v1/keys", headers=bearer(admin))).json()["items"][0]
    assert (await api.client.delete(f"/v1/members/{me['member_id']}", headers=bearer(admin))).status_code == 204
    glass = {"role": "org-admin", "break_glass": True}
    return name, f"/v1/orgs/{name}/keys", glass, bearer(await api.platform_key()), "key.break_glass"


@pytest.mark.parametrize("kind", ["member", "first", "break-glass"])
async def test_a_key_whose_event_cannot_be_written_is_not_issued_and_is_issued_once_when_asked_again(
    api: Harness, kind: str
) -> None:
    """A key never exists without its ``key.issued`` (``key.break_glass``): its member and key are made
    in the transaction that appends the event. With the chain's insert failing the client gets the 503
    of a failed append and no member or key is left (its secret was never shown); asked again, the key
    is issued, with one event naming it."""
    name, url, body, headers, action = await _key_request(api, kind)
    org_id = (await orgs.org_by_name(name)).id

    async def rows() -> tuple[int, int]:
        return await Member.filter(org_id=org_id).count(), await ApiKey.filter(org_id=org_id).count()

    before = await rows()
    with refusing(action, name):
        refused = await api.client.post(url, json=body, headers=headers)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == {
        "code": "unavailable",
        "message": "a backing service is unavailable",
        "request_id": refused.headers["x-request-id"],
    }
    assert await rows() == before  # neither member nor key without its event

    done = await api.client.post(url, json=body, headers=headers)
    assert done.status_code == 201, done.text
    assert await rows() == (before[0] + 1, before[1] + 1)
    issued = await AuditEventRow.filter(tenant=name, action=action, resource_id=done.json()["id"])
    assert [(e.outcome, e.request_id) for e in issued] == [("success", done.headers["x-request-id"])]
    me = await api.client.get("/v1/me", headers=bearer(done.json()["key"]))
    assert me.status_code == 200 and me.json()["organization"] == name


@pytest.mark.parametrize(
    ("command", "action"),
    [
        (["issue-key", "--role", "org-admin"], "key.issued"),
        (["service-key", "job"], "service_key.issued"),
        (["bootstrap"], "platform_admin.bootstrapped"),
    ],
    ids=["issue-key", "service-key", "bootstrap"],
)
def test_the_cli_issues_no_key_whose_event_cannot_be_written(
    service_settings: Settings, tmp_path: Path, command: list[str], action: str
) -> None:
    """``mesial admin`` makes a key and its member in the transaction that appends their event, as the
    API does: with the chain refusing that event the command fails and leaves neither (nor prints a
    secret); run again, it issues one key, with one event naming it (a bootstrap that left its key
    without its event would have refused every later bootstrap but a ``--force``d one)."""
    env = {**cli_env(service_settings, tmp_path), "HOME": str(tmp_path)}
    name = f"cli-{secrets.token_hex(3)}"
    assert run(env, "admin", "create-org", name).returncode == 0
    command = [*command, "--org", name] if command[0] != "bootstrap" else command
    query = _cli_database(tmp_path)

    query(REFUSE.format(action=action))
    failed = run(env, "admin", *command)
    assert failed.returncode != 0 and "mesial_" not in failed.stdout, failed.stdout
    assert query("SELECT count(*) FROM members") == query("SELECT count(*) FROM api_keys") == [(0,)]
    query("DROP TRIGGER refuse")

    issued = run(env, "admin", *command)
    assert issued.returncode == 0 and issued.stdout.startswith("mesial_"), issued.stderr
    [(key_id,)] = query("SELECT id FROM api_keys")
    assert query("SELECT count(*) FROM members") == [(1,)]
    assert query("SELECT resource_id FROM audit_events WHERE action = ?", action) == [(key_id,)]


# a trigger making the CLI's chain refuse one action's events
REFUSE = (
    "CREATE TRIGGER refuse BEFORE INSERT ON audit_events WHEN NEW.action = '{action}' "
    "BEGIN SELECT RAISE(ABORT, 'audit table unwritable'); END"
)


def _cli_database(tmp_path: Path) -> Callable[..., list[Any]]:
    """A query on the SQLite database of :func:`cli_env` (each in a transaction of its own)."""
    database = tmp_path / "db" / "cli.sqlite3"

    def query(sql: str, *params: str) -> list[Any]:
        with contextlib.closing(sqlite3.connect(database)) as db, db:
            return db.execute(sql, params).fetchall()

    return query


def test_the_cli_creates_no_organization_whose_event_cannot_be_written(
    service_settings: Settings, tmp_path: Path
) -> None:
    """``mesial admin create-org`` makes the organization's row in the transaction that appends its
    ``org.created``: with the chain refusing that event the command fails and leaves no row (the
    tenant's Vault key may stay: making it again is a no-op); run again, it creates the organization
    once, with one event naming it."""
    env = {**cli_env(service_settings, tmp_path), "HOME": str(tmp_path)}
    assert run(env, "admin", "create-org", f"cli-{secrets.token_hex(3)}").returncode == 0  # the database
    name = f"cli-{secrets.token_hex(3)}"
    query = _cli_database(tmp_path)

    query(REFUSE.format(action="org.created"))
    failed = run(env, "admin", "create-org", name)
    assert failed.returncode != 0, failed.stdout
    assert query("SELECT count(*) FROM organizations WHERE name = ?", name) == [(0,)]
    query("DROP TRIGGER refuse")

    created = run(env, "admin", "create-org", name)
    assert created.returncode == 0, created.stderr
    [(org_id,)] = query("SELECT id FROM organizations WHERE name = ?", name)
    assert created.stdout.strip() == org_id
    assert query("SELECT count(*) FROM audit_events WHERE action = 'org.created' AND resource_id = ?", org_id) == [(1,)]


Asking = tuple[str, str, dict[str, Any] | None, dict[str, str]]  # method, url, JSON body, headers


@dataclass(frozen=True)
class Asked:
    """A request making one audited change (its tenant's ``action``) and how to read what it changes."""

    tenant: str
    action: str
    request: Asking
    state: Callable[[], Awaitable[Any]]
    after: Any  # the state once changed
    status: int
    details: dict[str, Any]  # the event's, beside its status
    resource_id: str | None = None  # None: the id the response names (what the request made)


async def _asked(api: Harness, kind: str) -> Asked:
    """The request of ``kind``, in a fresh organization (or, for ``org``, making one)."""
    if kind == "org":
        name = f"org-{secrets.token_hex(4)}"
        request: Asking = ("POST", "/v1/orgs", {"name": name}, bearer(await api.platform_key()))
        return Asked(PLATFORM_TENANT, "org.created", request, Organization.filter(name=name).count, 1, 201, {})
    name, admin = await api.new_org()
    org = await orgs.org_by_name(name)
    if kind in ("key", "member"):  # a technician's key: it stops working once revoked or its member disabled
        tech = await api.key(admin, "technician")
        listed = (await api.client.get("/v1/keys", headers=bearer(admin))).json()["items"]
        [key] = [k for k in listed if k["role"] == "technician"]

        async def works() -> int:
            return (await api.client.get("/v1/me", headers=bearer(tech))).status_code

        if kind == "key":
            request = ("DELETE", f"/v1/keys/{key['id']}", None, bearer(admin))
            return Asked(name, "key.revoked", request, works, 401, 200, {}, key["id"])
        request = ("DELETE", f"/v1/members/{key['member_id']}", None, bearer(admin))
        return Asked(name, "member.disabled", request, works, 401, 204, {}, key["member_id"])

    if kind in ("hold", "unhold"):  # a scan's legal hold, placed or (placed first) lifted

        async def hold() -> tuple[bool, int]:  # the scan's row, and the rows of its hold's history
            return (await Scan.get(id=scan["id"])).legal_hold, await LegalHold.filter(scan_id=scan["id"]).count()

        scan = await api.upload(admin)
        path = f"/v1/scans/{scan['id']}/legal-hold"
        if kind == "hold":
            return Asked(
                name, "scan.hold_placed", ("PUT", path, None, bearer(admin)), hold, (True, 1), 200, {}, scan["id"]
            )
        assert (await api.client.put(path, headers=bearer(admin))).status_code == 200
        lift: Asking = ("DELETE", path, None, bearer(admin))
        return Asked(name, "scan.hold_lifted", lift, hold, (False, 2), 200, {}, scan["id"])

    async def setting() -> tuple[int, bool]:
        row = await Organization.get(id=org.id)
        return row.retention_days, row.break_glass_allowed

    if kind == "retention":
        request = ("PUT", "/v1/org/retention", {"retention_days": 30}, bearer(admin))
        return Asked(
            name, "org.retention_changed", request, setting, (30, True), 200, {"days": 30, "previous": 90}, org.id
        )
    request = ("PUT", "/v1/org/break-glass", {"allowed": False}, bearer(admin))
    return Asked(name, "org.break_glass_changed", request, setting, (90, False), 200, {"allowed": False}, org.id)


@pytest.mark.parametrize("kind", ["key", "member", "retention", "break-glass", "org", "hold", "unhold"])
async def test_a_change_whose_event_cannot_be_written_is_not_made_and_is_made_once_when_asked_again(
    api: Harness, kind: str
) -> None:
    """A key's revocation, a member's disabling, an organization's retention or break-glass setting,
    an organization's creation and a scan's legal hold (its row and history; the store's hold is set
    before) are made in the transaction that appends their event. With the chain's insert failing the
    client gets the 503 of a failed append and nothing has changed (the revoked key still works, the
    setting is as it was, no organization row, the scan's hold as it was); asked again, the change is
    made, with one event (a retention's ``previous`` is the setting before it, not the lost one's)."""
    asked = await _asked(api, kind)
    before = await asked.state()
    method, url, body, headers = asked.request
    with refusing(asked.action, asked.tenant):
        refused = await api.client.request(method, url, json=body, headers=headers)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["request_id"] == refused.headers["x-request-id"]
    assert await asked.state() == before  # not changed without its event

    done = await api.client.request(method, url, json=body, headers=headers)
    assert done.status_code == asked.status, done.text
    assert await asked.state() == asked.after != before
    resource_id = asked.resource_id or done.json()["id"]
    recorded = await AuditEventRow.filter(tenant=asked.tenant, action=asked.action, resource_id=resource_id)
    assert [(e.outcome, e.request_id, json.loads(e.details)) for e in recorded] == [
        ("success", done.headers["x-request-id"], {"status": asked.status, **asked.details})
    ]


async def test_a_key_revoked_again_or_a_member_disabled_again_is_answered_as_before_and_changes_nothing(
    api: Harness,
) -> None:
    """Revoking a revoked key (disabling a disabled member) is answered as the first time, keeps the
    first revocation's time and appends an event of its own, as before these changes moved into the
    transaction of their event; a key or member the organization does not have is a 404, denied in
    its chain, naming the id asked."""
    org, admin = await api.new_org()
    await api.key(admin, "technician")
    await api.key(admin, "technician")
    _admin, first, second = (await api.client.get("/v1/keys", headers=bearer(admin))).json()["items"]
    revoked = [(await api.client.delete(f"/v1/keys/{first['id']}", headers=bearer(admin))) for _ in range(2)]
    assert [r.status_code for r in revoked] == [200, 200]
    assert revoked[0].json()["revoked_at"] == revoked[1].json()["revoked_at"] is not None
    disabled = [
        (await api.client.delete(f"/v1/members/{second['member_id']}", headers=bearer(admin))) for _ in range(2)
    ]
    assert [r.status_code for r in disabled] == [204, 204]
    missing = "key_0123456789abcdef01234567"
    assert (await api.client.delete(f"/v1/keys/{missing}", headers=bearer(admin))).status_code == 404
    assert (await api.client.delete(f"/v1/members/{missing}", headers=bearer(admin))).status_code == 404

    chain = await AuditEventRow.filter(tenant=org, action__in=["key.revoked", "member.disabled"]).order_by("sequence")
    assert [(e.action, e.resource_id, e.outcome) for e in chain] == [
        ("key.revoked", first["id"], "success"),
        ("key.revoked", first["id"], "success"),
        ("member.disabled", second["member_id"], "success"),
        ("member.disabled", second["member_id"], "success"),
        ("key.revoked", missing, "denied"),
        ("member.disabled", missing, "denied"),
    ]
