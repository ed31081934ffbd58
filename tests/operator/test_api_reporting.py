"""Cluster mode end to end: the API makes a ScanJob, the operator runs it and reports back.

The real API app (PostgreSQL, OpenBao, SeaweedFS) is served by uvicorn on a local port,
behind a TCP proxy a test can take down; its ClusterDispatcher creates ScanJobs in the
kmock emulator the real operator watches. The operator holds a service key issued by
the API and reports each ScanJob state to ``POST /internal/v1/jobs/{id}/status``; its
deletion receipts go to the API's audit collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette

from mesial.api.app import create_app, db_context
from mesial.api.executor import ClusterDispatcher
from mesial.api.kube import KubeApi
from mesial.api.services import orgs
from mesial.api.types import Role
from mesial.common.audit_sinks import CollectorAuditSink
from mesial.common.contract import JobProgress, write_progress
from mesial.common.errors import ServiceError
from mesial.common.service_http import HttpRefused
from mesial.common.services import ServiceInfo, free_port
from mesial.common.settings import ApiSettings, OperatorSettings, Settings
from mesial.operator.k8s import K8s
from mesial.operator.metrics import RECONCILES
from mesial.operator.reporting import JobReporter
from mesial.operator.runtime import Runtime
from mesial.operator.sync.retention import receipt_event, refusal
from mesial.operator.testing import Harness, emulated
from tests.api.meshes import arch_stl
from tests.chart.test_chart import render, settings_from
from tests.operator.conftest import TcpProxy, eventually, organization_ready
from tests.operator.helpers import ORG, SCANJOB, events
from tests.operator.test_retention import policy, pstatus
from tests.operator.test_scanjob import JOB, scanjob, sj_status


def _stl() -> bytes:
    """An arch-shaped binary STL (the API accepts only valid meshes, and arches shaped like one)."""
    return arch_stl(b"mesial operator test")


@dataclass
class Api:
    """The API app being served, a client of it, and its keys."""

    app: Starlette
    client: httpx.AsyncClient
    port: int
    platform_key: str
    service_key: str
    kube: dict[str, KubeApi]

    async def new_org(self, name: str) -> str:
        """The organization in the API and the key of its org-admin."""
        auth = {"authorization": f"Bearer {self.platform_key}"}
        response = await self.client.post("/v1/orgs", json={"name": name}, headers=auth)
        assert response.status_code == 201, response.text
        response = await self.client.post(f"/v1/orgs/{name}/keys", json={"role": "org-admin"}, headers=auth)
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    async def upload(self, key: str, kind: str) -> str:
        """A scan of ``kind`` uploaded with ``key``: its id."""
        response = await self.client.post(
            "/v1/scans", params={"kind": kind}, content=_stl(),
            headers={"authorization": f"Bearer {key}", "content-type": "application/octet-stream"},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def submit(self, key: str) -> dict[str, Any]:
        """Three scans and a job over them."""
        ids = {kind: await self.upload(key, kind) for kind in ("upper", "lower", "bite")}
        body = {"upper": ids["upper"], "lower": ids["lower"], "bites": [ids["bite"]]}
        response = await self.client.post("/v1/jobs", json=body, headers={"authorization": f"Bearer {key}"})
        assert response.status_code in (201, 202), response.text
        return dict(response.json())

    async def job(self, key: str, job_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/jobs/{job_id}", headers={"authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def chain(self, tenant: str) -> list[dict[str, Any]]:
        """The events of a tenant's audit chain, in order (through the collector's export)."""
        with db_context(self.app):
            lines = [line async for line in self.app.state.runtime.need_collector().export(tenant, None, None)]
        records = [json.loads(line) for line in "".join(lines).splitlines() if line.strip()]
        return [r for r in records if r.get("type") == "event"]


@pytest.fixture
async def api(service_settings: Settings, postgres: ServiceInfo, tmp_path: Path) -> AsyncIterator[Api]:
    # The dispatcher's Kubernetes client is the emulator's, known once the operator harness starts.
    kube: dict[str, KubeApi] = {}

    async def create(manifest: dict[str, Any]) -> None:
        await kube["client"].create(manifest)

    async def delete(manifest: dict[str, Any]) -> None:
        await kube["client"].delete(manifest)

    api_settings = ApiSettings(
        checkpoint_interval_s=0, executor_recover_on_start=False, rate_per_key_per_min=100_000,
        rate_per_ip_per_min=100_000, rate_auth_per_ip_per_min=10_000,
    )  # fmt: skip
    settings = service_settings.model_copy(
        update={"data_dir": tmp_path / "api", "database_url": postgres.url, "api": api_settings}
    )
    app = create_app(settings, dispatcher=ClusterDispatcher(create, delete))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: _true(server.started), timeout=60)
        with db_context(app):
            _, platform = await orgs.issue_member_key(None, Role.platform_admin, None)
            _, service = await orgs.issue_service_key("operator")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield Api(app, client, port, platform, service, kube)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
async def api_proxy(api: Api) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(api.port)
    await proxy.up()
    yield proxy
    await proxy.down()


@pytest.fixture
async def cluster(operator_settings: Settings, api: Api, api_proxy: TcpProxy) -> AsyncIterator[Harness]:
    """The operator, configured with the API's URL (through the proxy) and its service key."""
    op = operator_settings.operator.model_copy(
        update={"api_url": api_proxy.url, "api_service_key": SecretStr(api.service_key), "api_timeout_s": 2.0}
    )
    settings = operator_settings.model_copy(update={"operator": op})

    async def factory(k8s: K8s) -> Runtime:
        return await Runtime.create(settings, k8s)

    async with emulated(settings, factory) as h:
        api.kube["client"] = KubeApi(h.url, token="emulated")
        yield h


