"""RetentionPolicy: the pure decision, sweeps through the operator with a moved clock, legal holds,
untrusted timestamps, one policy per namespace, receipts per scan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesial.common.retention import Verdict, decide
from mesial.operator.testing import Harness
from tests.operator.conftest import eventually, organization_ready
from tests.operator.helpers import POLICY, SCANJOB, audit_events

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("stamp", "verdict"),
    [
        (NOW - 91 * DAY, Verdict.expired),
        (NOW - 90 * DAY, Verdict.expired),
        (NOW - 89 * DAY, Verdict.young),
        (NOW + timedelta(minutes=4), Verdict.young),  # within the tolerated skew
        (NOW + timedelta(hours=2), Verdict.future),
        ("2026-01-01T00:00:00Z", Verdict.expired),
        ("not a date", Verdict.malformed),
        ("2026-01-01T00:00:00", Verdict.malformed),  # naive: no zone, no trust
        (None, Verdict.malformed),
    ],
)
def test_decide(stamp: Any, verdict: Verdict) -> None:
    assert decide(stamp, now=NOW, max_age=90 * DAY, skew=timedelta(minutes=5)) is verdict


def policy(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mesial.dev/v1alpha1", "kind": "RetentionPolicy", "metadata": {"name": name, "namespace": ns},
            "spec": {"maxAgeDays": 30, "covers": ["scans", "results", "scanjobs"], "sweepInterval": "1m", **spec}}  # fmt: skip


async def pstatus(k8s, ns: str, name: str) -> dict[str, Any]:
    obj = await k8s.get(*POLICY, name, ns)
    return dict((obj or {}).get("status") or {})


async def swept(k8s, ns: str, name: str = "retention") -> dict[str, Any] | None:
    """The policy's status once it has swept (for ``eventually``), else None."""
    st = await pstatus(k8s, ns, name)
    return st if st.get("lastSweep") else None


async def test_sweep_deletes_old_unheld_objects_with_receipts(harness: Harness, org_name) -> None:
    org = org_name("keep")
    k8s = harness.client
    ns = await organization_ready(k8s, org)
    store = harness.runtime.store
    await store.put(org, "scans/s1", b"old")
    await store.put(org, "scans/s1/meta", b"old too")
    await store.put(org, "scans/s2", b"held", legal_hold=True)
    await store.put(org, "jobs/j1/artifacts/report.json", b"result")
    await store.put(org, "jobs/j1/progress.json", b"progress")
    await store.put(org, "other/x", b"outside the layout: swept too")
    finished = {"apiVersion": "mesial.dev/v1alpha1", "kind": "ScanJob", "metadata": {"name": "old-job", "namespace": ns},
                "spec": {"scans": {"upper": "a", "lower": "b", "bites": ["c"]}}}  # fmt: skip
    await k8s.create(finished)
    await eventually(lambda: _sj_phase(k8s, ns, "old-job", "Pending"))
    await k8s.patch("batch/v1", "Job", "scanjob-old-job", {"status": {"succeeded": 1, "startTime": "2025-12-31T23:00:00Z",
        "completionTime": "2026-01-01T00:00:00Z", "conditions": [{"type": "Complete", "status": "True"}]}}, ns)  # fmt: skip
    await eventually(lambda: _sj_phase(k8s, ns, "old-job", "Succeeded"))
    # The operator's clock is 40 days ahead: everything above is past 30 days.
    harness.runtime.clock = lambda: datetime.now(UTC) + 40 * DAY
    await k8s.create(policy("retention", ns))

    st = await eventually(lambda: swept(k8s, ns))
    assert st["phase"] == "Active"
    counts = st["lastSweep"]
    assert counts["deleted"] == 5 and counts["held"] == 1 and counts["errors"] == 0
    assert counts["scanJobsDeleted"] == 1 and counts["receipts"] == 3
    remaining = sorted([m.key.split("/", 2)[2] async for m in store.list(org)])
    assert remaining == ["scans/s2"]
    assert await store.legal_hold(org, "scans/s2")
    receipts = [e for e in audit_events(harness.runtime) if e["action"] == "retention.deleted" and e["tenant"] == org]
    assert sorted((e["resource_type"], e["resource_id"]) for e in receipts) == [
        ("job", "j1"),
        ("object", "other"),
        ("scan", "s1"),
    ]
    assert next(e for e in receipts if e["resource_id"] == "s1")["details"]["objects_deleted"] == 2
    assert st["nextSweepTime"] > st["lastSweepTime"]

    async def scanjob_gone() -> bool:  # its finalizer (the stop handler) runs after the sweep
        return await k8s.get(*SCANJOB, "old-job", ns) is None

    await eventually(scanjob_gone)


