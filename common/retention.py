"""Retention: what is past its age is deleted, unless held, with one receipt per resource.

The decision is a pure function (:func:`decide`) over a timestamp, the clock, the
maximum age and the tolerated clock skew. A timestamp that cannot be trusted, because
it is malformed, naive, or further in the future than the skew allows, never leads
to a deletion: the item is kept and reported.

:func:`sweep_objects` applies it to every object under the tenant's prefix, classified
by the one key layout (:func:`mesial.common.contract.classify_key`): a scan's objects,
a job's artifacts and progress document, and any key outside the layout (nothing of a
tenant escapes the promise because nobody listed its prefix). Each deletion goes
through :meth:`ObjectStore.delete`, which
re-reads the legal-hold tag at that moment and refuses a held object, so a hold placed
mid-sweep is still honoured. Receipts are appended after the objects of a resource are
deleted. A sweep is safe to interrupt and rerun: it keeps no state, and a rerun finds
only what is still there. A caller that must not lose a receipt (the operator: its sends
can fail after the objects are gone) passes ``plan``, called with what is about to be
deleted before anything is, and a sink that keeps the receipts for it to deliver.

Records (database rows) belong to the API: they are swept through the
:class:`RecordSweeper` protocol, plugged in by whoever owns them.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

import botocore.exceptions

from mesial.common.audit import AuditEvent, AuditSink
from mesial.common.contract import classify_key
from mesial.common.errors import LegalHoldActive, ObjectNotFound, StorageError, StoreUnavailable
from mesial.common.objectstore import META_CREATED, ObjectStore
from mesial.common.tenancy import tenant_prefix

# What a RetentionPolicy can cover (crds/retentionpolicy.yaml), and its default: everything.
# Keys outside the layout (kind "other") are swept whatever the policy covers.
COVERS = ("scans", "results", "scanjobs")
DEFAULT_COVERS = COVERS
MAX_PROBLEMS = 20


class Verdict(enum.StrEnum):
    expired = "expired"  # past its age: delete unless held
    young = "young"  # within its age: keep
    future = "future"  # dated beyond the tolerated clock skew: keep and report
    malformed = "malformed"  # no usable timestamp: keep and report


def decide(timestamp: datetime | str | None, *, now: datetime, max_age: timedelta, skew: timedelta) -> Verdict:
    """Whether an item created at ``timestamp`` is past ``max_age`` at ``now`` (pure)."""
    if isinstance(timestamp, str):
        try:
            timestamp = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
        except ValueError:
            return Verdict.malformed
    if not isinstance(timestamp, datetime) or timestamp.tzinfo is None:
        return Verdict.malformed
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if timestamp > now + skew:
        return Verdict.future
    return Verdict.expired if now - timestamp >= max_age else Verdict.young


@dataclass
class SweepReport:
    """Counts of one sweep; ``problems`` explains what was kept or failed (ids only)."""

    examined: int = 0
    deleted: int = 0
    held: int = 0
    kept: int = 0
    errors: int = 0
    scanjobs_deleted: int = 0
    records_deleted: int = 0
    receipts: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def as_status(self) -> dict[str, object]:
        return {
            "examined": self.examined,
            "deleted": self.deleted,
            "held": self.held,
            "kept": self.kept,
            "errors": self.errors,
            "scanJobsDeleted": self.scanjobs_deleted,
            "recordsDeleted": self.records_deleted,
            "receipts": self.receipts,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class RecordSweepResult:
    deleted: int
    kept: int = 0
    problems: tuple[str, ...] = ()


@runtime_checkable
class RecordSweeper(Protocol):
    """The database side of retention: delete a tenant's rows older than ``cutoff`` (not held)."""

    async def sweep(
        self, org: str, *, kinds: Collection[str], cutoff: datetime, now: datetime
    ) -> RecordSweepResult: ...