async def _tenant(harness: Harness, api: Api, name: str) -> tuple[str, str]:
    """The organization in the API and its Organization in the cluster; (org-admin key, namespace)."""
    key = await api.new_org(name)
    return key, await organization_ready(harness.client, name)


async def _submitted(harness: Harness, api: Api, key: str, ns: str) -> tuple[dict[str, Any], str]:
    """A job submitted through the API, once the operator has made its Kubernetes Job: the API's job
    and its ScanJob's name without the ``scanjob-`` prefix."""
    job = await api.submit(key)
    sj = job["id"].replace("_", "-")
    await eventually(lambda: harness.client.get(*JOB, f"scanjob-{sj}", ns))
    return job, sj


async def _scanjob_of(harness: Harness, ns: str, name: str) -> dict[str, Any] | None:
    return await harness.client.get(*SCANJOB, name, ns)


async def _state(api: Api, key: str, job_id: str, state: str) -> dict[str, Any] | None:
    job = await api.job(key, job_id)
    return job if job["state"] == state else None


async def _reported(harness: Harness, ns: str, name: str, phase: str) -> dict[str, Any] | None:
    st = await sj_status(harness.client, ns, name)
    return st if st.get("reportedPhase") == phase else None


async def test_api_job_follows_its_scanjob(cluster: Harness, api: Api, org_name: Any) -> None:
    name = org_name("report")
    key, ns = await _tenant(cluster, api, name)
    job = await api.submit(key)
    assert job["state"] == "queued"
    sj = job["id"].replace("_", "-")
    await eventually(lambda: _scanjob_of(cluster, ns, sj))
    await eventually(lambda: cluster.client.get(*JOB, f"scanjob-{sj}", ns))
    assert (await api.job(key, job["id"]))["state"] == "queued"  # Pending is not reported

    # The pod runs and writes its progress (the API reads it under its own job id).
    await write_progress(cluster.runtime.store, name, job["id"], JobProgress(stage="registration", percent=40))
    await cluster.client.patch(
        *JOB, f"scanjob-{sj}", {"status": {"active": 1, "startTime": "2026-01-01T10:00:00Z"}}, ns
    )
    running = await eventually(lambda: _state(api, key, job["id"], "running"))
    assert running["progress"] == pytest.approx(0.4)
    await eventually(lambda: _reported(cluster, ns, sj, "Running"))

    # It succeeds with an artifact: the API registers it and concludes the job.
    await cluster.runtime.store.put(name, f"jobs/{job['id']}/artifacts/result.json", b'{"ok": true}')
    done = JobProgress(stage="report", percent=100, metrics={"rmse_mm": 0.08},
                       artifacts=[f"jobs/{job['id']}/artifacts/result.json"])  # fmt: skip
    await write_progress(cluster.runtime.store, name, job["id"], done)
    await cluster.client.patch(*JOB, f"scanjob-{sj}", {"status": {"active": 0, "succeeded": 1,
        "completionTime": "2026-01-01T10:02:05Z", "conditions": [{"type": "Complete", "status": "True"}]}}, ns)  # fmt: skip
    finished = await eventually(lambda: _state(api, key, job["id"], "succeeded"))
    assert finished["metrics"] == {"rmse_mm": 0.08} and finished["progress"] == 1.0
    st = await eventually(lambda: _reported(cluster, ns, sj, "Succeeded"))
    assert st["phase"] == "Succeeded"
    artifacts = await api.client.get(f"/v1/jobs/{job['id']}/artifacts", headers={"authorization": f"Bearer {key}"})
    assert [a["name"] for a in artifacts.json()["items"]] == ["result.json"], artifacts.text

    chain = await api.chain(name)
    events = [(e["action"], e["actor"]) for e in chain if e["resource_id"] == job["id"] and e["action"][:4] == "job."]
    assert [a for a, _ in events] == ["job.created", "job.started", "job.succeeded"]
    assert events[1][1] == events[2][1] == "service:operator"


