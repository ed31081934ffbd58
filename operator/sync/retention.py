"""RetentionPolicies: one per tenant namespace the operator created, with a checked spec, swept by a
timer when ``sweepInterval`` is due. A Rejected policy is admitted again on each tick, so the
second policy of a namespace takes over once the first is deleted."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mesial.common.errors import InputError
from mesial.common.retention import COVERS, DEFAULT_COVERS, SweepReport, Verdict, decide, sweep_objects
from mesial.common.settings import Settings
from mesial.operator.k8s import K8s
from mesial.operator.runtime import Runtime
from mesial.operator.sync.conditions import condition, merge_conditions
from mesial.operator.sync.tenancy import NotATenantNamespace, tenant_namespace

POLICY = ("mesial.dev/v1alpha1", "RetentionPolicy")
SCANJOB = ("mesial.dev/v1alpha1", "ScanJob")
MAX_AGE_DAYS = 3650
MIN_INTERVAL, MAX_INTERVAL = timedelta(minutes=1), timedelta(hours=168)
_DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


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


async def sweep(rt: Runtime, body: Any, org: str, now: datetime) -> dict[str, Any]:
    """One sweep of the tenant's objects, stale ScanJobs and records; the status to write."""
    policy = PolicySpec.from_spec(body.get("spec") or {})
    max_age, covers, interval = policy.max_age, policy.covers, policy.interval
    skew = timedelta(seconds=rt.settings.operator.clock_skew_s)
    name = body["metadata"]["name"]
    report = SweepReport()
    await sweep_objects(
        rt.store, rt.audit, org, covers=covers, max_age=max_age, now=now, skew=skew, policy=name, report=report
    )
    if "scanjobs" in covers:
        await _sweep_scanjobs(rt.k8s, body["metadata"]["namespace"], report, now, max_age, skew)
    if rt.records is not None:
        result = await rt.records.sweep(org, kinds=covers, cutoff=now - max_age, now=now)
        report.records_deleted += result.deleted
        report.kept += result.kept
        for problem in result.problems:
            report.problem(problem)
    status = body.get("status") or {}
    ok = report.errors == 0
    message = f"{report.deleted} deleted, {report.held} held, {report.kept} kept (untrusted timestamps), {report.errors} errors"
    return {
        "lastSweepTime": _iso(now),
        "nextSweepTime": _iso(now + interval),
        "lastSweep": report.as_status(),
        "totalDeleted": int(status.get("totalDeleted", 0)) + report.deleted,
        "observedGeneration": body["metadata"].get("generation"),
        "conditions": merge_conditions(
            status.get("conditions"), [condition("Swept", ok, "Swept" if ok else "SweepErrors", message)]
        ),
    }


async def _sweep_scanjobs(
    k8s: K8s, namespace: str, report: SweepReport, now: datetime, max_age: timedelta, skew: timedelta
) -> None:
    for sj in await k8s.list(*SCANJOB, namespace=namespace):
        status = sj.get("status") or {}
        if status.get("phase") not in ("Succeeded", "Failed"):
            continue
        report.examined += 1
        stamp = status.get("completionTime") or sj["metadata"].get("creationTimestamp")
        verdict = decide(stamp, now=now, max_age=max_age, skew=skew)
        if verdict is Verdict.expired:
            if await k8s.delete(*SCANJOB, sj["metadata"]["name"], namespace):
                report.scanjobs_deleted += 1
        elif verdict in (Verdict.future, Verdict.malformed):
            report.kept += 1
            report.problem(f"scanjob {sj['metadata']['name']}: kept, timestamp {verdict.value}")
