"""Audit export for auditors, and the internal ingestion endpoint for the operator and jobs."""

from __future__ import annotations

from starlette.responses import Response, StreamingResponse

from mesial.api import schemas
from mesial.api.routes._util import ok, route
from mesial.api.routing import Call, Spec
from mesial.api.services.ingest import record_event
from mesial.api.types import Role
from mesial.common.audit import AuditEvent

AUDITOR = frozenset({Role.auditor})
SERVICE = frozenset({Role.service})


@route(
    Spec(
        "GET",
        "/v1/audit/export",
        "Export the organization's audit chain (JSON Lines, signed)",
        AUDITOR,
        action="audit.exported",
        resource_type="audit_log",
        query=schemas.ExportQuery,
        produces="application/x-ndjson",
    )
)
async def export(call: Call) -> Response:
    org = call.scope.org
    call.audit(org)
    lines = call.runtime.need_collector().export(org, call.query.from_, call.query.to)
    headers = {"content-disposition": f'attachment; filename="audit-{org}.jsonl"'}
    return StreamingResponse(lines, media_type="application/x-ndjson", headers=headers)


@route(
    Spec(
        "POST",
        "/internal/v1/audit/events",
        "Append an event (operator and jobs; per-service keys)",
        SERVICE,
        body=schemas.IngestEvent,
        response=schemas.Ingested,
        status=201,
        also=((200, "A receipt the chain already holds (sent again): its entry, not appended twice"),),
    )
)
async def ingest(call: Call) -> Response:
    b, me, rt = call.body, call.me, call.runtime
    event = AuditEvent(
        b.tenant,
        me.actor,
        b.action,
        b.resource_type,
        b.resource_id,
        b.outcome,
        call.request.state.client_ip,
        call.request.state.request_id,
        details=b.details,
        **({"time": b.time} if b.time else {}),
    )
    record, new = await record_event(me, event, store=rt.need_store(), keys=rt.keys, collector=rt.need_collector())
    # 200: a receipt the chain already held (sent again after a lost answer), not appended twice
    return ok({"tenant": b.tenant, "sequence": record["sequence"], "hash": record["hash"]}, 201 if new else 200)


ROUTES = [export, ingest]