async def test_a_failed_job_and_the_api_down_then_back(
    cluster: Harness, api: Api, api_proxy: TcpProxy, org_name: Any
) -> None:
    name = org_name("down")
    key, ns = await _tenant(cluster, api, name)
    job, sj = await _submitted(cluster, api, key, ns)

    # The API goes down; the Job starts and fails; the ScanJob's status still follows the Job.
    await api_proxy.down()
    await cluster.client.patch(*JOB, f"scanjob-{sj}", {"status": {"startTime": "2026-01-01T10:00:00Z",
        "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline"}]}}, ns)  # fmt: skip
    st = await eventually(lambda: _failed(cluster, ns, sj))
    await asyncio.sleep(1.5)  # a few report attempts (retry delay 0.5 s), all refused at the door
    st = await sj_status(cluster.client, ns, sj)
    assert st["phase"] == "Failed" and "reportedPhase" not in st
    assert (await api.job(key, job["id"]))["state"] == "queued"

    # Back: the pending report goes through, running first (the job had started), then failed.
    await api_proxy.up()
    failed = await eventually(lambda: _state(api, key, job["id"], "failed"))
    assert failed["message"] == "DeadlineExceeded: Job was active longer than specified deadline"
    await eventually(lambda: _reported(cluster, ns, sj, "Failed"))
    actions = [e["action"] for e in await api.chain(name) if e["resource_id"] == job["id"]]
    assert actions == ["job.created", "job.started", "job.failed"]


async def test_a_hand_made_scanjob_is_not_reported(cluster: Harness, api: Api, org_name: Any) -> None:
    name = org_name("hand")
    _, ns = await _tenant(cluster, api, name)
    await cluster.client.create(scanjob("by-hand", ns))
    await eventually(lambda: cluster.client.get(*JOB, "scanjob-by-hand", ns))
    await cluster.client.patch(*JOB, "scanjob-by-hand", {"status": {"succeeded": 1,
        "conditions": [{"type": "Complete", "status": "True"}]}}, ns)  # fmt: skip

    async def succeeded() -> dict[str, Any] | None:
        st = await sj_status(cluster.client, ns, "by-hand")
        return st if st.get("phase") == "Succeeded" else None

    await eventually(succeeded)
    await asyncio.sleep(1.0)
    assert "reportedPhase" not in await sj_status(cluster.client, ns, "by-hand")


