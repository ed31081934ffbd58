"""Builds the Starlette app: routes, middleware order, lifespan (database, keys, store, executor).

Middleware, outermost first (Starlette's ServerErrorMiddleware sits outside them all)::

    DatabaseContext   the tortoise context of this app, current for the request
    RequestContext    request id (X-Request-ID) and client address
    SecurityHeaders   HSTS, CSP, X-Frame-Options, nosniff, Referrer-/Permissions-Policy
    MetricsMiddleware counts and latencies per route template
    AuditTrail        one audit event per audited request, before the response leaves
    ErrorBodies       any exception → sanitized JSON error with the request id
    IpRateLimit       per-address token buckets (refusals spend a tighter one, in the routes)
    BodyLimit         413 above the route's body limit
    (router)          per-route authentication, per-key rate limit, role, validation
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from tortoise.context import TortoiseContext

from mesial.api import migrations
from mesial.api.audit.collector import AuditCollector
from mesial.api.auth import OidcVerifier
from mesial.api.errors import ApiError, error_response
from mesial.api.executor import ClusterDispatcher, Dispatcher, LocalExecutor
from mesial.api.kube import KubeApi
from mesial.api.middleware.audit import AuditTrail
from mesial.api.middleware.context import DatabaseContext, RequestContext
from mesial.api.middleware.errors import ErrorBodies
from mesial.api.middleware.headers import SECURITY_HEADERS, SecurityHeaders
from mesial.api.middleware.limits import BodyLimit, IpRateLimit, RateLimiter
from mesial.api.middleware.metrics import Metrics, MetricsMiddleware
from mesial.api.routes import all_routes
from mesial.api.runtime import Runtime
from mesial.api.services.links import LinkSigner
from mesial.api.services.retention import sweep_local
from mesial.common.audit import AuditEvent
from mesial.common.errors import ConfigurationError
from mesial.common.objectstore import ObjectStore
from mesial.common.settings import Mode, Settings
from mesial.common.vault import TenantKeys

log = logging.getLogger("mesial.api")
UPLOAD_PATHS = ("/v1/scans",)


class _LateSink:
    """The audit sink of the middleware: the collector once the lifespan has made it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def append(self, event: AuditEvent) -> None:
        await self.runtime.need_collector().append(event)


async def open_database(settings: Settings, *, migrate: bool) -> Any:
    """A tortoise context on ``settings.database_url`` with the API models, migrated if asked."""
    if settings.database_url.startswith("sqlite://"):
        path = settings.database_url.removeprefix("sqlite://").split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)  # local mode: .mesial/ on first start
    url = settings.database_url
    if url.startswith("sqlite://") and "recursive_triggers" not in url:
        # REPLACE's implicit deletes fire DELETE triggers too (the audit tables' triggers refuse them anyway)
        url += ("&" if "?" in url else "?") + "recursive_triggers=ON"
    context = TortoiseContext()
    with _current(context):
        await context.init(db_url=url, modules={"models": ["mesial.api.models"]})
        if migrate:
            await migrations.migrate(context.db())
    return context


@contextlib.contextmanager
def db_context(app: Starlette) -> Iterator[Any]:
    """Make a started app's database current outside a request (CLI, tests, scripts)."""
    with _current(app.state.runtime.tortoise) as context:
        yield context


@contextlib.contextmanager
def _current(context: Any) -> Iterator[Any]:
    from tortoise.context import _current_context

    token = _current_context.set(context)
    try:
        yield context
    finally:
        _current_context.reset(token)


