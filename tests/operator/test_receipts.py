"""What the operator owes the world is confirmed by the world, never by its own status.

Receipts: a ``retention.deleted`` receipt whose send fails is kept in the RetentionPolicy's status
and sent again until the collector takes it (201, or 200: it holds it already); one the API
refuses for good (a 409: the chain holds a different one; a 404: an upload's orphaned object, a
scan the organization never had; a 400 or 422) is a Warning Event and a metric, not retried
forever, and does not hold back the receipts after it; an intent a crash left is resolved from
the store. An Organization's ``status.deletion.receiptWritten`` is a record
for people: a hand-written ``true`` does not keep the ``organization.deleted`` receipt from being
sent. Status as proof elsewhere: a terminal ScanJob phase over a running Job does not let
retention delete it, and an Organization's ``Ready`` does not admit a ScanJob into a namespace
without its default-deny NetworkPolicy and quota."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from mesial.common.audit import AuditEvent, AuditSink
from mesial.common.audit_sinks import JsonlAuditSink
from mesial.common.errors import ServiceError
from mesial.common.service_http import HttpRefused
from mesial.operator.metrics import IN_FLIGHT, RECEIPTS, RECONCILES
from mesial.operator.sync.retention import deliver
from mesial.operator.sync.scanjob import TenantNotReady, tenant_of
from mesial.operator.testing import Harness
from tests.operator.conftest import eventually, organization_ready
from tests.operator.helpers import ORG, POLICY, SCANJOB, audit_events, events
from tests.operator.test_retention import policy, pstatus, swept
from tests.operator.test_scanjob import JOB, scanjob, sj_status

DAY = timedelta(days=1)


def api_error(code: str, message: str, request_id: str = "5f1e0c2a9b7d4e6f8a0b1c2d") -> str:
    """The API's error body (api/errors.py ``error_response``)."""
    return json.dumps({"error": {"code": code, "message": message, "request_id": request_id}}, separators=(",", ":"))


# The API's answers to a retention receipt (api/services/ingest.py), as its error bodies.
NO_SUCH_SCAN = api_error("not_found", "no such scan in this organization")
OTHER_RECEIPT = api_error(
    "conflict", "the chain already holds a different retention.deleted receipt for scan s1 (sequence 7)"
)
OBJECTS_LEFT = api_error("conflict", "the scan's objects still exist: a deletion receipt is refused")
# ... and to an organization's deletion receipt
OTHER_ORG_RECEIPT = api_error(
    "conflict", "the chain already holds a different organization.deleted receipt for organization u1 (sequence 9)"
)
KEY_LEFT = api_error("conflict", "the organization's key still exists: a deletion receipt is refused")


class FlakySink:
    """Refuses the first ``fail`` events of ``action`` (``code``: an HTTP answer with the body
    ``detail``, else no answer at all)."""

    def __init__(
        self, inner: AuditSink, action: str, fail: int, code: int | None = None, detail: str = "refused"
    ) -> None:
        self.inner, self.action, self.fail, self.code, self.detail = inner, action, fail, code, detail
        self.attempts: list[AuditEvent] = []

    def read(self) -> list[dict[str, Any]]:
        assert isinstance(self.inner, JsonlAuditSink)
        return self.inner.read()

    async def append(self, event: AuditEvent) -> None:
        if event.action == self.action:
            self.attempts.append(event)
            if len(self.attempts) <= self.fail:
                if self.code is not None:
                    raise HttpRefused("audit collector", self.code, self.detail)
                raise ServiceError("audit collector unreachable: TimeoutError")
        await self.inner.append(event)


class RefusingSink:
    """Refuses the ``retention.deleted`` receipts of the scans ``refused`` while ``refusing`` (with
    the HTTP answer ``code`` and body ``detail``, or no answer at all if ``code`` is None); takes
    the rest. ``attempts``: the scan ids of every send, in order."""

    def __init__(self, inner: Any, refused: set[str], code: int | None, detail: str = "") -> None:
        self.inner, self.refused, self.code, self.detail = inner, refused, code, detail
        self.refusing = True
        self.attempts: list[str] = []

    def read(self) -> list[dict[str, Any]]:
        return [e for e in self.inner.read() if e["action"] == "retention.deleted"]

    async def append(self, event: AuditEvent) -> None:
        if event.action == "retention.deleted":
            self.attempts.append(event.resource_id)
            if self.refusing and event.resource_id in self.refused:
                if self.code is None:
                    raise ServiceError("audit collector unreachable: TimeoutError")
                raise HttpRefused("audit collector", self.code, self.detail)
        await self.inner.append(event)