async def test_deletion_receipts_go_to_the_collector(cluster: Harness, api: Api, org_name: Any) -> None:
    assert isinstance(cluster.runtime.audit, CollectorAuditSink)
    known = org_name("rcpt")
    await _tenant(cluster, api, known)
    # An Organization made with kubectl only: the API does not know it.
    unknown = org_name("kubectl")
    await organization_ready(cluster.client, unknown)
    for org in (known, unknown):
        await cluster.client.delete(*ORG, org)

    async def gone() -> bool:
        return all([await cluster.client.get(*ORG, org) is None for org in (known, unknown)])

    await eventually(gone, timeout=30)
    (receipt,) = [e for e in await api.chain(known) if e["action"] == "organization.deleted"]
    assert receipt["actor"] == "service:operator" and receipt["details"]["key_shredded"] is True
    # The unknown one's receipt is in the platform chain, naming its tenant.
    platform = [e for e in await api.chain("_platform") if e["action"] == "organization.deleted"]
    assert [e["details"]["tenant"] for e in platform if e["details"].get("tenant") == unknown] == [unknown]


async def test_the_api_is_told_a_jobs_end_while_the_watch_lags(
    cluster: Harness, api: Api, api_proxy: TcpProxy, org_name: Any
) -> None:
    """The report timer decides on the ScanJob as it is, not on kopf's copy of it: while the watch
    lags, that copy still says Running and not reported, and the end is told all the same."""
    name = org_name("lagrep")
    key, ns = await _tenant(cluster, api, name)
    job, sj = await _submitted(cluster, api, key, ns)
    await api_proxy.down()
    refused = RECONCILES.labels("scanjobs", "report", "temporary")
    seen = refused._value.get()
    await cluster.client.patch(
        *JOB, f"scanjob-{sj}", {"status": {"active": 1, "startTime": "2026-01-01T10:00:00Z"}}, ns
    )

    async def tried() -> bool:  # kopf's copy says Running, not reported: the report timer runs
        return bool(refused._value.get() > seen)

    await eventually(tried)
    with cluster.emulator.watch_held():
        await api_proxy.up()
        await cluster.client.patch(*JOB, f"scanjob-{sj}", {"status": {"active": 0, "succeeded": 1,
            "completionTime": "2026-01-01T10:02:05Z", "conditions": [{"type": "Complete", "status": "True"}]}}, ns)  # fmt: skip
        await eventually(lambda: _state(api, key, job["id"], "succeeded"))
        await eventually(lambda: _reported(cluster, ns, sj, "Succeeded"))
    actions = [e["action"] for e in await api.chain(name) if e["resource_id"] == job["id"]]
    assert actions == ["job.created", "job.started", "job.succeeded"]


async def _failed(harness: Harness, ns: str, name: str) -> dict[str, Any] | None:
    st = await sj_status(harness.client, ns, name)
    return st if st.get("phase") == "Failed" else None


