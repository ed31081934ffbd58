"""Liveness, readiness (database, Vault, object store), metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio

from starlette.responses import PlainTextResponse, Response

from mesial.api import schemas
from mesial.api.models import Organization
from mesial.api.routes._util import ok, route
from mesial.api.routing import Call, Spec


@route(Spec("GET", "/healthz", "Liveness", public=True, response=schemas.Health))
async def healthz(call: Call) -> Response:
    return ok({"status": "ok", "checks": {}})


async def _check(name: str, probe: object) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe, timeout=5)  # type: ignore[arg-type]
    except Exception as exc:
        return name, f"failed: {type(exc).__name__}"
    return name, "ok"


@route(
    Spec("GET", "/readyz", "Readiness: database, Vault and object store answer", public=True, response=schemas.Health)
)
async def readyz(call: Call) -> Response:
    rt = call.runtime
    store = rt.need_store()
    checks = dict(
        await asyncio.gather(
            _check("database", Organization.all().limit(1)),
            _check("vault", asyncio.to_thread(rt.need_keys().public_keys)),
            _check("store", store.client.head_bucket(Bucket=store.bucket)),
        )
    )
    ready = all(v == "ok" for v in checks.values())
    return ok({"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503)


@route(
    Spec(
        "GET",
        "/metrics",
        "Prometheus metrics (route templates only, no tenant data)",
        public=True,
        produces="text/plain",
    )
)
async def metrics(call: Call) -> Response:
    rt = call.runtime
    if rt.collector is not None:
        rt.metrics.gauges["mesial_audit_appends_total"] = rt.collector.appended
    queue = getattr(rt.dispatcher, "queue", None)
    if queue is not None:
        rt.metrics.gauges["mesial_executor_queued_jobs"] = queue.qsize()
    return PlainTextResponse(rt.metrics.render(), media_type="text/plain; version=0.0.4")


@route(Spec("GET", "/openapi.json", "This API's OpenAPI 3.1 document", public=True))
async def openapi(call: Call) -> Response:
    from mesial.api.openapi import document

    return ok(document(call.request.app.routes))


ROUTES = [healthz, readyz, metrics, openapi]
