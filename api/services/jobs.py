"""Jobs: creation from scans (ownership and kinds checked), status, cancellation, results."""

from __future__ import annotations

import enum
import logging
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

from mesial.api.audit.collector import AuditCollector, Commit, made
from mesial.api.errors import Busy, Conflict, ValidationFailed
from mesial.api.models import Artifact, Job
from mesial.api.services.scope import TenantScope
from mesial.api.types import iso, new_id, utcnow
from mesial.common.audit import AuditEvent
from mesial.common.contract import JobSpec

log = logging.getLogger(__name__)
# the API's own job runner in the chain: a job not handed over, the local executor's job.* events
ACTOR = "service:executor"


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
    scope: TenantScope,
    dispatcher: Any,
    collector: AuditCollector,
    upper: str,
    lower: str,
    bites: list[str],
    options: dict[str, Any],
    commit: Commit,
) -> Job:
    """A job of the caller's scans: its row, queued, in ``commit``'s transaction (the one appending the
    ``job.created`` that names it), then handed to the dispatcher (:func:`hand_over`): nothing runs
    for a job whose event could not be written."""
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
    job_id = new_id("job")  # chosen first: the event that records the job names it

    async def make(conn: BaseDBAsyncClient) -> Job:
        return await Job.create(
            using_db=conn,
            id=job_id,
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

    job = await made(make, commit, job_id)
    await hand_over(dispatcher, collector, job, scope.org)
    return job


async def hand_over(dispatcher: Any, collector: AuditCollector, job: Job, org: str) -> None:
    """Give a committed job (its row queued, its ``job.created`` appended) to ``dispatcher``: the local
    executor's queue, or a ScanJob. If that fails, the row is failed in the transaction of a
    ``job.failed`` of its own (actor :data:`ACTOR`, ``details.reason`` ``not_handed_over``), whatever
    the dispatcher may have taken all the same is cancelled (a ScanJob made though the answer was
    lost), and the error is raised (``503``: a full queue, a cluster not answering). If that failing
    fails too, the row stays queued; a local executor queues it again at its next start."""
    try:
        await dispatcher.submit(job_spec(job, org))
    except Exception as exc:
        reason = "the job queue was full" if isinstance(exc, Busy) else "the job runner did not take it"
        try:
            await _fail(collector, job, org, f"not started: {reason}")
            await dispatcher.cancel(job.id)
        except Exception as also:
            log.error("job %s: not handed over, and failing it failed too: %s", job.id, type(also).__name__)
        raise


async def _fail(collector: AuditCollector, job: Job, org: str, message: str) -> None:
    async def failed(conn: BaseDBAsyncClient) -> None:
        await (
            Job.filter(id=job.id, state=JobState.queued.value)
            .using_db(conn)
            .update(state=JobState.failed.value, message=message, finished_at=utcnow())
        )

    event = AuditEvent(org, ACTOR, "job.failed", "job", job.id, details={"reason": "not_handed_over"})
    await collector.append_unless(event, None, failed)


async def cancel(scope: TenantScope, dispatcher: Any, job_id: str, commit: Commit) -> Job:
    """Cancel a queued or running job: the row's ``cancelled`` in ``commit``'s transaction (the one
    appending ``job.cancel_requested``), then the dispatcher told (the local process stopped, the
    ScanJob deleted). A report of the job's end that comes after changes no finished row
    (:meth:`mesial.api.executor.JobResults.finish`): ``cancelled`` stays. A finished job is a 409;
    one cancelled already is told to the dispatcher again first, in case telling it failed before."""
    job = await scope.job(job_id)
    if job.state == JobState.cancelled.value:
        await dispatcher.cancel(job.id)
    if JobState(job.state) in FINAL:
        raise Conflict(f"job is already {job.state}")

    async def stamp(conn: BaseDBAsyncClient) -> None:
        active = Job.filter(id=job.id, state__in=[JobState.queued.value, JobState.running.value]).using_db(conn)
        if not await active.update(state=JobState.cancelled.value, finished_at=utcnow(), message="cancelled"):
            raise Conflict(f"job is already {(await Job.get(id=job.id, using_db=conn)).state}")

    await commit(stamp)
    await dispatcher.cancel(job.id)
    await job.refresh_from_db()
    return job
