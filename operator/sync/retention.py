"""RetentionPolicies: one per tenant namespace the operator created, with a checked spec, swept by a
timer when ``sweepInterval`` is due. A Rejected policy is admitted again on each tick, so the
second policy of a namespace takes over once the first is deleted.

Receipts are owed, not hoped for: before a sweep deletes a resource's objects it writes an intent
for it to ``status.pendingReceipts``; once the objects are gone the intent becomes the receipt
(details and time fixed for good, so every send is the same receipt), and it stays there until
the collector takes it (201, or 200: it holds it already). Each tick sends what is pending; a
receipt the API refuses for good (:func:`refusal`: a 409 "the chain holds a different receipt", a
400, 404 or 422 in the API's own error body) is reported and dropped, and the round goes on; any
other failure keeps it and ends the round. An intent a crash
left behind is resolved from the store at the next sweep: what it planned and is gone is receipted.
The list is bounded (:data:`MAX_PENDING`): a sweep deletes only as many resources as there is
room for receipts, the rest wait. A policy being deleted is held (kopf's finalizer) until what it
owes is sent."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mesial.common.audit import AuditEvent, format_time
from mesial.common.contract import classify_key, sanitize_text
from mesial.common.errors import InputError, MesialError
from mesial.common.retention import COVERS, DEFAULT_COVERS, SweepReport, Verdict, decide, sweep_objects
from mesial.common.service_http import HttpRefused
from mesial.common.settings import Settings
from mesial.common.tenancy import tenant_prefix
from mesial.operator.k8s import K8s
from mesial.operator.metrics import RECEIPTS
from mesial.operator.runtime import Runtime
from mesial.operator.sync.conditions import condition, merge_conditions
from mesial.operator.sync.scanjob import scanjob_running
from mesial.operator.sync.tenancy import NotATenantNamespace, tenant_namespace

POLICY = ("mesial.dev/v1alpha1", "RetentionPolicy")
SCANJOB = ("mesial.dev/v1alpha1", "ScanJob")
MAX_AGE_DAYS = 3650
MIN_INTERVAL, MAX_INTERVAL = timedelta(minutes=1), timedelta(hours=168)
# status.pendingReceipts holds at most this many (maxItems in crds/retentionpolicy.yaml)
MAX_PENDING = 100
RESOURCE_TYPES = ("scan", "job", "object")
_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
# The API's answers that name a fault of the receipt itself (api/errors.py): sending it again
# cannot change them. Not 401/403 (a key being fixed: the job reporter retries them too; an
# organization the API does not know is the sink's platform-chain fallback), 408, 429, 5xx.
REFUSED = frozenset({400, 404, 422})
# A 409 about the chain, not the world: it holds a different receipt for that resource (the
# API's words, api/services/ingest.py). Any other 409 ("the scan's objects still exist") may pass later.
_OTHER_RECEIPT = "already holds a different"
# The start of the API's error body, ``{"error": {"code", "message", ..., "request_id"}}``, for a
# body cut at its first 500 bytes (common/service_http.py) that no longer parses.
_API_ERROR_RE = re.compile(r'^\s*\{\s*"error"\s*:\s*\{\s*"code"\s*:\s*"([a-z_]+)"')
_MESSAGE_RE = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)')  # to its end, or the cut
_REQUEST_ID_RE = re.compile(r'"request_id"\s*:\s*"([A-Za-z0-9-]{1,64})"')

log = logging.getLogger("mesial.operator.retention")


def parse_duration(text: str) -> timedelta:
    match = _DURATION_RE.fullmatch(text or "")
    if not match or not any(match.groups()):
        raise ValueError(f"not a duration: {text!r}")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class PolicySpec:
    """A RetentionPolicy's spec, re-checked (the CRD's bounds are not the only gate: the emulator,
    an old CRD or a hand-made object may let anything through)."""

    max_age: timedelta
    covers: tuple[str, ...]
    interval: timedelta

    @classmethod
    def from_spec(cls, spec: Any) -> PolicySpec:
        days = spec.get("maxAgeDays", 90)
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_AGE_DAYS:
            raise InputError(f"maxAgeDays must be a whole number of days from 1 to {MAX_AGE_DAYS}")
        covers = spec.get("covers") or list(DEFAULT_COVERS)
        if not isinstance(covers, list) or not set(covers) <= set(COVERS):
            raise InputError(f"covers must list some of {', '.join(COVERS)}")
        try:
            interval = parse_duration(str(spec.get("sweepInterval", "1h")))
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if not MIN_INTERVAL <= interval <= min(MAX_INTERVAL, timedelta(days=days)):
            raise InputError("sweepInterval must be from 1m to 168h and not longer than maxAgeDays")
        return cls(timedelta(days=days), tuple(covers), interval)


async def admit(k8s: K8s, body: Any, settings: Settings) -> tuple[str | None, dict[str, Any]]:
    """(tenant, status): the tenant if this policy is valid and its namespace's one, else a Rejected status.

    The namespace must be the live tenant namespace the operator created (``sync.tenancy``):
    a tenant label alone names no tenant."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        org = (await tenant_namespace(k8s, namespace, settings)).org
    except NotATenantNamespace as exc:
        return None, _rejected(NotATenantNamespace.reason, str(exc))
    try:
        PolicySpec.from_spec(body.get("spec") or {})
    except InputError as exc:
        return None, _rejected("InvalidSpec", str(exc))
    others = [
        p
        for p in await k8s.list(*POLICY, namespace=namespace)
        if p["metadata"]["name"] != name and not p["metadata"].get("deletionTimestamp")
    ]
    active = [p for p in others if (p.get("status") or {}).get("phase") == "Active"]

    def age_key(policy: Any) -> tuple[str, str]:
        return (str(policy["metadata"].get("creationTimestamp", "")), policy["metadata"]["name"])

    older = [p for p in others if (p.get("status") or {}).get("phase") != "Rejected" and age_key(p) < age_key(body)]
    winner = active[0] if active else (min(older, key=age_key) if older else None)
    if winner is not None:
        other = winner["metadata"]["name"]
        return None, _rejected(
            "DuplicatePolicy", f"namespace {namespace} already has RetentionPolicy {other}; one is allowed"
        )
    return str(org), {"phase": "Active", "reason": "Accepted", "message": ""}