async def _tenant_with_old_scan(harness: Harness, org: str, sink: Any, scans: tuple[str, ...] = ("s1",)) -> str:
    """Receipts go to ``sink``; a Ready tenant with 40-day-old scans (``s1``) and a RetentionPolicy
    sweeping hourly: a receipt is sent again on the next timer ticks, not at the next sweep. Returns
    the tenant namespace."""
    harness.runtime.audit = sink
    ns = await organization_ready(harness.client, org)
    for scan in scans:
        await harness.runtime.store.put(org, f"scans/{scan}", b"old")
    harness.runtime.clock = lambda: datetime.now(UTC) + 40 * DAY
    await harness.client.create(policy("retention", ns, sweepInterval="1h"))
    return ns


async def test_a_retention_receipt_that_failed_is_kept_and_sent_again(harness: Harness, org_name) -> None:
    org = org_name("lost")
    sink = FlakySink(harness.runtime.audit, "retention.deleted", fail=2)
    ns = await _tenant_with_old_scan(harness, org, sink)

    def receipts() -> list[dict[str, Any]]:
        return [e for e in sink.read() if e["action"] == "retention.deleted" and e["tenant"] == org]

    async def delivered() -> list[dict[str, Any]] | None:
        return receipts() or None

    (receipt,) = await eventually(delivered)
    assert not await harness.runtime.store.exists(org, "scans/s1")
    assert (receipt["resource_type"], receipt["resource_id"]) == ("scan", "s1")
    assert receipt["details"]["objects_deleted"] == 1
    # sent three times, the same receipt each time (the collector knows a receipt sent again by its details)
    assert len(sink.attempts) == 3
    assert len({(e.time, tuple(sorted(e.details.items()))) for e in sink.attempts}) == 1

    async def cleared() -> dict[str, Any] | None:
        st = await pstatus(harness.client, ns, "retention")
        return st if st.get("lastSweep") and not st.get("pendingReceipts") else None

    await eventually(cleared)
    assert len(receipts()) == 1


async def test_a_pending_receipt_is_in_status_while_the_collector_is_down(harness: Harness, org_name) -> None:
    org = org_name("down")
    sink = FlakySink(harness.runtime.audit, "retention.deleted", fail=10**6)
    ns = await _tenant_with_old_scan(harness, org, sink)

    async def pending() -> list[dict[str, Any]] | None:  # sent twice at least, still pending
        entries = (await pstatus(harness.client, ns, "retention")).get("pendingReceipts")
        return entries if entries and len(sink.attempts) >= 2 and "details" in entries[0] else None

    (entry,) = await eventually(pending)
    assert (entry["resourceType"], entry["resourceId"]) == ("scan", "s1")
    assert entry["details"]["objects_deleted"] == 1 and entry["attempts"] >= 1
    assert not await harness.runtime.store.exists(org, "scans/s1")
    assert not [e for e in sink.read() if e["action"] == "retention.deleted"]
    # the collector comes back: the receipt kept in status is the one delivered
    sink.fail = 0
    harness.runtime.audit = sink

    async def delivered() -> list[dict[str, Any]] | None:
        return [e for e in sink.read() if e["action"] == "retention.deleted"] or None

    (receipt,) = await eventually(delivered)
    assert receipt["details"] == entry["details"] and receipt["time"] == entry["time"]


async def test_a_conflicting_receipt_is_a_warning_not_retried_forever(harness: Harness, org_name) -> None:
    org = org_name("clash")
    before = RECEIPTS.labels("retention", "conflict")._value.get()
    sink = FlakySink(harness.runtime.audit, "retention.deleted", fail=10**6, code=409, detail=OTHER_RECEIPT)
    ns = await _tenant_with_old_scan(harness, org, sink)

    async def warned() -> list[dict[str, Any]] | None:
        found = [e for e in await events(harness.client, "retention") if e.get("reason") == "ReceiptConflict"]
        return found or None

    (event,) = await eventually(warned)
    assert event["type"] == "Warning" and "scan s1" in event["message"]
    st = await pstatus(harness.client, ns, "retention")
    assert not st.get("pendingReceipts")
    assert RECEIPTS.labels("retention", "conflict")._value.get() == before + 1
    # three more ticks of the sweep timer (each counted): the receipt is not sent again
    ticks = RECONCILES.labels("retentionpolicies", "sweep", "success")
    seen = ticks._value.get()

    async def three_more_ticks() -> bool:
        return bool(ticks._value.get() >= seen + 3)

    await eventually(three_more_ticks)
    assert len(sink.attempts) == 1


