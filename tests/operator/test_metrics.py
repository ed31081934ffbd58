"""Operator observability: /metrics and /readyz from the running operator, handler outcomes and
durations, phases, service errors and retries, and an Event for every permanent failure."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesial.common.audit_sinks import JsonlAuditSink
from mesial.common.errors import VaultUnavailable
from mesial.common.services import free_port
from mesial.common.settings import Settings
from mesial.operator import metrics
from mesial.operator.k8s import K8s
from mesial.operator.runtime import Runtime
from mesial.operator.testing import Harness, emulated
from tests.operator.conftest import eventually, organization_ready
from tests.operator.helpers import events, organization
from tests.operator.test_scanjob import scanjob


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples (the server runs in this event loop: the request goes from a thread)."""
    url = f"http://127.0.0.1:{port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def server() -> AsyncIterator[int]:
    port = free_port()
    srv = metrics.MetricsServer("127.0.0.1", port)
    await srv.start()
    yield port
    await srv.stop()


async def test_metrics_and_readiness_of_the_running_operator(harness: Harness, server: int, org_name: Any) -> None:
    def ready_status() -> int:
        try:
            return int(urllib.request.urlopen(f"http://127.0.0.1:{server}/readyz", timeout=5).status)
        except urllib.error.HTTPError as exc:
            return exc.code

    async def is_ready() -> bool:
        return await asyncio.to_thread(ready_status) == 200

    await eventually(is_ready)
    k8s = harness.client
    name = org_name("metrics")
    await organization_ready(k8s, name)
    await k8s.create(scanjob("case-m", f"mesial-org-{name}"))

    async def counted() -> dict[Any, float] | None:
        samples = await scrape(server)
        phase = value(samples, "mesial_operator_organizations_by_phase", phase="Ready")
        jobs = sum(
            value(samples, "mesial_operator_scanjobs_by_phase", phase=p) for p in ("Pending", "Running", "Failed")
        )
        return samples if phase >= 1 and jobs >= 1 else None

    samples = await eventually(counted)
    ok = {"resource": "organizations", "handler": "reconcile", "outcome": "success"}
    assert value(samples, "mesial_operator_reconciles_total", **ok) >= 1
    assert (
        value(
            samples, "mesial_operator_reconcile_duration_seconds_count", resource="organizations", handler="reconcile"
        )
        >= 1
    )
    assert value(samples, "mesial_operator_ready") == 1
    assert ("mesial_operator_handlers_in_flight", (("resource", "organizations"),)) in samples


async def test_service_failures_are_counted_and_retries_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    posted: list[tuple[str, str]] = []
    monkeypatch.setattr(kopf, "event", lambda body, *, type, reason, message: posted.append((reason, message)))
    outcomes = iter([VaultUnavailable("Vault at x did not answer"), None])

    async def handler(**_: Any) -> None:
        exc = next(outcomes)
        if exc is not None:
            raise kopf.TemporaryError(str(exc)) from exc

    run = metrics.instrumented("organizations", "unit", handler)
    body = {"metadata": {"name": "unit-org"}}
    before = metrics.SERVICE_ERRORS.labels("vault", "VaultUnavailable")._value.get()
    with pytest.raises(kopf.TemporaryError):
        await run(body=body)
    assert metrics.SERVICE_ERRORS.labels("vault", "VaultUnavailable")._value.get() == before + 1
    assert "/unit-org" in metrics.STATE.retrying["organizations"]
    await run(body=body)
    assert "/unit-org" not in metrics.STATE.retrying["organizations"]
    assert posted == []  # a temporary failure is the handler's to report


@pytest.fixture
async def broken_harness(operator_settings: Settings, tmp_path: Path) -> AsyncIterator[Harness]:
    """The operator misconfigured: its pull secrets folder does not exist (a permanent failure)."""
    op = operator_settings.operator.model_copy(update={"pull_secrets_dir": tmp_path / "missing"})
    settings = operator_settings.model_copy(update={"operator": op})

    async def factory(k8s: K8s) -> Runtime:
        return await Runtime.create(settings, k8s, audit=JsonlAuditSink(settings.operator.audit_jsonl_path))

    async with emulated(settings, factory) as h:
        yield h


async def test_a_permanent_failure_is_an_event_on_the_object(broken_harness: Harness, org_name: Any) -> None:
    k8s = broken_harness.client
    name = org_name("broken")
    await k8s.create(organization(name))

    async def permanent() -> list[dict[str, Any]]:
        return [e for e in await events(k8s, name) if e["reason"] == "PermanentFailure"]

    (event, *_) = await eventually(permanent)
    assert event["type"] == "Warning"
    assert "operator.pull_secrets_dir" in event["message"] and "reconcile" in event["message"]