def _rejected(reason: str, message: str) -> dict[str, Any]:
    return {"phase": "Rejected", "reason": reason, "message": message}


def sweep_due(body: Any, now: datetime) -> bool:
    """Whether a sweep is due. ``status.nextSweepTime`` is a record, not a proof: a time further
    ahead than one ``sweepInterval`` (written by hand, or by a clock that jumped) is not waited for."""
    status = body.get("status") or {}
    if status.get("phase") != "Active":
        return False
    next_sweep = status.get("nextSweepTime")
    if not next_sweep:
        return True
    try:
        due = datetime.fromisoformat(str(next_sweep).replace("Z", "+00:00"))
        interval = parse_duration(str((body.get("spec") or {}).get("sweepInterval", "1h")))
    except ValueError:
        return True
    return now >= due or due - now > interval


class _Journal:
    """The sweep's audit sink: keeps its receipts for :func:`deliver` (never fails)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def append(self, event: AuditEvent) -> None:
        self.events.append(event)


def pending_receipts(status: Any) -> list[dict[str, Any]]:
    """``status.pendingReceipts``, well-formed entries only (status is written by others too)."""
    entries = status.get("pendingReceipts") if isinstance(status, dict) else None
    kept: list[dict[str, Any]] = []
    for entry in entries if isinstance(entries, list) else []:
        if (
            isinstance(entry, dict)
            and entry.get("resourceType") in RESOURCE_TYPES
            and _ID_RE.fullmatch(str(entry.get("resourceId", "")))
            and isinstance(entry.get("details", {}), dict)
        ):
            kept.append(dict(entry))
    return kept[:MAX_PENDING]


def _intent(pending: list[dict[str, Any]], resource_type: str, resource_id: str) -> dict[str, Any] | None:
    for entry in pending:
        if "details" not in entry and (entry["resourceType"], entry["resourceId"]) == (resource_type, resource_id):
            return entry
    return None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass
class Delivery:
    """What one round of sends did: receipts taken, conflicts and refusals (dropped, each a
    sentence for an Event), the failure that stopped it."""

    sent: int = 0
    conflicts: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    failure: str = ""

    def __add__(self, later: Delivery) -> Delivery:
        return Delivery(
            self.sent + later.sent, self.conflicts + later.conflicts, self.refused + later.refused, later.failure
        )


@dataclass(frozen=True)
class Refusal:
    """The API's own error answer: its status, ``error.code``, ``error.message`` and request id."""

    status: int
    code: str
    message: str
    request_id: str

    @property
    def other_receipt(self) -> bool:
        """The 409 "the chain already holds a different receipt" for that resource: sending this receipt
        again cannot change it. Not the API's other 409s (the world not yet as the receipt says: objects
        left, an organization's key not yet gone), which may pass later."""
        return self.status == 409 and _OTHER_RECEIPT in self.message


