"""The audit middleware: one event per audited request, appended before the response goes out.

Routes mark what they do (an :class:`~mesial.api.types.AuditMark` in the request state:
action, resource type and opaque id, tenant and actor once authenticated). When the
response starts, this middleware turns the mark and the status into an
:class:`~mesial.common.audit.AuditEvent` and hands it to the sink. If the sink fails the
client gets a 503 instead of a success that left no trace. A route whose change must not
outlive a failed append (a scan's deletion, a key revoked, a setting changed: docs/audit.md
lists them) appends its event itself, in the transaction of that change
(:meth:`~mesial.api.routing.Call.commit`), and the mark says so: this middleware appends
nothing more for it. Requests that never proved a credential have no tenant chain to
land in: they are logged, not chained.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mesial.api.errors import error_response
from mesial.api.types import AuditMark
from mesial.common.audit import AuditEvent, AuditSink, Outcome
from mesial.common.errors import ServiceError

log = logging.getLogger("mesial.api.audit")


def outcome_of(status: int) -> Outcome:
    if status < 400:
        return "success"
    if status in (401, 403, 404):
        return "denied"
    return "failure"


def event_of(mark: AuditMark, state: dict[str, Any], status: int) -> AuditEvent:
    """The event of an authenticated request that ``mark`` describes, answered ``status``."""
    assert mark.tenant is not None
    return AuditEvent(
        tenant=mark.tenant,
        actor=mark.actor,
        action=mark.action,
        resource_type=mark.resource_type,
        resource_id=mark.resource_id,
        outcome=outcome_of(status),
        source_ip=state.get("client_ip", ""),
        request_id=state.get("request_id", ""),
        details={"status": status, **mark.details},
    )


class AuditTrail:
    def __init__(self, app: ASGIApp, sink: AuditSink) -> None:
        self.app = app
        self.sink = sink

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        failed = False

        async def auditing_send(message: Message) -> None:
            nonlocal failed
            if failed:
                return
            if message["type"] == "http.response.start":
                mark: AuditMark | None = state.get("audit")
                if mark is not None and mark.recorded:
                    pass  # the route appended it in the transaction of its change
                elif mark is not None and mark.tenant is not None:
                    event = event_of(mark, state, message["status"])
                    try:
                        await self.sink.append(event)
                    except Exception as exc:
                        log.error("audit append failed for request %s: %s", event.request_id, type(exc).__name__)
                        failed = True
                        await error_response(ServiceError("audit"), event.request_id)(scope, receive, send)
                        return
                elif mark is not None:
                    log.info("unauthenticated %s refused (status %s)", mark.action, message["status"])
            await send(message)

        await self.app(scope, receive, auditing_send)
