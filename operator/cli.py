"""``mesial operator``: run the kopf operator with Mesial's settings."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import click
import kopf

from mesial.common.settings import get_settings
from mesial.operator.k8s import K8s
from mesial.operator.main import build_registry
from mesial.operator.metrics import MetricsServer
from mesial.operator.runtime import Runtime


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message (and the object, from kopf)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        k8s_ref = getattr(record, "k8s_ref", None)
        if k8s_ref:
            entry["object"] = k8s_ref
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry, default=str)


@click.group()
def operator() -> None:
    """The Kubernetes operator (Organizations, ScanJobs, RetentionPolicies)."""


@operator.command()
@click.option("--standalone/--peering", default=None, help="Override operator.standalone (one replica, no peering).")
@click.option("--liveness", default=None, help="Override operator.liveness_endpoint, e.g. http://0.0.0.0:8080/healthz.")
def run(standalone: bool | None, liveness: str | None) -> None:
    """Run the operator cluster-wide until interrupted (in a pod or against the kubeconfig)."""
    settings = get_settings()
    op = settings.operator
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if op.log_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    log = logging.getLogger("mesial.operator")
    if op.api_configured:
        log.info("reporting ScanJobs and audit receipts to the API at %s", op.api_url)
    elif op.api_url:
        log.warning(
            "operator.api_url is set but no service key: receipts go to %s, no job reports", op.audit_jsonl_path
        )
    else:
        log.info("no API configured: receipts go to %s, no job reports", op.audit_jsonl_path)
    asyncio.run(
        _run(settings, standalone if standalone is not None else op.standalone, liveness or op.liveness_endpoint)
    )


async def _run(settings: object, standalone: bool, liveness: str) -> None:
    from mesial.common.settings import Settings

    assert isinstance(settings, Settings)
    runtime = await Runtime.create(settings, await K8s.from_environment())
    server = None
    if settings.operator.metrics_port:
        server = MetricsServer(settings.operator.metrics_host, settings.operator.metrics_port)
        await server.start()
    try:
        await kopf.operator(
            registry=build_registry(settings),
            clusterwide=True,
            standalone=standalone,
            # kopf makes peering mandatory when given a peering name, and with standalone (no
            # peering resources watched) then pauses every watch-stream for good ("peering CRD is
            # missing"): the name only goes with peering.
            peering_name=None if standalone else settings.operator.peering_name,
            liveness_endpoint=liveness or None,
            memo=kopf.Memo(runtime=runtime),
        )
    finally:
        if server is not None:
            await server.stop()
        await runtime.close()