def api_error(exc: HttpRefused) -> Refusal | None:
    """The API's error body in ``exc`` (``{"error": {"code", "message", "request_id"}}``, perhaps
    cut short); None for any other body: a proxy's or another server's page is no word of the API's."""
    try:
        body = json.loads(exc.detail)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            return None
        code, message, request_id = error["code"], error.get("message"), error.get("request_id")
    else:  # cut short: read what is there
        start = _API_ERROR_RE.match(exc.detail)
        if start is None:
            return None
        found, rid = _MESSAGE_RE.search(exc.detail), _REQUEST_ID_RE.search(exc.detail)
        code, message, request_id = start.group(1), found and found.group(1), rid and rid.group(1)
    message = sanitize_text(message, 200) if isinstance(message, str) else ""
    request_id = sanitize_text(request_id, 64) if isinstance(request_id, str) else ""
    return Refusal(exc.code, sanitize_text(code, 40), message, request_id or "-")


def refusal(exc: HttpRefused) -> Refusal | None:
    """The API's refusal of a receipt for good, else None (kept, sent again: the API down, busy or
    misconfigured, the world not yet as the receipt says).

    For good: 400, 404 (a scan or job the organization never had: an upload's orphaned object),
    422, and a 409 "the chain already holds a different receipt" — each in the API's own error body.
    Not: another 409 ("the scan's objects still exist"), 401/403, 408, 429, 5xx, another server's page."""
    error = api_error(exc)
    if error is None:
        return None
    return error if exc.code in REFUSED or error.other_receipt else None


def holds_another_receipt(exc: HttpRefused) -> bool:
    """Whether ``exc`` is the API's own :attr:`Refusal.other_receipt` answer."""
    error = api_error(exc)
    return error is not None and error.other_receipt


def receipt_event(org: str, entry: dict[str, Any]) -> AuditEvent:
    """The receipt an entry of ``status.pendingReceipts`` stands for: the same on every send."""
    return AuditEvent(
        tenant=org,
        actor="service:retention",
        action="retention.deleted",
        resource_type=entry["resourceType"],
        resource_id=entry["resourceId"],
        time=datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00")),
        details=dict(entry["details"]),
    )


async def deliver(rt: Runtime, org: str, pending: list[dict[str, Any]]) -> Delivery:
    """Send every receipt of ``pending``, oldest first (in place: removes what the collector took
    or the API refused for good).

    201 or 200 (the chain holds it already): done. Refused for good (:func:`refusal`): dropped,
    reported, and the round goes on with the next. Anything else: kept, and the round stops (the
    collector is down or failing: the next tick tries again, in the same order)."""
    result = Delivery()
    for entry in list(pending):
        if "details" not in entry:
            continue
        try:
            await rt.audit.append(receipt_event(org, entry))
        except HttpRefused as exc:
            error = refusal(exc)
            if error is None:
                return _failed(entry, result, exc)
            pending.remove(entry)
            _refused(org, entry, error, result)
        except (MesialError, ValueError) as exc:
            return _failed(entry, result, exc)
        else:
            pending.remove(entry)
            result.sent += 1
            RECEIPTS.labels("retention", "sent").inc()
    return result


