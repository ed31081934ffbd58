"""Operator robustness: a tenant briefly Degraded, a refused ScanJob's deletion, long names,
RetentionPolicies taking over and refusing impossible specs, handlers whose object is gone or
cannot be read, an Organization's deletion forced (or unforced) since kopf's copy."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
import pytest
from kopf._core.engines import posting

from mesial.common.services import free_port
from mesial.operator.handlers.organization import organization_deleted, organization_updated
from mesial.operator.handlers.retention import policy_deleted, policy_sweep
from mesial.operator.handlers.scanjob import scanjob_sync
from mesial.operator.k8s import K8s
from mesial.operator.metrics import RECONCILES
from mesial.operator.testing import OPERATOR_TOKEN, Harness
from tests.operator.conftest import eventually, organization_ready
from tests.operator.helpers import ORG, POLICY, SCANJOB, audit_events, condition, get, organization, ready, status

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
    await organization_ready(harness.client, name)
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


@pytest.mark.parametrize("force", [True, False], ids=["forced-since", "unforced-since"])
async def test_an_organization_deletion_takes_force_from_the_organization_as_it_is(
    harness: Harness, org_name: Any, force: bool
) -> None:
    """kopf hands the deletion handler, and each retry of it, the body its watch last delivered; a
    ``spec.deletion.force`` set (or unset) since is not in it while that watch lags. The handler
    decides on the Organization as the API server has it: forced since, it stops the running
    ScanJob though kopf's copy says wait; unforced since, it waits though kopf's copy says force."""
    name = org_name("lagforce")
    ns = f"mesial-org-{name}"
    k8s = harness.client
    await k8s.create(organization(name, deletion={"force": not force}))
    await eventually(lambda: ready(k8s, name))
    await k8s.create(scanjob("case", ns))

    async def dispatched() -> bool:  # kopf's finalizer holds the ScanJob, its Job made
        return bool((await sj_status(k8s, ns, "case")).get("jobName"))

    await eventually(dispatched)
    with harness.emulator.watch_held(), posted_events():
        await k8s.delete(*ORG, name)
        copy = kopf.Body(cast(kopf.RawBody, await get(k8s, *ORG, name)))  # the deletion in it, the old force
        await k8s.patch(*ORG, name, {"spec": {"deletion": {"force": force}}})
        # either way it waits: refused, or for the ScanJob to go (its finalizer is kopf's, whose watch is held)
        with pytest.raises(kopf.TemporaryError) as raised:
            await organization_deleted(body=copy, memo=kopf.Memo(runtime=harness.runtime))
        left = await get(k8s, *SCANJOB, "case", ns)
    deleting = condition(await status(k8s, name), "Deleting")
    if force:
        assert left["metadata"].get("deletionTimestamp"), "the forced deletion did not stop the ScanJob"
        assert deleting["reason"] == "JobsStopping" and str(raised.value).startswith("JobsStopping")
        await eventually(lambda: _org_gone(k8s, name), timeout=40)
    else:
        assert not left["metadata"].get("deletionTimestamp"), "the ScanJob was stopped without force"
        assert deleting["reason"] == "DeletionBlocked" and "case" in str(raised.value)


async def _org_gone(k8s: Any, name: str) -> bool:
    return await k8s.get(*ORG, name) is None


# Handlers that decide on their object as the API server has it (handlers.current()), with the kind
# of kopf's copy each is handed below; the ScanJob report timer reads its object the same way, with
# an API configured (test_api_reporting.py).
READING_HANDLERS = {
    policy_sweep: "policy",
    policy_deleted: "policy",
    scanjob_sync: "scanjob",
    organization_deleted: "organization",
    organization_updated: "organization",  # create, resume and the drift timer: the same pass
}


@contextlib.contextmanager
def posted_events() -> Iterator[asyncio.Queue[Any]]:
    """The queue kopf.event() posts to, as inside the operator (a handler called directly)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    settings_token = posting.settings_var.set(kopf.OperatorSettings())
    loop_token = posting.event_queue_loop_var.set(asyncio.get_running_loop())
    queue_token = posting.event_queue_var.set(queue)
    try:
        yield queue
    finally:
        posting.event_queue_var.reset(queue_token)
        posting.event_queue_loop_var.reset(loop_token)
        posting.settings_var.reset(settings_token)


