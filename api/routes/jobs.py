"""Jobs, their artifacts, and signed download links."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from starlette.responses import Response, StreamingResponse

from mesial.api import schemas
from mesial.api.auth import credential_of
from mesial.api.errors import LinkRefused, NotFound, RateLimited, Unauthenticated
from mesial.api.routes._util import ok, route
from mesial.api.routing import Call, Spec
from mesial.api.services import downloads, jobs
from mesial.api.services.pagination import page
from mesial.api.types import CASE_ROLES
from mesial.common.contract import artifact_key
from mesial.common.errors import ObjectNotFound
from mesial.common.objectstore import ObjectStore


@route(
    Spec(
        "POST",
        "/v1/jobs",
        "Start an alignment job from the caller's scans",
        CASE_ROLES,
        action="job.created",
        resource_type="job",
        body=schemas.JobCreate,
        response=schemas.Job,
        status=201,
    )
)
async def create_job(call: Call) -> Response:
    b, rt = call.body, call.runtime
    # the row is written in the transaction that records job.created; the job is handed over after it
    recorded = functools.partial(call.commit, status=201)
    options = b.options.model_dump()
    job = await jobs.create(
        call.scope, rt.dispatcher, rt.need_collector(), b.upper, b.lower, b.bites, options, recorded
    )
    return ok(jobs.job_view(job), 201)


@route(
    Spec(
        "GET", "/v1/jobs", "List jobs, oldest first, by pages", CASE_ROLES, query=schemas.Page, response=schemas.JobList
    )
)
async def list_jobs(call: Call) -> Response:
    rows, cursor = await page(call.scope.jobs(), call.query.limit, call.query.cursor)
    return ok({"items": [jobs.job_view(j) for j in rows], "next_cursor": cursor})


@route(Spec("GET", "/v1/jobs/{job_id}", "A job's state, progress and metrics", CASE_ROLES, response=schemas.Job))
async def get_job(call: Call) -> Response:
    return ok(jobs.job_view(await call.scope.job(call.param("job_id"))))


@route(
    Spec(
        "POST",
        "/v1/jobs/{job_id}/cancel",
        "Cancel a queued or running job",
        CASE_ROLES,
        action="job.cancel_requested",
        resource_type="job",
        id_param="job_id",
        response=schemas.Job,
    )
)
async def cancel_job(call: Call) -> Response:
    # cancelled in the transaction that records job.cancel_requested; the executor or cluster told after it
    recorded = functools.partial(call.commit, status=200)
    return ok(jobs.job_view(await jobs.cancel(call.scope, call.runtime.dispatcher, call.param("job_id"), recorded)))


@route(
    Spec(
        "GET",
        "/v1/jobs/{job_id}/artifacts",
        "List a job's artifacts",
        CASE_ROLES,
        action="artifact.listed",
        resource_type="job",
        id_param="job_id",
        response=schemas.ArtifactList,
    )
)
async def list_artifacts(call: Call) -> Response:
    return ok({"items": [jobs.artifact_view(a) for a in await call.scope.artifacts(call.param("job_id"))]})


@route(
    Spec(
        "POST",
        "/v1/jobs/{job_id}/artifacts/{name}/link",
        "A download link for one artifact, valid 15 minutes",
        CASE_ROLES,
        action="artifact.link_issued",
        resource_type="artifact",
        response=schemas.Link,
        status=201,
    )
)
async def link_artifact(call: Call) -> Response:
    artifact = await call.scope.artifact(call.param("job_id"), call.param("name"))
    call.audit(artifact.id)
    links = call.runtime.links
    claims = links.sign(call.scope.org_id, artifact.job_id, artifact.name, call.me.actor)
    expires = datetime.fromtimestamp(claims.expires, UTC).isoformat().replace("+00:00", "Z")
    return ok({"url": f"/v1/links/{links.token(claims)}", "expires_at": expires}, 201)


async def _stream(store: ObjectStore, org: str, job_id: str, name: str) -> AsyncIterator[bytes]:
    async for piece in store.get(org, artifact_key(job_id, name)):
        yield piece


@route(
    Spec(
        "GET",
        "/v1/links/{token}",
        "Download an artifact through a signed link (decrypted)",
        public=True,
        action="artifact.downloaded",
        resource_type="artifact",
        produces="application/octet-stream",
    )
)
async def download(call: Call) -> Response:
    rt = call.runtime
    try:
        presented = credential_of(call.request.headers)
        opened = await downloads.open_link(rt.links, rt.oidc, call.param("token"), presented, call.mark)
    except (LinkRefused, Unauthenticated):
        # refused links spend the address's failure budget (as failed authentications do); valid ones never
        wait = rt.auth_failures.retry_after(call.request.state.client_ip)
        if wait:
            raise RateLimited(wait) from None
        raise
    artifact = opened.artifact
    store = rt.need_store()
    stream = _stream(store, opened.org, artifact.job_id, artifact.name)
    try:
        first = await anext(stream, b"")  # fail before the status line if the object is gone or bad
    except ObjectNotFound:
        raise NotFound("artifact not found") from None

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for piece in stream:
            yield piece

    disposition = f'attachment; filename="{artifact.name}"'
    return StreamingResponse(
        body(), media_type="application/octet-stream", headers={"content-disposition": disposition}
    )


ROUTES = [create_job, list_jobs, get_job, cancel_job, list_artifacts, link_artifact, download]
