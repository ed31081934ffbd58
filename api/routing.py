"""Route declarations: each endpoint states its roles, audit action and schemas in one place.

``@endpoint(...)`` wraps a handler of one argument, :class:`Call`. The wrapper, in
order: names the route for metrics, marks the audit action, authenticates the bearer
credential (the organization comes from it, never from the request), applies the
per-key rate limit, checks the role, validates query and JSON body (422 with details),
then calls the handler. The same declarations produce the OpenAPI document and the
role table of ``docs/api.md``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from mesial.api.audit.collector import Change
from mesial.api.auth import authenticate, credential_of
from mesial.api.errors import Forbidden, RateLimited, Unauthenticated, ValidationFailed
from mesial.api.middleware.audit import event_of, log
from mesial.api.runtime import Runtime
from mesial.api.services.scope import OPAQUE_ID_RE, TenantScope
from mesial.api.types import AuditMark, Principal, Role
from mesial.common.audit import PLATFORM_TENANT
from mesial.common.errors import MesialError, ServiceError


@dataclass(frozen=True)
class Spec:
    method: str
    path: str
    summary: str
    roles: frozenset[Role] = frozenset()
    public: bool = False
    action: str | None = None
    resource_type: str = ""
    id_param: str | None = None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    also: tuple[tuple[int, str], ...] = ()  # further success statuses (same response model) and when
    raw_body: tuple[str, ...] = ()  # media types of a streamed body (uploads)
    produces: str = "application/json"
    tags: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class Call:
    request: Request
    runtime: Runtime
    principal: Principal | None
    mark: AuditMark | None
    body: Any = None
    query: Any = None

    @property
    def me(self) -> Principal:
        if self.principal is None:
            raise Unauthenticated("credential required")
        return self.principal

    @property
    def scope(self) -> TenantScope:
        return TenantScope(self.me)

    def param(self, name: str) -> str:
        return str(self.request.path_params[name])

    def audit(self, resource_id: str | None = None, **details: str | int | float | bool) -> None:
        if self.mark is not None:
            if resource_id is not None:
                self.mark.resource_id = resource_id
            self.mark.details.update(details)

    async def commit(
        self, change: Change, status: int, *, resource_id: str | None = None, **details: str | int | float | bool
    ) -> None:
        """Run ``change`` and append this request's audit event (answered ``status``, with ``details``,
        naming ``resource_id`` if given: what the change makes) in one database transaction, for a
        change that must not outlive a failed append (a scan's deletion: gone without its
        ``scan.deleted``; a key issued without its ``key.issued``). A failed append undoes the change
        and is a 503 naming the request id in the log, as the middleware's; the middleware then
        appends nothing for a success it did not see. A refusal raised by ``change`` undoes it too
        and reaches the client as itself, audited by the middleware."""
        mark = self.mark
        if mark is None or mark.tenant is None:
            raise RuntimeError("Call.commit is for an audited route of an authenticated caller")
        mark.details.update(details)
        event = event_of(mark, self.request.scope.get("state", {}), status)
        if resource_id is not None:
            # on the event only: a refused change made nothing, and the mark's refusal names nothing
            event = dataclasses.replace(event, resource_id=resource_id)
        try:
            await self.runtime.need_collector().append_unless(event, None, change)
        except MesialError:
            raise
        except Exception as exc:
            log.error("audit append failed for request %s: %s", event.request_id, type(exc).__name__)
            raise ServiceError("audit") from exc
        mark.recorded = True


Handler = Callable[[Call], Awaitable[Response]]


def _errors(exc: ValidationError, where: str) -> list[dict[str, Any]]:
    return [
        {"loc": [where, *[str(p) for p in err["loc"]]], "msg": err["msg"], "type": err["type"]} for err in exc.errors()
    ]


async def _principal(request: Request, runtime: Runtime) -> Principal:
    """The caller, from its credential. Failures spend the address's failure budget; once it is
    spent they are 429, but a valid credential from that address is still accepted: 30 bad
    requests from one NAT or untrusted proxy must not lock out a whole clinic."""
    ip = request.state.client_ip
    try:
        token = credential_of(request.headers)
        if token is None:
            raise Unauthenticated("credential required")
        return await authenticate(token, runtime.oidc)
    except Unauthenticated:
        wait = runtime.auth_failures.retry_after(ip)
        if wait:
            raise RateLimited(wait) from None
        raise


def endpoint(spec: Spec) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    def decorate(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def wrapped(request: Request) -> Response:
            runtime: Runtime = request.app.state.runtime
            request.state.route = spec.path
            mark = None
            if spec.action:
                resource = str(request.path_params.get(spec.id_param, "")) if spec.id_param else ""
                # The path is client text: only an opaque id may enter the audit chain (never a name).
                resource = resource if OPAQUE_ID_RE.fullmatch(resource) else "(malformed)" if resource else ""
                mark = AuditMark(spec.action, spec.resource_type, resource_id=resource)
                request.state.audit = mark
            principal = None
            if not spec.public:
                principal = await _principal(request, runtime)
                if mark is not None:
                    mark.tenant = principal.org_name or PLATFORM_TENANT
                    mark.actor = principal.actor
                runtime.per_key.check(principal.key_id or principal.actor)
                if principal.role not in spec.roles:
                    raise Forbidden(f"role {principal.role.value} may not call this route")
            call = Call(request, runtime, principal, mark)
            if spec.query is not None:
                try:
                    call.query = spec.query.model_validate(dict(request.query_params))
                except ValidationError as exc:
                    raise ValidationFailed("invalid query parameters", details=_errors(exc, "query")) from None
            if spec.body is not None:
                raw = await request.body()
                try:
                    call.body = spec.body.model_validate_json(raw or b"{}")
                except ValidationError as exc:
                    raise ValidationFailed("invalid request body", details=_errors(exc, "body")) from None
            return await handler(call)

        wrapped.spec = spec  # type: ignore[attr-defined]
        return wrapped

    return decorate