async def _checkpoints(collector: AuditCollector, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await collector.checkpoint_all()
        except Exception as exc:  # a missed checkpoint is retried at the next tick
            log.warning("scheduled audit checkpoint failed: %s", type(exc).__name__)


async def _retention(store: ObjectStore, collector: AuditCollector, interval: float) -> None:
    """Local mode's retention (no operator): every organization by its stored retention, once right
    after the start and then every ``interval`` (a process restarted more often than that still sweeps)."""
    while True:
        try:
            report = await sweep_local(store, collector)
            log.info("retention sweep: %s", report.as_status())
        except Exception as exc:  # retried at the next tick
            log.warning("scheduled retention sweep failed: %s", type(exc).__name__)
        await asyncio.sleep(interval)


def create_app(
    settings: Settings, *, keys: TenantKeys | None = None, dispatcher: Dispatcher | None = None
) -> Starlette:
    api = settings.api
    secret = api.link_secret.get_secret_value().encode() or None
    runtime = Runtime(
        settings=settings,
        links=LinkSigner(secret, api.link_ttl_s),
        oidc=OidcVerifier(api),
        per_key=RateLimiter(api.rate_per_key_per_min),
        auth_failures=RateLimiter(api.rate_auth_per_ip_per_min),
        metrics=Metrics(),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        context = await open_database(settings, migrate=api.migrate_on_start)
        runtime.tortoise = context
        with _current(context):
            async with contextlib.AsyncExitStack() as stack:
                stack.push_async_callback(context.close_connections)
                tenant_keys: TenantKeys = (
                    keys if keys is not None else await asyncio.to_thread(TenantKeys, settings.vault)
                )
                await asyncio.to_thread(tenant_keys.ensure_transit)
                await asyncio.to_thread(tenant_keys.ensure_signing_key)
                store = await stack.enter_async_context(ObjectStore(settings.store, tenant_keys))
                collector = AuditCollector(tenant_keys, migrations.dialect_of(context.db()))
                chosen: Dispatcher
                if dispatcher is not None:
                    chosen = dispatcher
                elif settings.mode is Mode.local:
                    chosen = LocalExecutor(settings, store, collector)
                else:
                    try:
                        chosen = ClusterDispatcher.for_api(KubeApi.in_cluster())
                    except ConfigurationError as exc:  # API usable; job creation says why it cannot
                        log.warning("%s", exc)
                        chosen = ClusterDispatcher()
                runtime.keys, runtime.store, runtime.collector, runtime.dispatcher = (
                    tenant_keys,
                    store,
                    collector,
                    chosen,
                )
                await chosen.start()
                stack.push_async_callback(chosen.stop)
                if api.checkpoint_interval_s > 0:
                    task = asyncio.create_task(_checkpoints(collector, api.checkpoint_interval_s))
                    stack.callback(task.cancel)
                if settings.mode is Mode.local and api.retention_interval_s > 0:
                    sweeper = asyncio.create_task(_retention(store, collector, api.retention_interval_s))
                    stack.callback(sweeper.cancel)
                yield

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = ApiError(exc.detail if isinstance(exc.detail, str) else "")
        error.status, error.code = (
            exc.status_code,
            {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request"),
        )
        return error_response(error, request.state.request_id)

    async def server_error(request: Request, exc: Exception) -> Response:
        # Starlette's ServerErrorMiddleware, outside every middleware above: an exception raised in
        # the outermost ones lands here, so this answer gets the body and headers they would have added.
        response = error_response(exc, str(request.scope.get("state", {}).get("request_id", "")))
        response.headers.update({name.decode(): value.decode() for name, value in SECURITY_HEADERS})
        return response

    app = Starlette(
        routes=all_routes(),
        middleware=[
            Middleware(DatabaseContext, tortoise_context=lambda: runtime.tortoise),
            Middleware(RequestContext, trusted_proxies=api.trusted_proxies),
            Middleware(SecurityHeaders),
            Middleware(MetricsMiddleware, metrics=runtime.metrics),
            Middleware(AuditTrail, sink=_LateSink(runtime)),
            Middleware(ErrorBodies),
            Middleware(IpRateLimit, per_ip=RateLimiter(api.rate_per_ip_per_min)),
            Middleware(
                BodyLimit,
                default_limit=api.max_json_bytes,
                upload_limit=api.max_upload_bytes,
                upload_paths=UPLOAD_PATHS,
            ),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    # Starlette answers /v1/scans/ with a 307 to a URL built from the request's Host header:
    # a client-controlled redirect target. Paths are exact instead (404).
    app.router.redirect_slashes = False
    app.state.runtime = runtime
    return app