def test_chart_wires_the_operator_to_its_api(k8s_tools: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def operator_pod(*args: str) -> dict[str, Any]:
        (deployment,) = [
            d
            for d in render(k8s_tools, *args)
            if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")
        ]
        return dict(deployment["spec"]["template"]["spec"])

    def operator_env(*args: str) -> list[dict[str, Any]]:
        return list(operator_pod(*args)["containers"][0]["env"])

    env = operator_env()
    key = next(e for e in env if e["name"] == "MESIAL_OPERATOR__API_SERVICE_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {
        "name": "mesial-operator-api-key",
        "key": "service-key",
        "optional": True,
    }
    settings = settings_from({"env": env}, monkeypatch).operator
    assert settings.api_configured and settings.api_url == "http://rel-mesial-api.mesial-system.svc:8080"
    # The Secret not created yet (an optional reference: the variable is absent): not wired, no crash.
    without = settings_from({"env": [e for e in env if e is not key]}, monkeypatch).operator
    assert not without.api_configured and without.api_url
    assert not settings_from(
        {"env": operator_env("--set", "operator.api.serviceKeySecret=")}, monkeypatch
    ).operator.api_url
    assert not settings_from({"env": operator_env("--set", "api.enabled=false")}, monkeypatch).operator.api_url
    custom = operator_env("--set", "api.enabled=false", "--set", "operator.api.url=https://api.example.org")
    assert settings_from({"env": custom}, monkeypatch).operator.api_url == "https://api.example.org"
    assert not any(e["name"] == "MESIAL_OPERATOR__API_CA_CERT" for e in custom)
    # an https API signed by a private CA: its certificate mounted from a ConfigMap, and named
    args = ("--set", "operator.api.url=https://api.example.org", "--set", "operator.api.caConfigMap=api-ca")
    pod = operator_pod(*args)
    ca = next(e for e in pod["containers"][0]["env"] if e["name"] == "MESIAL_OPERATOR__API_CA_CERT")
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "api-ca")
    assert ca["value"] == mount["mountPath"] + "/ca.crt" and mount["readOnly"] is True
    assert next(v for v in pod["volumes"] if v["name"] == "api-ca")["configMap"]["name"] == "api-ca"


def test_api_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="api_url is not"):
        OperatorSettings(api_service_key=SecretStr("k"))
    with pytest.raises(ValueError, match="http"):
        OperatorSettings(api_url="api:8080", api_service_key=SecretStr("k"))
    op = OperatorSettings(api_url="http://api:8080", api_service_key=SecretStr("mesial_secret"))
    assert op.api_configured and "mesial_secret" not in repr(op)
    reporter = JobReporter.from_settings(op)
    assert reporter is not None and "mesial_secret" not in repr(reporter)
    assert JobReporter.from_settings(OperatorSettings(api_url="http://api:8080")) is None