def _refused(org: str, entry: dict[str, Any], error: Refusal, result: Delivery) -> None:
    subject = f"{entry['resourceType']} {entry['resourceId']}"
    if error.other_receipt:
        result.conflicts.append(subject)
        RECEIPTS.labels("retention", "conflict").inc()
        return
    result.refused.append(
        f"the API refused the receipt for {subject} for good ({error.status} {error.code}: {error.message}; "
        f"request {error.request_id}): dropped, not sent again"
    )
    RECEIPTS.labels("retention", "refused").inc()
    log.warning("organization %s: %s", org, result.refused[-1])


def _failed(entry: dict[str, Any], result: Delivery, exc: Exception) -> Delivery:
    entry["attempts"] = _count(entry.get("attempts")) + 1
    entry["lastError"] = str(exc)[:200]
    result.failure = f"receipt for {entry['resourceType']} {entry['resourceId']} not delivered: {str(exc)[:200]}"
    RECEIPTS.labels("retention", "failed").inc()
    return result


async def _resolve_intents(rt: Runtime, org: str, pending: list[dict[str, Any]]) -> None:
    """Intents a failed or crashed sweep left: ``carry`` is how many of their planned objects are gone."""
    intents = [e for e in pending if "details" not in e]
    if not intents:
        return
    left: dict[tuple[str, str], int] = {}
    base = tenant_prefix(org)
    async for meta in rt.store.list(org):
        kind = classify_key(meta.key[len(base) :])
        left[(kind.resource_type, kind.resource_id)] = left.get((kind.resource_type, kind.resource_id), 0) + 1
    for entry in intents:
        remaining = left.get((entry["resourceType"], entry["resourceId"]), 0)
        entry["carry"] = max(_count(entry.get("planned")) - remaining, 0)


def _finish_intents(pending: list[dict[str, Any]], policy: str, max_age_days: int) -> None:
    """After a completed sweep: an intent whose objects partly went earlier is receipted for those, else dropped."""
    for entry in [e for e in pending if "details" not in e]:
        carry = _count(entry.pop("carry", 0))
        if carry:
            entry["details"] = {
                "objects_deleted": carry,
                "objects_held": 0,
                "max_age_days": max_age_days,
                "policy": policy,
            }
            entry["time"] = entry.get("time") or format_time(datetime.now(UTC))
        else:
            pending.remove(entry)


async def settle_intents(rt: Runtime, body: Any, org: str, pending: list[dict[str, Any]]) -> None:
    """Intents left behind, made receipts for what they planned and is gone (a policy being deleted
    sweeps no more: what is left of them is dropped)."""
    await _resolve_intents(rt, org, pending)
    days = (body.get("spec") or {}).get("maxAgeDays", 90)
    _finish_intents(pending, body["metadata"]["name"], days if isinstance(days, int) else 0)


def _fold(pending: list[dict[str, Any]], events: list[AuditEvent]) -> None:
    """The sweep's receipts into their intents: details and time fixed for good."""
    for event in events:
        entry = _intent(pending, event.resource_type, event.resource_id)
        if entry is None:  # cannot happen (every deletion was planned); kept anyway
            entry = {"resourceType": event.resource_type, "resourceId": event.resource_id}
            pending.append(entry)
        details = dict(event.details)
        details["objects_deleted"] = _count(details.get("objects_deleted")) + _count(entry.pop("carry", 0))
        entry.update(details=details, time=format_time(event.time))