# -- receipts the API refuses: for good (dropped, the rest go on) or for now (kept, the rest wait) --

ORPHAN = "a0orphan"  # an upload's object with no row (its event and its cleanup failed); before s1


def _receipt(scan: str) -> dict[str, Any]:
    details = {"objects_deleted": 1, "objects_held": 0, "max_age_days": 30, "policy": "retention"}
    return {"resourceType": "scan", "resourceId": scan, "time": "2026-12-01T00:00:00Z", "details": details}


class _Taken:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def append(self, event: AuditEvent) -> None:
        self.events.append(event)


@pytest.mark.parametrize(
    ("code", "detail", "said"),
    [
        (404, NO_SUCH_SCAN, "404 not_found: no such scan in this organization"),
        (422, api_error("validation_failed", "resource id is not a key of the layout"), "422 validation_failed"),
        (400, api_error("bad_request", "bad request"), "400 bad_request: bad request"),
        # the body cut at its first 500 bytes (common/service_http.py): still the API's word
        (422, api_error("validation_failed", "x" * 600)[:500], "422 validation_failed: xxx"),
    ],
    ids=["404-no-such-scan", "422", "400", "422-cut-short"],
)
async def test_a_receipt_refused_for_good_is_dropped_and_the_next_is_delivered(
    code: int, detail: str, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression (docs/security.md, "Open"): a 404 for an orphan's receipt stopped every round at
    it, so the receipts after it were never delivered and the list filled up."""
    taken = _Taken()
    sink = RefusingSink(taken, {ORPHAN}, code, detail)
    pending = [_receipt(ORPHAN), _receipt("s1")]
    before = RECEIPTS.labels("retention", "refused")._value.get()
    with caplog.at_level(logging.WARNING, logger="mesial.operator"):
        delivery = await deliver(SimpleNamespace(audit=sink), "org", pending)  # type: ignore[arg-type]
    assert pending == [] and delivery.sent == 1 and not delivery.failure
    assert [e.resource_id for e in taken.events] == ["s1"] and sink.attempts == [ORPHAN, "s1"]
    (message,) = delivery.refused
    assert f"scan {ORPHAN}" in message and said in message
    assert ("request 5f1e0c2a9b7d4e6f8a0b1c2d" in message) != (len(detail) == 500)  # cut off with the rest
    assert RECEIPTS.labels("retention", "refused")._value.get() == before + 1
    assert [r.getMessage() for r in caplog.records if r.name == "mesial.operator.retention"] == [
        f"organization org: {message}"
    ]


async def test_a_receipt_the_chain_holds_another_of_is_dropped_and_the_next_is_delivered() -> None:
    taken = _Taken()
    sink = RefusingSink(taken, {ORPHAN}, 409, OTHER_RECEIPT)
    pending = [_receipt(ORPHAN), _receipt("s1")]
    delivery = await deliver(SimpleNamespace(audit=sink), "org", pending)  # type: ignore[arg-type]
    assert pending == [] and [e.resource_id for e in taken.events] == ["s1"]
    assert delivery.conflicts == [f"scan {ORPHAN}"] and not delivery.refused and not delivery.failure


@pytest.mark.parametrize(
    ("code", "detail"),
    [
        (409, OBJECTS_LEFT),  # the world may yet agree: the store's listing lags, a deletion failed
        (503, api_error("unavailable", "the object store is unavailable; retry later")),
        (503, "<html>503 Service Temporarily Unavailable</html>"),
        (404, "404 page not found"),  # not the API's body: a proxy, a wrong URL
        (403, api_error("forbidden", "service job writes no audit events")),  # a key being fixed
        (401, api_error("unauthenticated", "unauthenticated")),
        (408, api_error("bad_request", "request timeout")),
        (429, api_error("rate_limited", "too many requests")),
        (None, ""),  # no answer at all
    ],
    ids=["409-objects-left", "503", "503-proxy", "404-proxy", "403", "401", "408", "429", "no-answer"],
)
async def test_a_receipt_refused_for_now_is_kept_and_holds_back_the_rest(code: int | None, detail: str) -> None:
    taken = _Taken()
    sink = RefusingSink(taken, {ORPHAN}, code, detail)
    pending = [_receipt(ORPHAN), _receipt("s1")]
    delivery = await deliver(SimpleNamespace(audit=sink), "org", pending)  # type: ignore[arg-type]
    assert [e["resourceId"] for e in pending] == [ORPHAN, "s1"] and pending[0]["attempts"] == 1
    assert sink.attempts == [ORPHAN] and taken.events == []  # the round stopped at it, in order
    assert delivery.sent == 0 and not delivery.conflicts
    assert f"scan {ORPHAN} not delivered" in delivery.failure
    # the API takes it later: both go, in order
    sink.refusing = False
    delivery = await deliver(SimpleNamespace(audit=sink), "org", pending)  # type: ignore[arg-type]
    assert pending == [] and [e.resource_id for e in taken.events] == [ORPHAN, "s1"]


async def test_an_orphans_refused_receipt_leaves_the_policy_with_a_warning_and_the_others_go(
    harness: Harness, org_name
) -> None:
    """Regression (docs/security.md, "Open"): the sweep deletes an orphaned upload object and a
    scan; the API refuses the orphan's receipt (404, no such scan). Before, it stayed in
    ``pendingReceipts`` for good and s1's receipt behind it was never delivered."""
    org = org_name("orphan")
    sink = RefusingSink(harness.runtime.audit, {ORPHAN}, 404, NO_SUCH_SCAN)
    ns = await _tenant_with_old_scan(harness, org, sink, scans=(ORPHAN, "s1"))

    async def delivered() -> list[dict[str, Any]] | None:
        return [e for e in sink.read() if e["tenant"] == org] or None

    (receipt,) = await eventually(delivered)
    assert receipt["resource_id"] == "s1"

    async def warned() -> list[dict[str, Any]] | None:
        found = [e for e in await events(harness.client, "retention") if e.get("reason") == "ReceiptRefused"]
        return found or None

    (event,) = await eventually(warned)
    assert event["type"] == "Warning" and event["involvedObject"]["namespace"] == ns
    assert f"scan {ORPHAN}" in event["message"] and "no such scan in this organization" in event["message"]
    assert "request 5f1e0c2a9b7d4e6f8a0b1c2d" in event["message"]

    async def cleared() -> dict[str, Any] | None:
        st = await pstatus(harness.client, ns, "retention")
        return st if st.get("lastSweep") and not st.get("pendingReceipts") else None

    await eventually(cleared)
    assert not await harness.runtime.store.exists(org, f"scans/{ORPHAN}")
    # three more ticks: the refused receipt is not sent again
    ticks = RECONCILES.labels("retentionpolicies", "sweep", "success")
    seen = ticks._value.get()

    async def three_more_ticks() -> bool:
        return bool(ticks._value.get() >= seen + 3)

    await eventually(three_more_ticks)
    assert sink.attempts.count(ORPHAN) == 1


@pytest.mark.parametrize(("code", "detail"), [(409, OBJECTS_LEFT), (503, api_error("unavailable", "retry later"))])
async def test_a_receipt_refused_for_now_stays_pending_and_the_next_waits_in_the_policy(
    harness: Harness, org_name, code: int, detail: str
) -> None:
    org = org_name("wait")
    sink = RefusingSink(harness.runtime.audit, {ORPHAN}, code, detail)
    ns = await _tenant_with_old_scan(harness, org, sink, scans=(ORPHAN, "s1"))

    async def held_back() -> list[dict[str, Any]] | None:  # tried on three ticks at least, both kept
        entries = (await pstatus(harness.client, ns, "retention")).get("pendingReceipts") or []
        ready_ = sink.attempts.count(ORPHAN) >= 3 and all("details" in e for e in entries)
        return entries if ready_ else None

    entries = await eventually(held_back)
    assert [e["resourceId"] for e in entries] == [ORPHAN, "s1"] and entries[0]["attempts"] >= 1
    assert "s1" not in sink.attempts and sink.read() == []
    reasons = {e.get("reason") for e in await events(harness.client, "retention")}
    assert "ReceiptPending" in reasons and not reasons & {"ReceiptRefused", "ReceiptConflict"}
    sink.refusing = False  # the API takes it now: both are delivered, in order

    async def delivered() -> list[dict[str, Any]] | None:
        found = sink.read()
        return found if len(found) == 2 else None

    assert [e["resource_id"] for e in await eventually(delivered)] == [ORPHAN, "s1"]


async def test_a_hand_written_receipt_written_does_not_suppress_the_receipt(harness: Harness, org_name) -> None:
    org = org_name("forged")
    k8s = harness.client
    await organization_ready(k8s, org)
    # anyone who can write Organization status claims the receipt is already written
    await k8s.patch(*ORG, org, {"status": {"deletion": {"receiptWritten": True}}}, status=True)
    await k8s.delete(*ORG, org)

    async def gone() -> bool:
        return await k8s.get(*ORG, org) is None

    await eventually(gone, timeout=30)
    receipts = [
        e for e in audit_events(harness.runtime) if e["action"] == "organization.deleted" and e["tenant"] == org
    ]
    assert len(receipts) == 1 and receipts[0]["details"]["key_shredded"] is True


async def test_an_intent_left_by_a_crash_becomes_the_receipt(harness: Harness, org_name) -> None:
    org = org_name("crash")
    k8s = harness.client
    ns = await organization_ready(k8s, org)
    harness.runtime.clock = lambda: datetime.now(UTC) + 40 * DAY
    await k8s.create(policy("retention", ns, sweepInterval="1h"))

    await eventually(lambda: swept(k8s, ns))  # admitted and swept once (nothing to delete)
    # The next sweep wrote its intents and deleted scan s1's 3 objects and 2 of scan s2's 3, then
    # the operator died before a receipt was made. Status is written while no operator runs (one
    # still running could be writing its own), and the operator that starts finds the intents.
    await harness.stop_operator()
    k8s = harness.client
    intents = [{"resourceType": "scan", "resourceId": "s1", "planned": 3},
               {"resourceType": "scan", "resourceId": "s2", "planned": 3}]  # fmt: skip
    await harness.runtime.store.put(org, "scans/s2", b"one left")
    await k8s.patch(*POLICY, "retention", {"status": {"pendingReceipts": intents,
        "nextSweepTime": "2000-01-01T00:00:00Z"}}, ns, status=True)  # fmt: skip
    await harness.start_operator(harness.runtime.settings)

    async def settled() -> dict[str, Any] | None:  # the sweep after the crash has written its status
        st = await pstatus(k8s, ns, "retention")
        return st if st.get("nextSweepTime") != "2000-01-01T00:00:00Z" and not st.get("pendingReceipts") else None

    await eventually(settled)
    receipts = [e for e in audit_events(harness.runtime) if e["action"] == "retention.deleted"]
    found = {e["resource_id"]: e for e in receipts}
    assert len(receipts) == 2 and set(found) == {"s1", "s2"}  # one receipt each
    assert found["s1"]["details"]["objects_deleted"] == 3  # all it planned is gone
    assert found["s2"]["details"]["objects_deleted"] == 3  # 2 gone before, the one left now
    assert not await harness.runtime.store.exists(org, "scans/s2")


async def test_ticks_on_a_lagging_watch_neither_sweep_again_nor_drop_a_receipt_owed(harness: Harness, org_name) -> None:
    """kopf hands a timer the body its watch last delivered; a lagging watch leaves it behind the
    status the operator itself wrote. A tick must decide on the status as it is."""
    org = org_name("lag")
    k8s = harness.client
    sink = FlakySink(harness.runtime.audit, "retention.deleted", fail=10**6)
    harness.runtime.audit = sink
    ns = await organization_ready(k8s, org)
    await harness.runtime.store.put(org, "scans/s1", b"old once the clock moves")
    await k8s.create(policy("retention", ns, sweepInterval="1h"))

    assert (await eventually(lambda: swept(k8s, ns)))["lastSweep"]["deleted"] == 0
    ticks = RECONCILES.labels("retentionpolicies", "sweep", "success")

    async def owed() -> list[dict[str, Any]] | None:  # the due sweep deleted s1; its receipt is owed
        entries = (await pstatus(k8s, ns, "retention")).get("pendingReceipts")
        return entries if entries and "details" in entries[0] else None

    with harness.emulator.watch_held():
        harness.runtime.clock = lambda: datetime.now(UTC) + 40 * DAY  # a sweep is due, s1 is old
        await eventually(owed)
        seen = ticks._value.get()

        async def three_more_ticks() -> bool:  # on a body from before that sweep
            return bool(ticks._value.get() >= seen + 3)

        await eventually(three_more_ticks)
    assert not await harness.runtime.store.exists(org, "scans/s1")
    st = await pstatus(k8s, ns, "retention")
    assert st["totalDeleted"] == 1 and [e["resourceId"] for e in st.get("pendingReceipts") or []] == ["s1"]
    sink.fail = 0  # the collector is back: the receipt owed is delivered

    async def delivered() -> list[dict[str, Any]] | None:
        return [e for e in sink.read() if e["action"] == "retention.deleted"] or None

    (receipt,) = await eventually(delivered)
    assert receipt["resource_id"] == "s1" and receipt["details"]["objects_deleted"] == 1


async def created_and_deleted(harness: Harness, org: str, sink: FlakySink) -> None:
    """Audit through ``sink``; an Organization created, Ready, deleted and gone."""
    k8s = harness.client
    harness.runtime.audit = sink
    await organization_ready(k8s, org)
    await k8s.delete(*ORG, org)

    async def gone() -> bool:
        return await k8s.get(*ORG, org) is None

    await eventually(gone, timeout=30)


async def test_an_organization_receipt_is_sent_until_taken(harness: Harness, org_name) -> None:
    org = org_name("retry")
    sink = FlakySink(harness.runtime.audit, "organization.deleted", fail=2)
    await created_and_deleted(harness, org, sink)
    (receipt,) = [e for e in sink.read() if e["action"] == "organization.deleted" and e["tenant"] == org]
    # three sends, one receipt: the same details each time (the collector would say 409 otherwise)
    assert len(sink.attempts) == 3 and len({tuple(sorted(e.details.items())) for e in sink.attempts}) == 1
    assert receipt["details"] == sink.attempts[0].details


async def test_an_organization_receipt_conflict_is_a_warning(harness: Harness, org_name) -> None:
    org = org_name("oclash")
    k8s = harness.client
    before = RECEIPTS.labels("organization", "conflict")._value.get()
    sink = FlakySink(harness.runtime.audit, "organization.deleted", fail=10**6, code=409, detail=OTHER_ORG_RECEIPT)
    await created_and_deleted(harness, org, sink)
    assert len(sink.attempts) == 1
    assert RECEIPTS.labels("organization", "conflict")._value.get() == before + 1
    assert [e["type"] for e in await events(k8s, org) if e.get("reason") == "ReceiptConflict"] == ["Warning"]


async def test_an_organization_receipt_the_world_does_not_yet_bear_out_is_sent_again(
    harness: Harness, org_name
) -> None:
    # the API's other 409 for an organization's receipt: its Vault still shows the key (a replica behind,
    # another Vault): not a receipt the chain holds, so the finalizer waits and the receipt is sent again
    org = org_name("okeyleft")
    sink = FlakySink(harness.runtime.audit, "organization.deleted", fail=2, code=409, detail=KEY_LEFT)
    await created_and_deleted(harness, org, sink)
    (receipt,) = [e for e in sink.read() if e["action"] == "organization.deleted" and e["tenant"] == org]
    assert len(sink.attempts) == 3 and receipt["details"] == sink.attempts[0].details


async def test_retention_does_not_delete_a_scanjob_whose_job_runs_on_a_hand_set_phase(
    harness: Harness, org_name
) -> None:
    org = org_name("sjrun")
    k8s = harness.client
    ns = await organization_ready(k8s, org)
    for name in ("running", "done"):
        await k8s.create(scanjob(name, ns))

    async def jobs() -> bool:
        return all([await k8s.get(*JOB, f"scanjob-{n}", ns) is not None for n in ("running", "done")])

    await eventually(jobs)
    await k8s.patch(*JOB, "scanjob-running", {"status": {"active": 1, "startTime": "2026-01-01T00:00:00Z"}}, ns)
    await k8s.patch(*JOB, "scanjob-done", {"status": {"succeeded": 1, "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T00:01:00Z", "conditions": [{"type": "Complete", "status": "True"}]}}, ns)  # fmt: skip

    async def phases() -> bool:
        got = [(await sj_status(k8s, ns, n)).get("phase") for n in ("running", "done")]
        return got == ["Running", "Succeeded"]

    await eventually(phases)
    # status says the running one is over, and long ago: its Job says otherwise
    await k8s.patch(*SCANJOB, "running", {"status": {"phase": "Succeeded",
        "completionTime": "2020-01-01T00:00:00Z"}}, ns, status=True)  # fmt: skip
    harness.runtime.clock = lambda: datetime.now(UTC) + 40 * DAY
    await k8s.create(policy("retention", ns, covers=["scanjobs"], sweepInterval="1h"))

    counts = (await eventually(lambda: swept(k8s, ns)))["lastSweep"]
    assert counts["scanJobsDeleted"] == 1  # the finished one
    assert await k8s.get(*SCANJOB, "running", ns) is not None
    assert any("scanjob running" in p for p in counts["problems"])


async def test_a_ready_phase_without_the_tenants_boundary_does_not_admit_a_scanjob(
    harness: Harness, org_name, operator_settings
) -> None:
    org = org_name("nobound")
    ns = await organization_ready(harness.client, org)
    await harness.stop_operator()  # nothing restores the drift below while the check runs
    k8s = harness.client
    assert (await tenant_of(k8s, ns, harness.runtime.settings))[0] == org
    # status still says Ready (left over, or written by hand): the namespace is open all the same
    await k8s.delete("v1", "ResourceQuota", "mesial-quota", ns)
    with pytest.raises(TenantNotReady, match="mesial-quota"):
        await tenant_of(k8s, ns, harness.runtime.settings)
    await k8s.delete("networking.k8s.io/v1", "NetworkPolicy", "mesial-default-deny", ns)
    with pytest.raises(TenantNotReady, match="mesial-default-deny"):
        await tenant_of(k8s, ns, harness.runtime.settings)


async def test_a_deleted_policy_sends_what_it_owes_first(harness: Harness, org_name) -> None:
    org = org_name("owes")
    sink = FlakySink(harness.runtime.audit, "retention.deleted", fail=10**6)
    ns = await _tenant_with_old_scan(harness, org, sink)

    async def owed() -> list[dict[str, Any]] | None:
        entries = (await pstatus(harness.client, ns, "retention")).get("pendingReceipts")
        return entries if entries and "details" in entries[0] else None

    await eventually(owed)

    await harness.client.delete(*POLICY, "retention", ns)
    tries = len(sink.attempts)

    async def tried_again() -> bool:
        return len(sink.attempts) >= tries + 2

    await eventually(tried_again)
    assert await harness.client.get(*POLICY, "retention", ns) is not None  # held while the receipt is owed
    sink.fail = 0

    async def gone() -> bool:
        return await harness.client.get(*POLICY, "retention", ns) is None

    await eventually(gone)
    (receipt,) = [e for e in sink.read() if e["action"] == "retention.deleted"]
    assert receipt["resource_id"] == "s1"


async def test_a_policy_deleted_mid_sweep_keeps_the_receipt_owed(
    harness: Harness, org_name, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kopf runs a deletion handler while a timer tick of the object is still running. A policy
    deleted while its sweep has written its intent and not yet deleted the scan: the deletion handler
    must not settle that intent from a store the sweep is still changing, nor write its status over
    the receipt the sweep comes to owe. The receipt is sent before the policy goes."""
    org = org_name("midsweep")
    k8s = harness.client
    sink = FlakySink(harness.runtime.audit, "retention.deleted", fail=10**6)  # the collector is down
    harness.runtime.audit = sink
    ns = await organization_ready(k8s, org)
    store = harness.runtime.store
    await store.put(org, "scans/s1", b"old once the clock moves")
    await k8s.create(policy("retention", ns, sweepInterval="1h"))

    assert (await eventually(lambda: swept(k8s, ns)))["lastSweep"]["deleted"] == 0
    # The store is slow: the due sweep waits in its deletion of s1 (its intent written), and a
    # listing made once the policy is deleted waits (with what it found) until the test goes on.
    deleting, go_on = asyncio.Event(), asyncio.Event()
    listed, list_on, policy_deleted = asyncio.Event(), asyncio.Event(), asyncio.Event()
    delete, list_objects = store.delete, store.list

    async def slow_delete(tenant: str, key: str) -> None:
        deleting.set()
        await go_on.wait()
        await delete(tenant, key)

    def slow_list(tenant: str, prefix: str = "") -> Any:
        async def found() -> Any:
            items = [meta async for meta in list_objects(tenant, prefix)]
            if policy_deleted.is_set() and not listed.is_set():
                listed.set()
                await list_on.wait()
            for meta in items:
                yield meta

        return found()

    monkeypatch.setattr(store, "delete", slow_delete)
    monkeypatch.setattr(store, "list", slow_list)
    harness.runtime.clock = lambda: datetime.now(UTC) + 40 * DAY  # a sweep is due, s1 is old
    await asyncio.wait_for(deleting.wait(), 20)
    intents = (await pstatus(k8s, ns, "retention")).get("pendingReceipts") or []
    assert [(e["resourceId"], "details" in e) for e in intents] == [("s1", False)]
    policy_deleted.set()
    await k8s.delete(*POLICY, "retention", ns)

    async def deletion_started() -> bool:  # kopf has started its deletion handler
        return listed.is_set() or IN_FLIGHT.labels("retentionpolicies")._value.get() >= 2

    await eventually(deletion_started)
    with contextlib.suppress(TimeoutError):  # a handler that does not wait for the sweep lists the store now
        await asyncio.wait_for(listed.wait(), 3)
    go_on.set()  # the sweep deletes s1; its receipt is owed (the collector is down)

    async def owed() -> list[dict[str, Any]] | None:  # the sweep's own status, written at its end
        st = await pstatus(k8s, ns, "retention")
        entries = st.get("pendingReceipts") or []
        return entries if st.get("totalDeleted") == 1 and entries and "details" in entries[0] else None

    await eventually(owed)
    assert not await store.exists(org, "scans/s1")
    list_on.set()
    sink.fail = 0  # the collector is back

    async def gone() -> bool:
        return await k8s.get(*POLICY, "retention", ns) is None

    await eventually(gone)
    receipts = [e for e in sink.read() if e["action"] == "retention.deleted" and e["tenant"] == org]
    assert [(e["resource_id"], e["details"]["objects_deleted"]) for e in receipts] == [("s1", 1)]


async def test_no_sweep_writes_an_intent_before_kopfs_finalizer_holds_the_policy(harness: Harness, org_name) -> None:
    """An intent is written only to a policy that cannot go without its deletion handler: a tick
    finding the policy without kopf's finalizer (removed by hand here, kopf's watch lagging so it
    is not put back) sweeps nothing; once kopf has put it back, the sweep runs."""
    org = org_name("nofin")
    k8s = harness.client
    ns = await organization_ready(k8s, org)
    store = harness.runtime.store
    await store.put(org, "scans/s1", b"old once the clock moves")
    await k8s.create(policy("retention", ns, sweepInterval="1h"))

    assert (await eventually(lambda: swept(k8s, ns)))["lastSweep"]["deleted"] == 0
    finalizer = harness.runtime.settings.operator.finalizer
    assert (await k8s.get(*POLICY, "retention", ns) or {})["metadata"]["finalizers"] == [finalizer]
    ticks = RECONCILES.labels("retentionpolicies", "sweep", "success")
    with harness.emulator.watch_held():
        await k8s.patch(*POLICY, "retention", {"metadata": {"finalizers": None}}, ns)
        harness.runtime.clock = lambda: datetime.now(UTC) + 40 * DAY  # a sweep is due, s1 is old
        seen = ticks._value.get()

        async def three_more_ticks() -> bool:
            return bool(ticks._value.get() >= seen + 3)

        await eventually(three_more_ticks)
        assert await store.exists(org, "scans/s1")
        assert not (await pstatus(k8s, ns, "retention")).get("pendingReceipts")

    def receipted() -> list[str]:
        events = audit_events(harness.runtime)
        return [e["resource_id"] for e in events if e["action"] == "retention.deleted" and e["tenant"] == org]

    # The sweep deletes, then sends the receipt: wait for both (CI under load saw the gap between).
    async def finalized_and_swept() -> bool:
        obj = await k8s.get(*POLICY, "retention", ns) or {}
        finalized = finalizer in obj["metadata"].get("finalizers", [])
        return finalized and not await store.exists(org, "scans/s1") and bool(receipted())

    await eventually(finalized_and_swept)
    assert receipted() == ["s1"]
