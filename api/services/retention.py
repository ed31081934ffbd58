"""Retention on the API's side: the rows of what retention deleted, and local mode's sweep.

:class:`ApiRecords` is the :class:`~mesial.common.retention.RecordSweeper` of the API's
database: a tenant's scans older than the cutoff go through the one scan deletion
(:func:`mesial.api.services.scans.remove`: not held, not an input of an active job; object
then row), and its finished jobs older than the cutoff go with their artifact rows (their
artifacts and progress document were written before the job finished, so they are past
their age too). In cluster mode the operator's RetentionPolicy sweeps the store; in local
mode nothing else runs, so :func:`sweep_local` (a periodic task of the API's lifespan)
sweeps each organization by its stored ``retention_days`` with the same
:func:`~mesial.common.retention.sweep_objects` and then this sweeper; receipts go to the
tenant's chain. In cluster mode an accepted ``retention.deleted`` receipt of the operator
(``POST /internal/v1/audit/events``, its objects proven gone) removes its scan's or job's rows
through the same removals (:func:`remove_receipted`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

from mesial.api.errors import Conflict
from mesial.api.models import Artifact, Job, Organization, Scan
from mesial.api.services import scans
from mesial.common.audit import AuditSink
from mesial.common.errors import LegalHoldActive
from mesial.common.objectstore import ObjectStore
from mesial.common.retention import DEFAULT_COVERS, RecordSweepResult, SweepReport, sweep_objects

log = logging.getLogger(__name__)

FINISHED = ("succeeded", "failed", "cancelled")


async def remove_job(job: Job) -> None:
    """The one removal of a job's rows (retention): refused unless finished; its artifact rows, then the job."""
    if job.state not in FINISHED:
        raise Conflict("job is not finished")
    await Artifact.filter(org_id=job.org_id, job_id=job.id).delete()
    await Job.filter(id=job.id, org_id=job.org_id).delete()


async def remove_receipted(store: ObjectStore, org: str, resource_type: str, resource_id: str) -> bool:
    """The rows of a scan or job an accepted ``retention.deleted`` receipt proved gone from the store
    (cluster mode: the operator's sweep); through :func:`~mesial.api.services.scans.remove` and
    :func:`remove_job`, so a held scan, an input of an active job and an unfinished job keep theirs.
    Returns whether rows went."""
    organization = await Organization.get_or_none(name=org)
    if organization is None or resource_type not in ("scan", "job"):
        return False
    try:
        if resource_type == "scan":
            scan = await Scan.get_or_none(id=resource_id, org_id=organization.id)
            if scan is None:
                return False
            await scans.remove(org, store, scan)
        else:
            job = await Job.get_or_none(id=resource_id, org_id=organization.id)
            if job is None:
                return False
            await remove_job(job)
    except (Conflict, LegalHoldActive) as exc:
        log.warning("retention receipt for %s %s: rows kept, %s", resource_type, resource_id, type(exc).__name__)
        return False
    return True


class ApiRecords:
    """Deletes a tenant's scan, job and artifact rows older than the cutoff, held scans excepted."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def sweep(self, org: str, *, kinds: Collection[str], cutoff: datetime, now: datetime) -> RecordSweepResult:
        organization = await Organization.get_or_none(name=org)
        if organization is None:
            return RecordSweepResult(deleted=0)
        deleted = kept = 0
        problems: list[str] = []
        if "results" in kinds:
            for job in await Job.filter(org_id=organization.id, state__in=FINISHED):
                if (job.finished_at or job.created_at) >= cutoff:
                    continue
                await remove_job(job)
                deleted += 1
        if "scans" in kinds:
            for scan in await Scan.filter(org_id=organization.id, created_at__lt=cutoff, legal_hold=False):
                try:
                    await scans.remove(org, self.store, scan)
                    deleted += 1
                except (Conflict, LegalHoldActive) as exc:  # an input of an active job; held meanwhile
                    kept += 1
                    problems.append(f"scan {scan.id}: kept, {type(exc).__name__}")
        return RecordSweepResult(deleted=deleted, kept=kept, problems=tuple(problems))


async def sweep_local(store: ObjectStore, audit: AuditSink, *, now: datetime | None = None) -> SweepReport:
    """One retention sweep of every organization by its stored ``retention_days`` (local mode)."""
    now = now or datetime.now(UTC)
    total = SweepReport()
    records = ApiRecords(store)
    for organization in await Organization.all().order_by("name"):
        max_age = timedelta(days=organization.retention_days)
        report = await sweep_objects(
            store,
            audit,
            organization.name,
            covers=DEFAULT_COVERS,
            max_age=max_age,
            now=now,
            policy="local",
            report=total,
        )
        result = await records.sweep(organization.name, kinds=DEFAULT_COVERS, cutoff=now - max_age, now=now)
        report.records_deleted += result.deleted
        report.kept += result.kept
        for problem in result.problems:
            report.problem(problem)
    return total