async def sweep(
    rt: Runtime, body: Any, org: str, now: datetime, save: Callable[[dict[str, Any]], Awaitable[None]]
) -> tuple[dict[str, Any], Delivery]:
    """One sweep of the tenant's objects, stale ScanJobs and records, and the sends of its receipts;
    the status to write. ``save`` writes status fields at once (the intents, before any deletion)."""
    policy = PolicySpec.from_spec(body.get("spec") or {})
    max_age, covers, interval = policy.max_age, policy.covers, policy.interval
    skew = timedelta(seconds=rt.settings.operator.clock_skew_s)
    name = body["metadata"]["name"]
    report = SweepReport()
    status = body.get("status") or {}
    pending = pending_receipts(status)
    delivery = await deliver(rt, org, pending)  # what earlier sweeps owe first: it makes room
    await _resolve_intents(rt, org, pending)

    async def plan(groups: Any) -> None:
        for resource_type, resource_id, planned in groups:
            if _intent(pending, resource_type, resource_id) is None:
                pending.append(
                    {"resourceType": resource_type, "resourceId": resource_id, "planned": planned, "carry": 0}
                )
        await save({"pendingReceipts": pending})

    journal = _Journal()
    try:
        await sweep_objects(
            rt.store,
            journal,
            org,
            covers=covers,
            max_age=max_age,
            now=now,
            skew=skew,
            policy=name,
            report=report,
            plan=plan,
            max_resources=MAX_PENDING - len(pending),
        )
    finally:
        _fold(pending, journal.events)
        if journal.events:
            await save({"pendingReceipts": pending})
    _finish_intents(pending, name, max_age.days)
    delivery += await deliver(rt, org, pending)
    if "scanjobs" in covers:
        await _sweep_scanjobs(rt.k8s, body["metadata"]["namespace"], report, now, max_age, skew)
    if rt.records is not None:
        result = await rt.records.sweep(org, kinds=covers, cutoff=now - max_age, now=now)
        report.records_deleted += result.deleted
        report.kept += result.kept
        for problem in result.problems:
            report.problem(problem)
    ok = report.errors == 0 and not delivery.failure
    message = f"{report.deleted} deleted, {report.held} held, {report.kept} kept (untrusted timestamps), {report.errors} errors"
    if delivery.failure:
        message += f"; {len(pending)} receipt(s) pending: {delivery.failure}"
    return {
        "lastSweepTime": _iso(now),
        "nextSweepTime": _iso(now + interval),
        "lastSweep": report.as_status(),
        "totalDeleted": int(status.get("totalDeleted", 0)) + report.deleted,
        "pendingReceipts": pending,
        "observedGeneration": body["metadata"].get("generation"),
        "conditions": merge_conditions(
            status.get("conditions"), [condition("Swept", ok, "Swept" if ok else "SweepErrors", message)]
        ),
    }, delivery


async def _sweep_scanjobs(
    k8s: K8s, namespace: str, report: SweepReport, now: datetime, max_age: timedelta, skew: timedelta
) -> None:
    for sj in await k8s.list(*SCANJOB, namespace=namespace):
        status = sj.get("status") or {}
        if status.get("phase") not in ("Succeeded", "Failed"):
            continue
        report.examined += 1
        if await scanjob_running(k8s, sj):  # a terminal phase in status is no proof: its Job still runs
            report.problem(f"scanjob {sj['metadata']['name']}: kept, its Job still runs")
            continue
        # aged from its completion, never from before its creation (the server's own stamp)
        created = str(sj["metadata"].get("creationTimestamp") or "")
        completed = status.get("completionTime")
        stamp = completed if isinstance(completed, str) and completed >= created else created or None
        verdict = decide(stamp, now=now, max_age=max_age, skew=skew)
        if verdict is Verdict.expired:
            if await k8s.delete(*SCANJOB, sj["metadata"]["name"], namespace):
                report.scanjobs_deleted += 1
        elif verdict in (Verdict.future, Verdict.malformed):
            report.kept += 1
            report.problem(f"scanjob {sj['metadata']['name']}: kept, timestamp {verdict.value}")
