"""Cluster mode: a job becomes a ScanJob in the tenant namespace (against the kmock emulator)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mesial.api.app import db_context
from mesial.api.executor import ClusterDispatcher
from mesial.api.kube import KubeApi
from mesial.api.models import AuditEventRow, Job
from mesial.api.services import orgs
from mesial.common.errors import ServiceError
from tests.api.conftest import Harness, bearer, refusing, variant_of

kmock = pytest.importorskip("kmock")
testing = pytest.importorskip("mesial.operator.testing")

Manifested = Callable[[dict[str, Any]], Awaitable[None]]  # a ScanJob client's create or delete


@pytest.fixture
async def emulator() -> AsyncIterator[str]:
    emulator = testing.Emulator()
    testing.declare_resources(emulator)
    async with emulator, kmock.Server(emulator):
        yield str(emulator.url).rstrip("/")


def cluster(
    api: Harness, kube: KubeApi, tmp_path: Path, *, create: Manifested | None = None, delete: Manifested | None = None
) -> contextlib.AbstractAsyncContextManager[Harness]:
    """An app whose jobs become ScanJobs through ``kube`` (its create and delete, unless given others)."""
    dispatcher = ClusterDispatcher(create or kube.create, delete or kube.delete)
    return variant_of(api, tmp_path, {}, dispatcher)


@pytest.fixture
async def cluster_api(api: Harness, emulator: str, tmp_path: Path) -> AsyncIterator[tuple[Harness, KubeApi]]:
    kube = KubeApi(emulator, token="emulated")
    async with cluster(api, kube, tmp_path) as harness:
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


async def _job_body(api: Harness, admin: str) -> dict[str, Any]:
    case = await api.case(admin)
    return {"upper": case["upper"], "lower": case["lower"], "bites": [case["bite"]]}


def _job_id(manifest: dict[str, Any]) -> str:
    return str(manifest["metadata"]["labels"]["mesial.dev/job-id"])


async def _job_events(api: Harness, org: str, job_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    with db_context(api.app):
        found = await AuditEventRow.filter(tenant=org, resource_id=job_id).order_by("sequence")
    return [
        (e.action, e.actor.split(":")[0] if e.actor.startswith("key:") else e.actor, json.loads(e.details))
        for e in found
    ]


async def test_a_job_whose_event_cannot_be_written_is_not_created_and_never_becomes_a_scanjob(
    api: Harness, emulator: str, tmp_path: Path
) -> None:
    """docs/audit.md: a job's row is written in the transaction that appends its ``job.created``, and the
    job is handed over (made a ScanJob, or queued on the local executor: the same seam) only after that
    commit. With that append failing the client gets the 503 of a failed append, and there is no job
    and no ScanJob; asked again, one job is created, with one event, and becomes its ScanJob."""
    kube = KubeApi(emulator, token="emulated")
    made: list[str] = []

    async def create(manifest: dict[str, Any]) -> None:
        made.append(_job_id(manifest))
        await kube.create(manifest)

    async with cluster(api, kube, tmp_path, create=create) as app:
        org, admin = await app.new_org()
        body = await _job_body(app, admin)
        with refusing("job.created", org):
            refused = await app.client.post("/v1/jobs", json=body, headers=bearer(admin))
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["request_id"] == refused.headers["x-request-id"]
        assert made == []  # nothing handed over
        assert (await app.client.get("/v1/jobs", headers=bearer(admin))).json()["items"] == []

        done = await app.client.post("/v1/jobs", json=body, headers=bearer(admin))
        assert done.status_code == 201, done.text
        job = done.json()
        assert made == [job["id"]] and job["state"] == "queued"
        assert await _job_events(app, org, job["id"]) == [("job.created", "key", {"status": 201})]


async def test_a_job_the_cluster_does_not_take_is_failed_with_an_event_of_its_own(
    api: Harness, emulator: str, tmp_path: Path
) -> None:
    """The hand-over comes after the commit: when the ScanJob is asked for, the job's row is queued and
    its ``job.created`` in the chain. If the Kubernetes API refuses it (or does not answer), the job is
    failed in the transaction of a ``job.failed`` of its own (``service:executor``, reason
    ``not_handed_over``), a ScanJob made all the same is deleted, and the client gets a 503."""
    kube = KubeApi(emulator, token="emulated")
    seen: list[tuple[str, list[str]]] = []
    deleted: list[str] = []

    async def create(manifest: dict[str, Any]) -> None:
        job_id = _job_id(manifest)
        row = await Job.get(id=job_id)
        seen.append((row.state, [action for action, _, _ in await _job_events(app, org, job_id)]))
        raise ServiceError("Kubernetes API unreachable: URLError")

    async def delete(manifest: dict[str, Any]) -> None:
        deleted.append(_job_id(manifest))
        await kube.delete(manifest)

    async with cluster(api, kube, tmp_path, create=create, delete=delete) as app:
        org, admin = await app.new_org()
        refused = await app.client.post("/v1/jobs", json=await _job_body(app, admin), headers=bearer(admin))
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "unavailable"
        assert seen == [("queued", ["job.created"])]  # handed over after the commit
        [job] = (await app.client.get("/v1/jobs", headers=bearer(admin))).json()["items"]
        assert (job["state"], job["message"]) == ("failed", "not started: the job runner did not take it")
        assert deleted == [job["id"]]
        assert await _job_events(app, org, job["id"]) == [
            ("job.created", "key", {"status": 201}),
            ("job.failed", "service:executor", {"reason": "not_handed_over"}),
        ]


async def _operator_key(api: Harness) -> str:
    with db_context(api.app):
        _, key = await orgs.issue_service_key("operator")
    return key


async def test_a_cancellation_is_in_the_row_before_the_cluster_is_told_and_no_report_undoes_it(
    api: Harness, emulator: str, tmp_path: Path
) -> None:
    """``job.cancel_requested``: the row says ``cancelled`` in the transaction of that event, and only
    then is the ScanJob deleted. The operator's report of the job's end (the cluster stopped it: failed;
    or it finished first: succeeded), here arriving while the ScanJob is being deleted and again after,
    never overwrites ``cancelled`` and appends no ``job.failed`` or ``job.succeeded``."""
    kube = KubeApi(emulator, token="emulated")
    reported: list[str] = []

    async def delete(manifest: dict[str, Any]) -> None:
        report = {"state": "failed", "tenant": org, "message": "Job deleted"}
        url = f"/internal/v1/jobs/{_job_id(manifest)}/status"
        answer = await app.client.post(url, json=report, headers=bearer(operator))
        assert answer.status_code == 200, answer.text
        reported.append(answer.json()["state"])
        await kube.delete(manifest)

    async with cluster(api, kube, tmp_path, delete=delete) as app:
        operator = await _operator_key(app)
        org, admin = await app.new_org()
        job = (await app.client.post("/v1/jobs", json=await _job_body(app, admin), headers=bearer(admin))).json()
        cancelled = await app.client.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer(admin))
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "cancelled"
        assert reported == ["cancelled"]  # the row said so when the cluster was told
        late = {"state": "succeeded", "tenant": org}
        answer = await app.client.post(f"/internal/v1/jobs/{job['id']}/status", json=late, headers=bearer(operator))
        assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
        assert (await app.client.get(f"/v1/jobs/{job['id']}", headers=bearer(admin))).json()["state"] == "cancelled"
        assert [action for action, _, _ in await _job_events(app, org, job["id"])] == [
            "job.created",
            "job.cancel_requested",
        ]


async def test_a_cancellation_the_cluster_did_not_hear_is_told_again_when_asked_again(
    api: Harness, emulator: str, tmp_path: Path
) -> None:
    """If deleting the ScanJob fails after the row's ``cancelled`` and its event are committed, the client
    gets a 503 and the job stays cancelled (one ``job.cancel_requested``); asked again, the answer is the
    409 of a cancelled job, and the cluster is told again: the ScanJob is gone."""
    kube = KubeApi(emulator, token="emulated")
    calls: list[str] = []

    async def delete(manifest: dict[str, Any]) -> None:
        calls.append(_job_id(manifest))
        if len(calls) == 1:
            raise ServiceError("Kubernetes API unreachable: URLError")
        await kube.delete(manifest)

    async with cluster(api, kube, tmp_path, delete=delete) as app:
        org, admin = await app.new_org()
        job = (await app.client.post("/v1/jobs", json=await _job_body(app, admin), headers=bearer(admin))).json()
        manifest = {"metadata": {"namespace": f"mesial-org-{org}", "name": job["id"].replace("_", "-")}}
        first = await app.client.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer(admin))
        assert first.status_code == 503, first.text
        assert (await app.client.get(f"/v1/jobs/{job['id']}", headers=bearer(admin))).json()["state"] == "cancelled"
        assert await kube.get(manifest) is not None
        again = await app.client.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer(admin))
        assert again.status_code == 409, again.text
        assert calls == [job["id"], job["id"]] and await kube.get(manifest) is None
        events = [(a, d["status"]) for a, _, d in await _job_events(app, org, job["id"]) if a == "job.cancel_requested"]
        assert events == [("job.cancel_requested", 200), ("job.cancel_requested", 409)]