async def test_clock_skew_keeps_objects_and_reports_them(harness: Harness, org_name) -> None:
    org = org_name("skew")
    k8s = harness.client
    ns = await organization_ready(k8s, org)
    await harness.runtime.store.put(org, "scans/new", b"fresh")
    harness.runtime.clock = lambda: datetime.now(UTC) - DAY  # the operator's clock is a day behind the store's
    await k8s.create(policy("retention", ns))

    counts = (await eventually(lambda: swept(k8s, ns)))["lastSweep"]
    assert counts["deleted"] == 0 and counts["kept"] == 1
    assert counts["problems"] == ["scan new: kept, timestamp future"]
    assert await harness.runtime.store.exists(org, "scans/new")


async def test_one_policy_per_namespace_and_only_in_tenant_namespaces(harness: Harness, org_name) -> None:
    org = org_name("dup")
    k8s = harness.client
    ns = await organization_ready(k8s, org)
    await k8s.create(policy("first", ns, sweepInterval="24h"))
    await eventually(lambda: _policy_phase(k8s, ns, "first", "Active"))
    await k8s.create(policy("second", ns))
    st = await eventually(lambda: _policy_phase(k8s, ns, "second", "Rejected"))
    assert st["reason"] == "DuplicatePolicy" and "first" in st["message"]
    await k8s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"}})
    await k8s.create(policy("stray", "plain"))
    st = await eventually(lambda: _policy_phase(k8s, "plain", "stray", "Rejected"))
    assert st["reason"] == "NotATenantNamespace"


async def _policy_phase(k8s, ns: str, name: str, phase: str) -> dict[str, Any] | None:
    st = await pstatus(k8s, ns, name)
    return st if st.get("phase") == phase else None


async def _sj_phase(k8s, ns: str, name: str, phase: str) -> bool:
    obj = await k8s.get(*SCANJOB, name, ns)
    return bool(obj and (obj.get("status") or {}).get("phase") == phase)


async def test_age_runs_from_upload_not_from_the_last_rewrap(harness: Harness, org_name) -> None:
    """A rewrap rewrites an object (fresh store timestamp); ``mesial-created`` keeps its upload time.
    Objects without it (written before the field existed) are aged by the store's timestamp."""
    from mesial.common.objectstore import META_CREATED
    from mesial.common.tenancy import object_key_for

    org = org_name("rewrap")
    k8s = harness.client
    ns = await organization_ready(k8s, org)
    store = harness.runtime.store
    await store.put(org, "scans/old", b"uploaded long ago, rewrapped today")
    await store.put(org, "scans/new", b"uploaded today")
    await store.put(org, "scans/legacy", b"no creation metadata")
    # rewrap keeps the creation time it finds
    key = object_key_for(org, "scans/old")
    head = await store.client.head_object(Bucket=store.bucket, Key=key)
    created = head["Metadata"][META_CREATED]
    assert datetime.fromisoformat(created.replace("Z", "+00:00")) <= datetime.now(UTC)
    await store.rewrap(org, "scans/old")
    assert (await store.client.head_object(Bucket=store.bucket, Key=key))["Metadata"][META_CREATED] == created
    # "scans/old" was uploaded 100 days ago (and rewrapped since: the store dates it today)
    old_meta = {**head["Metadata"], META_CREATED: (datetime.now(UTC) - 100 * DAY).strftime("%Y-%m-%dT%H:%M:%SZ")}
    await store.client.copy_object(Bucket=store.bucket, Key=key, CopySource={"Bucket": store.bucket, "Key": key},
                                   Metadata=old_meta, MetadataDirective="REPLACE")  # fmt: skip
    legacy = object_key_for(org, "scans/legacy")
    legacy_meta = dict((await store.client.head_object(Bucket=store.bucket, Key=legacy))["Metadata"])
    legacy_meta.pop(META_CREATED)
    await store.client.copy_object(Bucket=store.bucket, Key=legacy, CopySource={"Bucket": store.bucket, "Key": legacy},
                                   Metadata=legacy_meta, MetadataDirective="REPLACE")  # fmt: skip
    await k8s.create(policy("retention", ns, covers=["scans"]))

    counts = (await eventually(lambda: swept(k8s, ns)))["lastSweep"]
    assert counts["deleted"] == 1 and counts["errors"] == 0 and counts["kept"] == 0
    assert not await store.exists(org, "scans/old")
    assert await store.exists(org, "scans/new") and await store.exists(org, "scans/legacy")