async def test_a_hand_set_reported_phase_does_not_keep_the_api_from_being_told(
    cluster: Harness, api: Api, org_name: Any
) -> None:
    name = org_name("handrep")
    key, ns = await _tenant(cluster, api, name)
    job, sj = await _submitted(cluster, api, key, ns)
    await cluster.client.patch(
        *JOB, f"scanjob-{sj}", {"status": {"active": 1, "startTime": "2026-01-01T10:00:00Z"}}, ns
    )
    await eventually(lambda: _state(api, key, job["id"], "running"))
    await eventually(lambda: _reported(cluster, ns, sj, "Running"))
    # anyone able to write ScanJob status claims the end was reported already
    await cluster.client.patch(*SCANJOB, sj, {"status": {"reportedPhase": "Failed"}}, ns, status=True)
    await cluster.client.patch(*JOB, f"scanjob-{sj}", {"status": {"active": 0, "startTime": "2026-01-01T10:00:00Z",
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit"}]}}, ns)  # fmt: skip
    failed = await eventually(lambda: _state(api, key, job["id"], "failed"))
    assert failed["message"].startswith("BackoffLimitExceeded")


class LostAnswer:
    """The collector takes the first receipt of ``action``, and its answer is lost (a timeout)."""

    def __init__(self, inner: Any, action: str) -> None:
        self.inner, self.action, self.sends = inner, action, 0

    async def append(self, event: Any) -> None:
        await self.inner.append(event)
        if event.action == self.action:
            self.sends += 1
            if self.sends == 1:
                raise ServiceError("audit collector unreachable: TimeoutError")


async def test_a_retention_receipt_whose_answer_was_lost_is_confirmed_once(
    cluster: Harness, api: Api, org_name: Any
) -> None:
    name = org_name("lost")
    key, ns = await _tenant(cluster, api, name)
    scan = await api.upload(key, "upper")
    sink = LostAnswer(cluster.runtime.audit, "retention.deleted")
    cluster.runtime.audit = sink
    cluster.runtime.clock = lambda: datetime.now(UTC) + timedelta(days=40)
    await cluster.client.create(policy("retention", ns, covers=["scans"], sweepInterval="1h"))

    async def confirmed() -> dict[str, Any] | None:
        st = await pstatus(cluster.client, ns, "retention")
        return st if st.get("lastSweep") and sink.sends >= 2 and not st.get("pendingReceipts") else None

    await eventually(confirmed)
    receipts = [e for e in await api.chain(name) if e["action"] == "retention.deleted"]
    assert [(e["resource_type"], e["resource_id"]) for e in receipts] == [("scan", scan)]  # one entry, two sends
    gone = await api.client.get(f"/v1/scans/{scan}", headers={"authorization": f"Bearer {key}"})
    assert gone.status_code == 404  # its row went with the receipt


async def test_an_organization_receipt_whose_answer_was_lost_is_confirmed_once(
    cluster: Harness, api: Api, org_name: Any
) -> None:
    name = org_name("olost")
    await _tenant(cluster, api, name)
    sink = LostAnswer(cluster.runtime.audit, "organization.deleted")
    cluster.runtime.audit = sink
    await cluster.client.delete(*ORG, name)

    async def gone() -> bool:
        return await cluster.client.get(*ORG, name) is None

    await eventually(gone, timeout=30)
    assert sink.sends == 2
    (receipt,) = [e for e in await api.chain(name) if e["action"] == "organization.deleted"]
    assert receipt["details"]["key_shredded"] is True


async def test_an_orphaned_objects_receipt_the_api_refuses_holds_back_no_other(
    cluster: Harness, api: Api, org_name: Any
) -> None:
    """Regression (docs/security.md, "Open"): an upload whose event and cleanup both failed leaves
    an object with no scan row. Retention deletes it with a real scan; the real API refuses the
    orphan's receipt (404) and takes the scan's. Before, the orphan's receipt stayed pending for
    good and the scan's, behind it, was never delivered (nor its row removed)."""
    name = org_name("orph")
    key, ns = await _tenant(cluster, api, name)
    scan = await api.upload(key, "upper")
    orphan = "a0orphan"  # sorts before scn_…: its receipt is sent first
    await cluster.runtime.store.put(name, f"scans/{orphan}", b"an upload whose event and cleanup failed")
    cluster.runtime.clock = lambda: datetime.now(UTC) + timedelta(days=40)
    await cluster.client.create(policy("retention", ns, covers=["scans"], sweepInterval="1h"))

    async def receipted() -> list[dict[str, Any]] | None:
        return [e for e in await api.chain(name) if e["action"] == "retention.deleted"] or None

    (receipt,) = await eventually(receipted)
    assert (receipt["resource_type"], receipt["resource_id"]) == ("scan", scan)

    async def refused() -> list[dict[str, Any]] | None:
        found = [e for e in await events(cluster.client, "retention") if e.get("reason") == "ReceiptRefused"]
        return found or None

    (event,) = await eventually(refused)
    assert event["type"] == "Warning" and f"scan {orphan}" in event["message"]
    assert "404 not_found: no such scan in this organization" in event["message"]
    assert re.search(r"request [0-9a-f]{24}\b", event["message"]), event["message"]

    async def cleared() -> dict[str, Any] | None:
        st = await pstatus(cluster.client, ns, "retention")
        return st if st.get("lastSweep") and not st.get("pendingReceipts") else None

    await eventually(cleared)
    assert not await cluster.runtime.store.exists(name, f"scans/{orphan}")
    gone = await api.client.get(f"/v1/scans/{scan}", headers={"authorization": f"Bearer {key}"})
    assert gone.status_code == 404  # its row went with its receipt
    # A different receipt for that scan: the API's 409 is the one the operator drops as a conflict.
    other = {"resourceType": "scan", "resourceId": scan, "time": receipt["time"],
             "details": {**receipt["details"], "objects_deleted": 2}}  # fmt: skip
    with pytest.raises(HttpRefused) as conflict:
        await cluster.runtime.audit.append(receipt_event(name, other))
    assert conflict.value.code == 409 and refusal(conflict.value) is not None
