"""Cluster mode: a job becomes a ScanJob in the tenant namespace (against the kmock emulator)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mesial.api.app import create_app
from mesial.api.executor import ClusterDispatcher
from mesial.api.kube import KubeApi
from tests.api.conftest import Harness, bearer, make_settings

kmock = pytest.importorskip("kmock")
testing = pytest.importorskip("mesial.operator.testing")


@pytest.fixture
async def emulator() -> AsyncIterator[str]:
    emulator = testing.Emulator()
    testing.declare_resources(emulator)
    async with emulator, kmock.Server(emulator):
        yield str(emulator.url).rstrip("/")


@pytest.fixture
async def cluster_api(api: Harness, emulator: str, tmp_path: Path) -> AsyncIterator[tuple[Harness, KubeApi]]:
    base = api.runtime.settings
    kube = KubeApi(emulator, token="emulated")
    app = create_app(make_settings(base, tmp_path, base.database_url), dispatcher=ClusterDispatcher.for_api(kube))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("198.51.100.2", 1))
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
            harness = Harness(app, client, api.backend)
            harness._platform = await api.platform_key()
            yield harness, kube


async def test_job_becomes_a_scanjob_and_cancel_deletes_it(cluster_api: tuple[Harness, KubeApi]) -> None:
    api, kube = cluster_api
    org, admin = await api.new_org()
    case = await api.case(admin)
    body: dict[str, Any] = {"upper": case["upper"], "lower": case["lower"], "bites": [case["bite"]]}
    job = (
        await api.client.post("/v1/jobs", json={**body, "options": {"optimise": False}}, headers=bearer(admin))
    ).json()
    assert job["state"] == "queued"
    name = job["id"].replace("_", "-")
    manifest = {"metadata": {"namespace": f"mesial-org-{org}", "name": name}}
    stored = await kube.get(manifest)
    assert stored is not None and stored["kind"] == "ScanJob"
    assert stored["spec"]["scans"] == {"upper": case["upper"], "lower": case["lower"], "bites": [case["bite"]]}
    assert stored["metadata"]["labels"]["mesial.dev/job-id"] == job["id"]
    # the options in the CRD's words, which the operator hands to `mesial job run`
    assert stored["spec"]["options"] == {"contactThresholdMm": 0.1, "optimiseBite": False}
    cancelled = await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer(admin))
    assert cancelled.json()["state"] == "cancelled"
    assert await kube.get(manifest) is None