async def test_a_policy_that_names_no_age_keeps_90_days_as_the_crd_says(harness: Harness, org_name) -> None:
    """operator.md: ``maxAgeDays`` defaults to 90. The emulator applies no CRD default (the API server
    does), so this is the operator's own: it must be the CRD's, and so must what it takes for the
    other fields left out (every kind of object; a sweep an hour after the last)."""
    from mesial.common.objectstore import META_CREATED
    from mesial.common.tenancy import object_key_for

    crd = yaml.safe_load((ROOT / "crds" / "retentionpolicy.yaml").read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    defaults = {name: field.get("default") for name, field in spec_schema["properties"].items()}
    assert defaults == {"maxAgeDays": 90, "covers": ["scans", "results", "scanjobs"], "sweepInterval": "1h"}
    org = org_name("default")
    k8s = harness.client
    ns = await organization_ready(k8s, org)
    store = harness.runtime.store
    uploaded = {
        "scans/day89": 90 * DAY - timedelta(hours=1),
        "scans/day91": 90 * DAY + timedelta(hours=1),
        "jobs/j89/artifacts/report.json": 90 * DAY - timedelta(hours=1),
        "jobs/j91/artifacts/report.json": 90 * DAY + timedelta(hours=1),
    }
    for name, age in uploaded.items():
        await store.put(org, name, b"x")
        key = object_key_for(org, name)
        meta = (await store.client.head_object(Bucket=store.bucket, Key=key))["Metadata"]
        meta[META_CREATED] = (datetime.now(UTC) - age).strftime("%Y-%m-%dT%H:%M:%SZ")
        await store.client.copy_object(Bucket=store.bucket, Key=key, CopySource={"Bucket": store.bucket, "Key": key},
                                       Metadata=meta, MetadataDirective="REPLACE")  # fmt: skip
    await k8s.create({**policy("retention", ns), "spec": {}})

    st = await eventually(lambda: swept(k8s, ns))
    assert st["phase"] == "Active" and st["lastSweep"]["deleted"] == 2, st
    remaining = sorted([m.key.split("/", 2)[2] async for m in store.list(org)])
    assert remaining == ["jobs/j89/artifacts/report.json", "scans/day89"]
    interval = datetime.fromisoformat(st["nextSweepTime"]) - datetime.fromisoformat(st["lastSweepTime"])
    assert interval == timedelta(hours=1)


async def test_the_operator_holds_the_documented_spec_bounds_itself(harness: Harness, org_name) -> None:
    """operator.md: ``maxAgeDays`` 1..3650, ``sweepInterval`` 1m..168h and not longer than
    ``maxAgeDays``, checked by the operator too (the emulator, like an old CRD, lets anything
    through): each bound is accepted, one past it is ``InvalidSpec`` and sweeps nothing."""
    org = org_name("bounds")
    k8s = harness.client
    ns = await organization_ready(k8s, org)
    await harness.runtime.store.put(org, "scans/s1", b"100 days old to the operator: past 90 and 1")
    harness.runtime.clock = lambda: datetime.now(UTC) + 100 * DAY
    refused: list[dict[str, Any]] = [
        {"maxAgeDays": 3651},
        {"sweepInterval": "59s"},
        {"sweepInterval": "168h1m"},
        {"maxAgeDays": 1, "sweepInterval": "24h1m"},
    ]
    accepted: list[dict[str, Any]] = [
        {"maxAgeDays": 3650, "sweepInterval": "168h"},
        {"maxAgeDays": 3650, "sweepInterval": "1m"},
        {"maxAgeDays": 1, "sweepInterval": "24h"},
    ]
    for n, spec in enumerate(refused + accepted):
        name, phase = f"p{n}", "Rejected" if spec in refused else "Active"

        async def judged(name: str = name, phase: str = phase) -> dict[str, Any] | None:
            return await _policy_phase(k8s, ns, name, phase)

        async def gone(name: str = name) -> bool:
            return await k8s.get(*POLICY, name, ns) is None

        await k8s.create({**policy(name, ns), "spec": spec})
        st = await eventually(judged)
        if phase == "Rejected":
            assert st["reason"] == "InvalidSpec", (spec, st)
            assert await harness.runtime.store.exists(org, "scans/s1")
        await k8s.delete(*POLICY, name, ns)
        await eventually(gone)


async def test_a_sweep_deletes_at_most_100_resources_and_the_rest_wait_for_the_next(harness: Harness, org_name) -> None:
    """operator.md: ``status.pendingReceipts`` holds at most 100, so a sweep deletes only as many
    resources as there is room for; the rest wait, reported in ``problems``, for the next sweep."""
    org = org_name("hundred")
    k8s = harness.client
    ns = await organization_ready(k8s, org)
    store = harness.runtime.store
    for n in range(103):
        await store.put(org, f"scans/s{n:03d}", b"old")
    ahead = [40 * DAY]
    harness.runtime.clock = lambda: datetime.now(UTC) + ahead[0]
    await k8s.create(policy("retention", ns, covers=["scans"]))

    first = (await eventually(lambda: swept(k8s, ns)))["lastSweep"]
    assert first["deleted"] == 100 and first["receipts"] == 100, first
    assert first["problems"] == ["3 resource(s) deferred: too many receipts pending"]
    assert len([m async for m in store.list(org)]) == 3
    ahead[0] += timedelta(minutes=2)  # the next sweep is due (sweepInterval 1m)

    async def all_swept() -> bool:
        return not [m async for m in store.list(org)]

    async def receipted() -> set[str] | None:  # a sweep sends its receipts once the objects are gone
        found = {
            e["resource_id"]
            for e in audit_events(harness.runtime)
            if e["action"] == "retention.deleted" and e["tenant"] == org
        }
        return found if len(found) >= 103 else None

    await eventually(all_swept)
    assert await eventually(receipted) == {f"s{n:03d}" for n in range(103)}
