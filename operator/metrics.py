"""The operator's Prometheus metrics, its readiness, and an Event for every permanent failure.

:func:`instrument` wraps every resource handler of a built registry (no handler module knows
about metrics): each run is counted by resource, handler id and outcome (``success``,
``temporary``, ``permanent``, ``error`` for an exception kopf will retry as it is) and timed; a
failure's service (Vault, the object store, the Kubernetes API) is counted; while it runs it is
in flight, and an object whose last run failed temporarily waits for its retry (the two gauges
together are the operator's queue depth). A permanent failure, or an unexpected exception,
becomes a Warning Event on the object: kopf itself only logs them. Watch-event handlers keep the
phase of every Organization and ScanJob for the ``..._by_phase`` gauges.

:class:`MetricsServer` serves ``/metrics`` (Prometheus text format) and ``/readyz`` (200 once
kopf's startup handlers have run and until it stops) on ``operator.metrics_port``; the chart
points its readiness probe, its ServiceMonitor and the PrometheusRule's alerts
(docs/operator.md, "Metrics and alerts") at them.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mesial.common.errors import StorageError, VaultError
from mesial.operator.k8s import K8sError

REGISTRY = CollectorRegistry(auto_describe=True)
PREFIX = "mesial_operator"

RECONCILES = Counter(
    f"{PREFIX}_reconciles",
    "Handler runs, by resource, handler id and outcome (success, temporary, permanent, error).",
    ["resource", "handler", "outcome"],
    registry=REGISTRY,
)
DURATION = Histogram(
    f"{PREFIX}_reconcile_duration_seconds",
    "Duration of handler runs, by resource and handler id.",
    ["resource", "handler"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
SERVICE_ERRORS = Counter(
    f"{PREFIX}_service_errors",
    "Handler failures caused by a service (vault, store, kubernetes), by error type.",
    ["service", "error"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    f"{PREFIX}_handlers_in_flight", "Handler runs in progress, by resource.", ["resource"], registry=REGISTRY
)
RETRIES_PENDING = Gauge(
    f"{PREFIX}_retries_pending",
    "Objects whose last handler run failed temporarily and wait for kopf's retry, by resource.",
    ["resource"],
    registry=REGISTRY,
)
RECEIPTS = Counter(
    f"{PREFIX}_receipts",
    "Deletion receipts sent to the audit chain, by kind (retention, organization) and outcome (sent: the "
    "collector took it or holds it; failed: kept and sent again; conflict: the chain holds a different one; "
    "refused: the API refused it for good, dropped).",
    ["kind", "outcome"],
    registry=REGISTRY,
)
READY = Gauge(f"{PREFIX}_ready", "1 once the operator has started and until it stops.", registry=REGISTRY)

# The watched kinds whose phases are counted, and the phases each may report (0 when none).
PHASES: dict[str, tuple[str, ...]] = {
    "organizations": ("Provisioning", "Ready", "Degraded", "Terminating"),
    "scanjobs": ("Pending", "Running", "Succeeded", "Failed"),
}


class PhaseCollector(Collector):
    """``<prefix>_organizations_by_phase`` and ``_scanjobs_by_phase`` from the last watch event of each object."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, str]] = {kind: {} for kind in PHASES}
        self.retrying: dict[str, set[str]] = {}
        self.ready = False

    def clear(self) -> None:
        for known in self.phases.values():
            known.clear()
        self.retrying.clear()
        RETRIES_PENDING.clear()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for kind, phases in PHASES.items():
            family = GaugeMetricFamily(
                f"{PREFIX}_{kind}_by_phase", f"{kind.capitalize()} by status phase.", labels=["phase"]
            )
            counts = dict.fromkeys(phases, 0)
            for phase in self.phases[kind].values():
                counts[phase or "None"] = counts.get(phase or "None", 0) + 1
            for phase, count in counts.items():
                family.add_metric([phase], count)
            yield family


STATE = PhaseCollector()
REGISTRY.register(STATE)


def _key(body: Any) -> str:
    meta = body.get("metadata", {}) if isinstance(body, dict) or hasattr(body, "get") else {}
    return f"{meta.get('namespace') or ''}/{meta.get('name', '')}"