async def _created(store: ObjectStore, key: str, fallback: datetime) -> datetime | str:
    """When the object was uploaded: its ``mesial-created`` metadata, else the store's timestamp.

    Only young-looking objects are asked (the creation time is never later than the store's
    timestamp, so an object old by the latter is old by the former). A malformed value is
    returned as is: the object is kept and reported, not aged by a guess."""
    try:
        response = await store.client.head_object(Bucket=store.bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return fallback  # deleted meanwhile; the delete below finds out
        raise StorageError(f"cannot read the metadata of {key}: {exc}") from exc
    created = (response.get("Metadata") or {}).get(META_CREATED)
    return created if created else fallback


async def sweep_objects(
    store: ObjectStore,
    audit: AuditSink,
    org: str,
    *,
    covers: Collection[str],
    max_age: timedelta,
    now: datetime | None = None,
    skew: timedelta = timedelta(minutes=5),
    policy: str = "",
    report: SweepReport | None = None,
    plan: Callable[[Sequence[tuple[str, str, int]]], Awaitable[None]] | None = None,
    max_resources: int | None = None,
) -> SweepReport:
    """Delete the tenant's expired, unheld objects of the covered kinds (and any key outside the
    layout); one receipt per resource (a scan, a job, a top-level name outside the layout).

    ``plan`` is awaited with ``(resource type, resource id, number of objects)`` of every resource
    about to be deleted, before any deletion (a failure there deletes nothing). At most
    ``max_resources`` resources are deleted (the rest wait for a later sweep, reported).
    ``StoreUnavailable`` propagates (the sweep is retried later); other per-object failures
    are counted as errors and the sweep goes on.
    """
    now = now or datetime.now(UTC)
    report = report or SweepReport()
    base = tenant_prefix(org)
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    async for meta in store.list(org):
        relative = meta.key[len(base) :]
        kind = classify_key(relative)
        if kind.kind != "other" and kind.kind not in covers:
            continue
        report.examined += 1
        verdict = decide(meta.last_modified, now=now, max_age=max_age, skew=skew)
        if verdict is Verdict.young:
            # a rewrap rewrites the object (a fresh store timestamp): its age runs from its upload
            verdict = decide(await _created(store, meta.key, meta.last_modified), now=now, max_age=max_age, skew=skew)
        if verdict is Verdict.expired:
            groups[(kind.resource_type, kind.resource_id)].append(relative)
        elif verdict in (Verdict.future, Verdict.malformed):
            report.kept += 1
            report.problem(f"{kind.resource_type} {kind.resource_id}: kept, timestamp {verdict.value}")
    chosen = sorted(groups.items())
    if max_resources is not None and len(chosen) > max_resources:
        report.problem(f"{len(chosen) - max(max_resources, 0)} resource(s) deferred: too many receipts pending")
        chosen = chosen[: max(max_resources, 0)]
    if plan is not None and chosen:
        await plan([(resource_type, resource_id, len(keys)) for (resource_type, resource_id), keys in chosen])
    for (resource_type, resource_id), keys in chosen:
        deleted = held = 0
        for relative in keys:
            try:
                await store.delete(org, relative)
                deleted += 1
            except LegalHoldActive:
                held += 1
            except ObjectNotFound:
                continue  # deleted meanwhile (an interrupted earlier sweep, or the tenant)
            except StoreUnavailable:
                raise
            except StorageError as exc:
                report.errors += 1
                report.problem(f"{resource_type} {resource_id}: {type(exc).__name__}")
        report.deleted += deleted
        report.held += held
        if deleted:
            await audit.append(
                AuditEvent(
                    tenant=org,
                    actor="service:retention",
                    action="retention.deleted",
                    resource_type=resource_type,
                    resource_id=resource_id,
                    details={
                        "objects_deleted": deleted,
                        "objects_held": held,
                        "max_age_days": max_age.days,
                        "policy": policy,
                    },
                )
            )
            report.receipts += 1
    return report
