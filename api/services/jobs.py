"""Jobs: creation from scans (ownership and kinds checked), status, cancellation, results."""

from __future__ import annotations

import enum
from typing import Any

from mesial.api.errors import Busy, Conflict, ValidationFailed
from mesial.api.models import Artifact, Job
from mesial.api.services.scope import TenantScope
from mesial.api.types import iso, new_id, utcnow
from mesial.common.contract import JobSpec


class JobState(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINAL = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})


def job_spec(job: Job, org: str) -> JobSpec:
    """The job contract's spec of a job row (what a dispatcher runs: opaque ids only, no ORM row)."""
    return JobSpec.from_options(org, job.id, job.upper_id, job.lower_id, job.bite_ids, job.options)


def job_view(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state,
        "progress": job.progress,
        "metrics": job.metrics,
        "message": job.message,
        "result": job.result,
        "upper": job.upper_id,
        "lower": job.lower_id,
        "bites": job.bite_ids,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }


def artifact_view(artifact: Artifact) -> dict[str, Any]:
    return {
        "name": artifact.name,
        "size": artifact.size,
        "sha256": artifact.sha256,
        "created_at": iso(artifact.created_at),
    }


async def create(
    scope: TenantScope, dispatcher: Any, upper: str, lower: str, bites: list[str], options: dict[str, Any]
) -> Job:
    expected = [(upper, "upper", "upper"), (lower, "lower", "lower")] + [
        (b, "bite", f"bites[{i}]") for i, b in enumerate(bites)
    ]
    for scan_id, kind, where in expected:
        scan = await scope.scan(scan_id)  # 404 for ids of other tenants (or others' cases)
        if scan.kind != kind:
            raise ValidationFailed(f"{where} must be a scan of kind {kind!r}, not {scan.kind!r}")
    if len(set(bites)) != len(bites):
        raise ValidationFailed("bites must be distinct scans")
    if not dispatcher.has_room():
        raise Busy("the job queue is full; retry later")
    job = await Job.create(
        id=new_id("job"),
        org_id=scope.org_id,
        created_by=scope.principal.member_id,
        upper_id=upper,
        lower_id=lower,
        bite_ids=list(bites),
        options=options,
        state=JobState.queued.value,
        metrics={},
        created_at=utcnow(),
    )
    await dispatcher.submit(job_spec(job, scope.org))
    return job


async def cancel(scope: TenantScope, dispatcher: Any, job_id: str) -> Job:
    job = await scope.job(job_id)
    if JobState(job.state) in FINAL:
        raise Conflict(f"job is already {job.state}")
    await dispatcher.cancel(job.id)
    await Job.filter(id=job.id, state__in=[JobState.queued.value, JobState.running.value]).update(
        state=JobState.cancelled.value, finished_at=utcnow(), message="cancelled"
    )
    await job.refresh_from_db()
    return job
