"""Operator robustness: a tenant briefly Degraded, a refused ScanJob's deletion, long names,
RetentionPolicies taking over and refusing impossible specs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from mesial.operator.metrics import RECONCILES
from mesial.operator.testing import Harness
from tests.operator.conftest import eventually
from tests.operator.helpers import ORG, POLICY, SCANJOB, organization, ready

JOB = ("batch/v1", "Job")


def scanjob(name: str, ns: str) -> dict[str, Any]:
    return {"apiVersion": "mesial.dev/v1alpha1", "kind": "ScanJob", "metadata": {"name": name, "namespace": ns},
            "spec": {"scans": {"upper": "scan-u", "lower": "scan-l", "bites": ["scan-b"]}}}  # fmt: skip


def policy(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mesial.dev/v1alpha1", "kind": "RetentionPolicy", "metadata": {"name": name, "namespace": ns},
            "spec": {"maxAgeDays": 30, "sweepInterval": "1m", **spec}}  # fmt: skip


async def sj_status(k8s: Any, ns: str, name: str) -> dict[str, Any]:
    obj = await k8s.get(*SCANJOB, name, ns)
    return dict((obj or {}).get("status") or {})


async def p_status(k8s: Any, ns: str, name: str) -> dict[str, Any]:
    obj = await k8s.get(*POLICY, name, ns)
    return dict((obj or {}).get("status") or {})


async def tenant(harness: Harness, org_name: Any, stem: str) -> tuple[str, str]:
    name = org_name(stem)
    await harness.client.create(organization(name))
    await eventually(lambda: ready(harness.client, name))
    return name, f"mesial-org-{name}"


async def test_a_scanjob_waits_while_its_organization_is_degraded(harness: Harness, org_name: Any) -> None:
    org, ns = await tenant(harness, org_name, "degraded")
    k8s = harness.client
    await k8s.patch(*ORG, org, {"status": {"phase": "Degraded"}}, status=True)  # the next drift pass restores it
    await k8s.create(scanjob("case", ns))
    job = await eventually(lambda: k8s.get(*JOB, "scanjob-case", ns))
    assert job is not None
    st = await sj_status(k8s, ns, "case")
    assert st["phase"] != "Failed", st


async def test_deleting_a_refused_scanjob_leaves_an_unrelated_job(harness: Harness) -> None:
    k8s = harness.client
    await k8s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mesial-system"}})
    unrelated = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "scanjob-x", "namespace": "mesial-system"},
                 "spec": {"template": {"spec": {"restartPolicy": "Never",
                                                "containers": [{"name": "x", "image": "ops/tool:1"}]}}}}  # fmt: skip
    await k8s.create(unrelated)
    await k8s.create(scanjob("x", "mesial-system"))

    async def refused() -> bool:
        return (await sj_status(k8s, "mesial-system", "x")).get("reason") == "NotATenantNamespace"

    await eventually(refused)
    await k8s.delete(*SCANJOB, "x", "mesial-system")

    async def deleted() -> bool:
        return await k8s.get(*SCANJOB, "x", "mesial-system") is None

    await eventually(deleted)
    assert await k8s.get(*JOB, "scanjob-x", "mesial-system") is not None


async def test_long_scanjob_names_give_valid_labels(harness: Harness, org_name: Any) -> None:
    _org, ns = await tenant(harness, org_name, "longname")
    k8s = harness.client
    name = "case-" + "a" * 90
    await k8s.create(scanjob(name, ns))

    async def job() -> Any:
        return next(iter(await k8s.list(*JOB, namespace=ns)), None)

    created = await eventually(job)
    for labels in (created["metadata"]["labels"], created["spec"]["template"]["metadata"]["labels"]):
        assert all(len(value) <= 63 for value in labels.values()), labels
    assert len(created["metadata"]["name"]) <= 63


async def test_a_second_policy_takes_over_when_the_first_is_deleted(harness: Harness, org_name: Any) -> None:
    _org, ns = await tenant(harness, org_name, "takeover")
    k8s = harness.client
    await k8s.create(policy("first", ns, sweepInterval="24h"))

    async def phase(name: str, want: str) -> bool:
        return (await p_status(k8s, ns, name)).get("phase") == want

    await eventually(lambda: phase("first", "Active"))
    await k8s.create(policy("second", ns))
    await eventually(lambda: phase("second", "Rejected"))
    await k8s.delete(*POLICY, "first", ns)
    await eventually(lambda: phase("second", "Active"))


async def test_a_policy_with_no_positive_age_is_rejected_and_deletes_nothing(harness: Harness, org_name: Any) -> None:
    org, ns = await tenant(harness, org_name, "zeroage")
    k8s = harness.client
    store = harness.runtime.store
    await store.put(org, "scans/s1", b"fresh scan")
    harness.runtime.clock = lambda: datetime.now(UTC) + timedelta(hours=1)
    for name, days in (("zero", 0), ("negative", -5)):
        await k8s.create(policy(name, ns, maxAgeDays=days))

        async def rejected(name: str = name) -> dict[str, Any] | None:
            st = await p_status(k8s, ns, name)
            return st if st.get("phase") == "Rejected" else None

        st = await eventually(rejected)
        assert st["reason"] == "InvalidSpec" and "maxAgeDays" in st["message"]
        await k8s.delete(*POLICY, name, ns)
    assert await store.exists(org, "scans/s1")


async def test_a_hand_set_next_sweep_far_ahead_does_not_stop_retention(harness: Harness, org_name: Any) -> None:
    """Sibling of finding 4: status.nextSweepTime is a record; a sweep is due at most one interval on."""
    org, ns = await tenant(harness, org_name, "nextsweep")
    k8s = harness.client
    store = harness.runtime.store
    await k8s.create(policy("retention", ns, sweepInterval="1m"))

    async def swept_once() -> dict[str, Any] | None:
        st = await p_status(k8s, ns, "retention")
        return st if st.get("lastSweepTime") else None

    await eventually(swept_once)
    await k8s.patch(*POLICY, "retention", {"status": {"nextSweepTime": "2100-01-01T00:00:00Z"}}, ns, status=True)
    await store.put(org, "scans/s1", b"past its age by the moved clock")
    harness.runtime.clock = lambda: datetime.now(UTC) + timedelta(days=31)

    async def deleted() -> bool:
        return not await store.exists(org, "scans/s1")

    await eventually(deleted)


async def test_a_mirror_tick_on_a_lagging_watch_does_not_undo_a_phase_set_since(
    harness: Harness, org_name: Any
) -> None:
    """kopf hands the mirror timer the body its watch last delivered, behind the ScanJob while the
    watch lags. Its status is mirrored against the ScanJob as it is: a terminal phase set since
    (by hand here) stays, as it does on a watch that keeps up."""
    _, ns = await tenant(harness, org_name, "lagsj")
    k8s = harness.client
    ticks = RECONCILES.labels("scanjobs", "mirror", "success")
    await k8s.create(scanjob("case", ns))

    async def dispatched() -> bool:
        return bool((await sj_status(k8s, ns, "case")).get("jobName"))

    await eventually(dispatched)
    seen = ticks._value.get()

    async def ticked(more: int) -> bool:
        return bool(ticks._value.get() >= seen + more)

    await eventually(lambda: ticked(1))  # kopf's body has the Job's name: the mirror timer runs
    with harness.emulator.watch_held():
        await k8s.patch(*JOB, "scanjob-case", {"status": {"active": 1, "startTime": "2026-01-01T00:00:00Z"}}, ns)

        async def running() -> bool:
            return (await sj_status(k8s, ns, "case")).get("phase") == "Running"

        await eventually(running)
        await k8s.patch(*SCANJOB, "case", {"status": {"phase": "Succeeded"}}, ns, status=True)
        seen = ticks._value.get()
        await eventually(lambda: ticked(3))  # three ticks on a body that says Pending
        assert (await sj_status(k8s, ns, "case"))["phase"] == "Succeeded"