def stale_copies(ns: str) -> dict[str, kopf.Body]:
    """kopf's copies of a RetentionPolicy being deleted that owes a receipt, of a running ScanJob
    and of an Organization being deleted, as its watch last delivered them; none exists on the server."""
    meta = {"namespace": ns, "uid": "0b5e7c1e-0000-4000-8000-000000000001", "finalizers": ["mesial.dev/cleanup"]}
    details = {"objects_deleted": 1, "objects_held": 0, "max_age_days": 30, "policy": "gone"}
    receipt = {"resourceType": "scan", "resourceId": "s1", "time": "2026-01-01T00:00:00Z", "details": details}
    deleting = {"name": "gone", "deletionTimestamp": "2026-01-01T00:00:00Z", **meta}
    policy_copy = {
        **policy("gone", ns),
        "metadata": deleting,
        "status": {"phase": "Active", "pendingReceipts": [receipt]},
    }
    scanjob_copy = {
        **scanjob("gone", ns),
        "metadata": {"name": "gone", **meta},
        "status": {"phase": "Running", "jobName": "scanjob-gone"},
    }
    org_copy = {
        **organization("gone", deletion={"force": True}),
        "metadata": {key: value for key, value in deleting.items() if key != "namespace"},  # cluster-scoped
        "status": {"phase": "Terminating", "deletion": {"startedAt": "2026-01-01T00:00:00Z"}},
    }
    return {
        "policy": kopf.Body(cast(kopf.RawBody, policy_copy)),
        "scanjob": kopf.Body(cast(kopf.RawBody, scanjob_copy)),
        "organization": kopf.Body(cast(kopf.RawBody, org_copy)),
    }


async def test_a_handler_whose_object_is_gone_since_its_event_ends_quietly(harness: Harness, org_name: Any) -> None:
    """kopf hands a handler the body of the event it handles (or, for a timer, the last one its
    watch delivered); the object can be gone by the time the handler reads it (its finalizer
    removed by others, the watch not there yet). Each handler then ends: it neither acts on kopf's
    copy nor fails writing to an object that is gone (kopf would run it again, until its watch says
    the object is gone)."""
    org, ns = await tenant(harness, org_name, "gone")
    copies = stale_copies(ns)
    memo = kopf.Memo(runtime=harness.runtime)
    with posted_events() as queue:
        for handler, kind in READING_HANDLERS.items():
            await handler(body=copies[kind], memo=memo)  # returns: no exception for kopf to retry on
    posted = [queue.get_nowait() for _ in range(queue.qsize())]
    # the receipt kopf's copy shows owed is not sent from that copy: said loudly instead
    assert [(e.type, e.reason) for e in posted] == [("Warning", "ReceiptsUnsent")]
    assert "gone" in posted[0].message
    assert not [e for e in audit_events(harness.runtime) if e["tenant"] == org]
    assert await harness.client.get(*POLICY, "gone", ns) is None
    assert await harness.client.get(*SCANJOB, "gone", ns) is None
    assert await harness.client.get(*ORG, "gone") is None


@pytest.mark.parametrize("handler", list(READING_HANDLERS), ids=lambda h: h.__name__)
async def test_a_failed_read_of_a_handlers_object_is_a_retry_after_the_delay(harness: Harness, handler: Any) -> None:
    """One rule for every handler reading its object: a failed read (the API server unreachable
    here) is kopf's TemporaryError with the configured delay, not an unexpected error."""
    unreachable = K8s.for_server(f"http://127.0.0.1:{free_port()}", OPERATOR_TOKEN)
    runtime = dataclasses.replace(harness.runtime, k8s=unreachable)
    body = stale_copies("mesial-org-unread")[READING_HANDLERS[handler]]
    try:
        with pytest.raises(kopf.TemporaryError) as raised:
            await handler(body=body, memo=kopf.Memo(runtime=runtime))
    finally:
        await unreachable.close()
    assert raised.value.delay == harness.runtime.settings.operator.retry_delay_s
    assert "Unreachable" in str(raised.value)