def service_of(exc: BaseException) -> str | None:
    """Which service a handler failure came from (None: none of ours)."""
    for cause in (exc, exc.__cause__, exc.__context__):
        if isinstance(cause, VaultError):
            return "vault"
        if isinstance(cause, StorageError):
            return "store"
        if isinstance(cause, K8sError):
            return "kubernetes"
    return None


def _retrying(resource: str, key: str, waiting: bool) -> None:
    keys = STATE.retrying.setdefault(resource, set())
    (keys.add if waiting else keys.discard)(key)
    RETRIES_PENDING.labels(resource).set(len(keys))


def instrumented(resource: str, handler: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``fn`` counted, timed and, on a permanent or unexpected failure, reported as an Event."""

    @functools.wraps(fn)
    async def run(**kwargs: Any) -> Any:
        body = kwargs.get("body")
        key = _key(body) if body is not None else ""
        IN_FLIGHT.labels(resource).inc()
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await fn(**kwargs)
            outcome = "success"
            return result
        except kopf.TemporaryError as exc:
            outcome = "temporary"
            _count_service(exc)
            raise
        except kopf.PermanentError as exc:
            outcome = "permanent"
            _count_service(exc)
            _post(body, "PermanentFailure", f"{handler}: {exc}")
            raise
        except Exception as exc:
            _count_service(exc)
            _post(body, "HandlerError", f"{handler}: {type(exc).__name__}: {exc}")
            raise
        finally:
            IN_FLIGHT.labels(resource).dec()
            DURATION.labels(resource, handler).observe(time.perf_counter() - started)
            RECONCILES.labels(resource, handler, outcome).inc()
            if key:
                _retrying(resource, key, outcome in ("temporary", "error"))

    return run


def _count_service(exc: BaseException) -> None:
    service = service_of(exc)
    if service is not None:
        cause = exc.__cause__ or exc
        SERVICE_ERRORS.labels(service, type(cause).__name__).inc()


def _post(body: Any, reason: str, message: str) -> None:
    if body is not None:
        kopf.event(body, type="Warning", reason=reason, message=" ".join(message.split())[:1000])


def instrument(registry: kopf.OperatorRegistry) -> None:
    """Wrap every resource handler of ``registry`` (see :func:`instrumented`) and register the phase
    watchers and the readiness switches. Call once, after every handler is registered."""
    for name in ("_changing", "_spawning"):
        sub = getattr(registry, name, None)
        handlers = getattr(sub, "_handlers", None)
        if handlers is None:
            raise RuntimeError(f"kopf's registry has no {name}._handlers: metrics cannot wrap the handlers")
        for i, h in enumerate(handlers):
            selector = h.selector
            plural = (selector.plural or selector.any_name or "unknown") if selector is not None else "unknown"
            handlers[i] = dataclasses.replace(h, fn=instrumented(str(plural), str(h.id), h.fn))
    for plural in PHASES:
        kopf.on.event("mesial.dev", "v1alpha1", plural, id=f"metrics-{plural}", registry=registry)(
            functools.partial(_observe, plural)
        )
    kopf.on.startup(registry=registry, id="metrics-ready")(_started)
    kopf.on.cleanup(registry=registry, id="metrics-stopping")(_stopping)


async def _observe(plural: str, type: str | None, body: kopf.Body, **_: Any) -> None:
    key = _key(body)
    if type == "DELETED":
        STATE.phases[plural].pop(key, None)
        _retrying(plural, key, False)
    else:
        STATE.phases[plural][key] = str((body.get("status") or {}).get("phase") or "None")


async def _started(**_: Any) -> None:
    STATE.clear()
    STATE.ready = True
    READY.set(1)


async def _stopping(**_: Any) -> None:
    STATE.ready = False
    READY.set(0)


class MetricsServer:
    """``/metrics`` and ``/readyz`` on ``host:port`` (aiohttp, in the operator's event loop)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/readyz", self._ready)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _ready(self, _: web.Request) -> web.Response:
        ready = STATE.ready
        return web.Response(status=200 if ready else 503, text="ready\n" if ready else "starting\n")
