"""Internal endpoints for the operator (cluster mode): job lifecycle reports."""

from __future__ import annotations

from starlette.responses import Response

from mesial.api import schemas
from mesial.api.errors import NotFound
from mesial.api.executor import JobResults
from mesial.api.models import Job, Organization
from mesial.api.routes._util import ok, route
from mesial.api.routing import Call, Spec
from mesial.api.services.ingest import check_job_reporter
from mesial.api.services.jobs import JobState, job_spec, job_view
from mesial.api.services.scope import OPAQUE_ID_RE
from mesial.api.types import Role, utcnow
from mesial.common.contract import sanitize_text

SERVICE = frozenset({Role.service})


@route(
    Spec(
        "POST",
        "/internal/v1/jobs/{job_id}/status",
        "Report a job's state (the operator, from its ScanJob)",
        SERVICE,
        body=schemas.JobReport,
        response=schemas.Job,
    )
)
async def report_job(call: Call) -> Response:
    me, rt = call.me, call.runtime
    check_job_reporter(me)
    job_id = call.param("job_id")
    if not OPAQUE_ID_RE.fullmatch(job_id):  # a 41-character id or a NUL never reaches the database
        raise NotFound("job not found")
    query = Job.filter(id=job_id)
    job = await (query.filter(org_id=me.org_id) if me.org_id else query).first()
    org = await Organization.get_or_none(id=job.org_id) if job else None
    # the operator's key is platform-wide: the tenant it saw the job run for must be the job's own
    if job is None or org is None or org.name != call.body.tenant:
        raise NotFound("job not found")
    spec = job_spec(job, org.name)
    results = JobResults(rt.need_store(), rt.need_collector())
    if call.body.state == "running":
        progress = await results.progress(spec)
        # one update: a reader never sees the job running without the progress it was reported with
        known = {} if progress is None else {"progress": progress.percent / 100, "metrics": progress.metrics}
        queued = Job.filter(id=job.id, state=JobState.queued.value)
        if await queued.update(state="running", started_at=utcnow(), **known):
            await results.audit(spec, "job.started", me.actor)
        elif known:
            await Job.filter(id=job.id, state="running").update(**known)
    else:
        await results.conclude(spec, call.body.state == "succeeded", sanitize_text(call.body.message), me.actor)
    await job.refresh_from_db()
    return ok(job_view(job))


ROUTES = [report_job]
