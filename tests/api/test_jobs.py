"""Jobs through the local executor: creation checks, progress, results, links, cancellation."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import EndpointConnectionError

from mesial.api.app import db_context
from mesial.api.errors import Busy, LinkRefused
from mesial.api.executor import LocalExecutor, job_arguments, scanjob_manifest
from mesial.api.models import AuditEventRow
from mesial.api.types import utcnow
from mesial.common.contract import JobSpec
from mesial.common.errors import VaultUnavailable
from mesial.common.services import free_port
from tests.api import meshes
from tests.api.conftest import Harness, bearer, variant, variant_of


async def wait_job(api: Harness, key: str, job_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = (await api.client.get(f"/v1/jobs/{job_id}", headers=bearer(key))).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return dict(job)
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def start_job(api: Harness, key: str, **options: Any) -> dict[str, Any]:
    case = await api.case(key)
    body = {"upper": case["upper"], "lower": case["lower"], "bites": [case["bite"]], "options": options}
    response = await api.client.post("/v1/jobs", json=body, headers=bearer(key))
    assert response.status_code == 201, response.text
    return dict(response.json())


async def finished_job(api: Harness, key: str) -> dict[str, Any]:
    job = await start_job(api, key)
    done = await wait_job(api, key, job["id"])
    assert done["state"] == "succeeded", done
    return done


async def test_job_runs_and_its_artifact_downloads_decrypted(api: Harness) -> None:
    _org, admin = await api.new_org()
    job = await start_job(api, admin, contact_threshold_mm=0.25, optimise=False)
    assert job["state"] == "queued"
    done = await wait_job(api, admin, job["id"])
    assert done["state"] == "succeeded" and done["progress"] == 1.0
    assert done["metrics"] == {"rmse_mm": 0.042, "inputs": 3}
    assert job["bites"] == done["bites"]
    artifacts = (await api.client.get(f"/v1/jobs/{job['id']}/artifacts", headers=bearer(admin))).json()["items"]
    assert [a["name"] for a in artifacts] == ["summary.json"]
    link = await api.client.post(f"/v1/jobs/{job['id']}/artifacts/summary.json/link", headers=bearer(admin))
    assert link.status_code == 201
    body = await api.client.get(link.json()["url"])  # the link is the credential
    assert body.status_code == 200, body.text
    summary = json.loads(body.content)
    assert set(summary["inputs"]) == {done["upper"], done["lower"], *done["bites"]}
    assert summary["options"] == {"contact_threshold": 0.25, "optimise": False}  # the job got the options
    assert artifacts[0]["size"] == len(body.content)
    missing = await api.client.post(f"/v1/jobs/{job['id']}/artifacts/nope.json/link", headers=bearer(admin))
    assert missing.status_code == 404


async def test_links_expired_or_altered_are_refused(api: Harness) -> None:
    _org, admin = await api.new_org()
    job = await finished_job(api, admin)
    links = api.runtime.links
    url = (await api.client.post(f"/v1/jobs/{job['id']}/artifacts/summary.json/link", headers=bearer(admin))).json()[
        "url"
    ]
    token = url.rsplit("/", 1)[1]
    claims = links.verify(token)
    assert claims.artifact == "summary.json"
    expired = links.token(links.sign(claims.org_id, claims.job_id, claims.artifact, "x", now=time.time() - 901))
    refused = await api.client.get(f"/v1/links/{expired}")
    assert refused.status_code == 403 and "expired" in refused.json()["error"]["message"]
    payload, mac = token.split(".")
    for altered in (
        payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac,
        payload + "." + mac[::-1],
        "x",
        # Non-ASCII (schemathesis found a 500 here: compare_digest raises on non-ASCII text).
        "i3=oÏi.\U000d79deôÎ",
        payload + "é." + mac,
    ):
        assert (await api.client.get(f"/v1/links/{altered}")).status_code == 403
    other = links.token(links.sign(claims.org_id, claims.job_id, "other.json", claims.issued_by))
    assert (await api.client.get(f"/v1/links/{other}")).status_code == 404
    # Revoking the key that issued a link revokes the link at once.
    tech = await api.key(admin, "technician")
    url = (await api.client.post(f"/v1/jobs/{job['id']}/artifacts/summary.json/link", headers=bearer(tech))).json()[
        "url"
    ]
    assert (await api.client.get(url)).status_code == 200
    tech_id = next(
        k["id"]
        for k in (await api.client.get("/v1/keys", headers=bearer(admin))).json()["items"]
        if k["role"] == "technician"
    )
    await api.client.delete(f"/v1/keys/{tech_id}", headers=bearer(admin))
    revoked = await api.client.get(url)
    assert revoked.status_code == 403 and "revoked" in revoked.json()["error"]["message"]


async def test_job_creation_checks_kinds_and_ownership(api: Harness) -> None:
    _org, admin = await api.new_org()
    _other, admin_b = await api.new_org()
    case = await api.case(admin)
    foreign = await api.upload(admin_b, "bite")

    async def create(**body: Any) -> Any:
        return await api.client.post("/v1/jobs", json=body, headers=bearer(admin))

    swapped = await create(upper=case["lower"], lower=case["upper"], bites=[case["bite"]])
    assert swapped.status_code == 422 and "kind 'upper'" in swapped.json()["error"]["message"]
    assert (await create(upper=case["upper"], lower=case["lower"], bites=[foreign["id"]])).status_code == 404
    assert (await create(upper=case["upper"], lower=case["lower"], bites=[])).status_code == 422
    unknown = await create(upper=case["upper"], lower=case["lower"], bites=[case["bite"]], options={"voxel": 1})
    assert unknown.status_code == 422
    bad = await create(upper="../../etc", lower=case["lower"], bites=[case["bite"]])
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["loc"] == ["body", "upper"]


@pytest.fixture
async def behaving(api: Harness, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    """An app whose jobs misbehave as asked (``fail`` or ``sleep``)."""
    command = [sys.executable, str(Path(__file__).with_name("jobscript.py")), "--behaviour", request.param]
    async with variant(api, tmp_path, job_command=command) as harness:
        yield harness


@pytest.mark.parametrize("behaving", ["fail"], indirect=True)
async def test_failing_job_reports_failure(behaving: Harness) -> None:
    api = behaving
    _org, admin = await api.new_org()
    job = await start_job(api, admin)
    done = await wait_job(api, admin, job["id"])
    assert done["state"] == "failed" and done["message"] == "alignment failed: insufficient overlap"
    assert (await api.client.get(f"/v1/jobs/{job['id']}/artifacts", headers=bearer(admin))).json()["items"] == []


@pytest.mark.parametrize("behaving", ["sleep"], indirect=True)
async def test_running_job_can_be_cancelled(behaving: Harness) -> None:
    api = behaving
    _org, admin = await api.new_org()
    job = await start_job(api, admin)
    deadline = time.monotonic() + 20
    while (await api.client.get(f"/v1/jobs/{job['id']}", headers=bearer(admin))).json()["progress"] < 0.5:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    busy = await api.client.delete(f"/v1/scans/{job['upper']}", headers=bearer(admin))
    assert busy.status_code == 409 and "running job" in busy.json()["error"]["message"]
    cancelled = await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer(admin))
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert job["id"] not in api.runtime.dispatcher.running
    again = await api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer(admin))
    assert again.status_code == 409
    assert (await api.client.delete(f"/v1/scans/{job['upper']}", headers=bearer(admin))).status_code == 204


async def test_local_queue_is_bounded(api: Harness) -> None:
    settings = api.runtime.settings.model_copy(
        update={"api": api.runtime.settings.api.model_copy(update={"executor_queue_size": 2})}
    )
    executor = LocalExecutor(settings, api.runtime.store, api.runtime.collector)  # no workers started
    spec = JobSpec("org-x", "job_" + "0" * 24, "scn_a", "scn_b", ("scn_c",))
    await executor.submit(spec)
    await executor.submit(spec)
    assert not executor.has_room()
    with pytest.raises(Busy):
        await executor.submit(spec)


def test_job_command_line_and_scanjob_manifest() -> None:
    options = {"contact_threshold_mm": 0.2, "optimise": False}
    spec = JobSpec.from_options("lab", "job_1", "scn_u", "scn_l", ("scn_b1", "scn_b2"), options)
    assert job_arguments(spec, Path("/scratch")) == [
        "--org", "lab", "--job-id", "job_1", "--upper", "scn_u", "--lower", "scn_l",
        "--bite", "scn_b1", "--bite", "scn_b2", "--contact-threshold", "0.2", "--no-optimise", "--scratch", "/scratch",
    ]  # fmt: skip
    manifest = scanjob_manifest(spec)
    assert manifest["kind"] == "ScanJob" and manifest["metadata"]["namespace"] == "mesial-org-lab"
    assert manifest["spec"]["scans"]["bites"] == ["scn_b1", "scn_b2"]
    # The spec fits the CRD's schema: known fields, required ones, id patterns.
    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "scanjob.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(manifest["spec"]) <= set(schema["properties"]) and set(schema["required"]) <= set(manifest["spec"])
    scans = schema["properties"]["scans"]
    assert set(scans["required"]) <= set(manifest["spec"]["scans"])
    pattern = re.compile(scans["properties"]["upper"]["pattern"])
    real_ids = JobSpec("lab", "job_" + "0" * 24, "scn_" + "1" * 24, "scn_" + "2" * 24, ("scn_" + "3" * 24,))
    assert all(pattern.fullmatch(i) for i in [real_ids.upper, real_ids.lower, *real_ids.bites])


def test_mesial_job_run_accepts_the_executor_arguments() -> None:
    """The real entrypoint parses exactly what the executor passes (no run: --help only)."""
    from click.testing import CliRunner

    job = pytest.importorskip("mesial.aligner.job")
    spec = JobSpec("lab", "job_1", "scn_u", "scn_l", ("scn_b",), 0.1)
    run = job.job.commands["run"]
    context = run.make_context("run", job_arguments(spec, Path("/tmp/x")), resilient_parsing=False)
    assert context.params["job_id"] == "job_1" and context.params["bites"] == ("scn_b",)
    assert CliRunner().invoke(job.job, ["run", "--help"]).exit_code == 0


async def test_operator_reports_a_cluster_job_through_the_internal_endpoint(api: Harness) -> None:
    """Cluster mode: the job ran elsewhere; the operator reports running, then succeeded."""
    from mesial.api.app import db_context
    from mesial.api.models import Job
    from mesial.api.services import orgs
    from mesial.common.contract import JobProgress, write_progress

    org, admin = await api.new_org()
    _other, admin_b = await api.new_org()
    case = await api.case(admin)
    with db_context(api.app):
        org_row = await orgs.org_by_name(org)
        _, operator = await orgs.issue_service_key("operator")
        _, foreign = await orgs.issue_service_key("job", (await orgs.org_by_name(_other)).id)
        job = await Job.create(
            id="job_" + "a1" * 12, org_id=org_row.id, created_by="mem_x", upper_id=case["upper"],
            lower_id=case["lower"], bite_ids=[case["bite"]], options={}, state="queued", metrics={}, created_at=utcnow(),
        )  # fmt: skip
    url = f"/internal/v1/jobs/{job.id}/status"
    store = api.runtime.store
    await write_progress(store, org, job.id, JobProgress(stage="global", percent=40, metrics={"rmse_mm": 0.3}))
    report = {"state": "running", "tenant": org}
    assert (await api.client.post(url, json=report, headers=bearer(foreign))).status_code == 403  # not a reporter
    assert (await api.client.post(url, json=report, headers=bearer(admin))).status_code == 403
    # the platform-wide operator key cannot conclude a job in the name of another tenant
    elsewhere = await api.client.post(url, json={**report, "tenant": _other}, headers=bearer(operator))
    assert elsewhere.status_code == 404 and elsewhere.json()["error"]["request_id"]
    assert (await api.client.post(url, json={"state": "running"}, headers=bearer(operator))).status_code == 422
    running = await api.client.post(url, json=report, headers=bearer(operator))
    assert running.status_code == 200, running.text
    assert running.json()["state"] == "running" and running.json()["progress"] == 0.4
    await store.put(org, f"jobs/{job.id}/artifacts/report.json", b'{"ok": true}')
    final = JobProgress(
        stage="done",
        percent=100,
        message="not confident: margin 0.04 under 0.1",
        metrics={"rmse_mm": 0.05},
        artifacts=[f"jobs/{job.id}/artifacts/report.json"],
        result="not_confident",
    )
    await write_progress(store, org, job.id, final)
    for _ in range(2):  # a repeated report changes nothing
        done = await api.client.post(url, json={"state": "succeeded", "tenant": org}, headers=bearer(operator))
        assert done.status_code == 200 and done.json()["state"] == "succeeded"
    seen = (await api.client.get(f"/v1/jobs/{job.id}", headers=bearer(admin))).json()
    assert seen["metrics"] == {"rmse_mm": 0.05} and seen["progress"] == 1.0
    # the job ran to the end: succeeded, with the alignment's verdict and its reason beside
    assert seen["result"] == "not_confident" and seen["message"] == "not confident: margin 0.04 under 0.1"
    artifacts = (await api.client.get(f"/v1/jobs/{job.id}/artifacts", headers=bearer(admin))).json()["items"]
    assert [(a["name"], a["size"]) for a in artifacts] == [("report.json", 12)]
    assert (await api.client.get(f"/v1/jobs/{job.id}", headers=bearer(admin_b))).status_code == 404


async def test_restarted_executor_recovers_jobs_left_behind(api: Harness, tmp_path: Path) -> None:
    from mesial.api.app import db_context
    from mesial.api.models import Job
    from mesial.api.services import orgs

    org, admin = await api.new_org()
    case = await api.case(admin)
    rows = {}
    with db_context(api.app):
        org_row = await orgs.org_by_name(org)
        for state in ("running", "queued"):
            rows[state] = await Job.create(
                id=f"job_{secrets.token_hex(12)}", org_id=org_row.id, created_by="mem_x", upper_id=case["upper"],
                lower_id=case["lower"], bite_ids=[case["bite"]], options={}, state=state, metrics={}, created_at=utcnow(),
            )  # fmt: skip
    async with variant(api, tmp_path, executor_recover_on_start=True) as restarted:
        failed = await wait_job(restarted, admin, rows["running"].id)
        assert failed["state"] == "failed" and failed["message"] == "interrupted: the API restarted"
        done = await wait_job(restarted, admin, rows["queued"].id)
        assert done["state"] == "succeeded", done


async def test_a_local_job_gets_store_credentials_of_its_tenant_alone(api: Harness, tmp_path: Path) -> None:
    """Local mode: a job's store credentials are its tenant's own identity (tenants/<org>/ only), not
    the API's: the job lists its own tenant's prefix and is refused another's (real SeaweedFS)."""
    org, _, done = await probe_job(api, tmp_path, {})
    assert (done["state"], done["message"]) == ("succeeded", f"reached ['{org}']"), done


async def test_a_local_job_with_the_shared_store_identity_gets_the_apis_credentials(
    api: Harness, tmp_path: Path
) -> None:
    """``operator.job_store_identity: shared`` keeps the old way (docs/security.md): the job holds the
    API's store credentials and reaches another tenant's prefix too."""
    shared = api.runtime.settings.operator.model_copy(update={"job_store_identity": "shared"})
    org, other, done = await probe_job(api, tmp_path, {"operator": shared})
    assert (done["state"], done["message"]) == ("failed", f"reached ['{org}', '{other}']"), done


async def probe_job(api: Harness, tmp_path: Path, update: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """A job (settings sections replaced by ``update``) that lists its own tenant's prefix and another
    tenant's, which holds a scan; returns its tenant, the other one and the finished job."""
    other, other_admin = await api.new_org()
    await api.upload(other_admin, "upper")  # something of the other tenant to reach
    script = str(Path(__file__).with_name("jobscript.py"))
    command = [sys.executable, script, "--behaviour", "probe", "--other", other]
    async with variant_of(api, tmp_path, update, job_command=command) as harness:
        org, admin = await harness.new_org()
        job = await start_job(harness, admin)
        return org, other, await wait_job(harness, admin, job["id"], timeout=60)


async def test_a_local_job_fails_clearly_when_its_tenants_store_identity_cannot_be_made(
    api: Harness, tmp_path: Path
) -> None:
    """A store without a reachable IAM API: the job fails with "the tenant's store identity is
    unavailable" (docs/security.md) and never runs with the API's credentials."""
    no_iam = api.runtime.settings.store.model_copy(update={"iam_endpoint_url": f"http://127.0.0.1:{free_port()}"})
    script = str(Path(__file__).with_name("jobscript.py"))
    async with variant_of(api, tmp_path, {"store": no_iam}, job_command=[sys.executable, script]) as harness:
        _, admin = await harness.new_org()
        job = await start_job(harness, admin)
        done = await wait_job(harness, admin, job["id"], timeout=60)
    assert (done["state"], done["message"]) == ("failed", "the tenant's store identity is unavailable"), done


async def test_an_organization_whose_key_was_shredded_is_410_gone_and_nothing_is_stored(api: Harness) -> None:
    """docs/api.md's error table: `410 gone`, "the organization's key was shredded". Once the key is gone
    (crypto-shredding, as the Organization's deletion does), an upload is refused before anything is
    written, and a download link issued before the shredding opens nothing: both 410 with the request id."""
    org, admin = await api.new_org()
    job = await finished_job(api, admin)
    url = (await api.client.post(f"/v1/jobs/{job['id']}/artifacts/summary.json/link", headers=bearer(admin))).json()[
        "url"
    ]
    store = api.runtime.store
    before = sorted([m.key async for m in store.list(org)])
    scans = (await api.client.get("/v1/scans", headers=bearer(admin))).json()["items"]
    await asyncio.to_thread(api.runtime.need_keys().shred, org)

    for response in (
        await api.client.post(
            "/v1/scans",
            params={"kind": "bite"},
            content=meshes.stl_binary(),
            headers={**bearer(admin), "content-type": "application/octet-stream"},
        ),
        await api.client.get(url),
    ):
        assert response.status_code == 410, response.text
        assert response.json()["error"] == {
            "code": "gone",
            "message": "the organization's key no longer exists",
            "request_id": response.headers["x-request-id"],
        }
    assert sorted([m.key async for m in store.list(org)]) == before  # no object
    assert (await api.client.get("/v1/scans", headers=bearer(admin))).json()["items"] == scans  # no row


async def test_a_full_local_queue_is_503_busy_and_stores_no_job(api: Harness, tmp_path: Path) -> None:
    """docs/api.md: `MESIAL_API__EXECUTOR_WORKERS` jobs run, `MESIAL_API__EXECUTOR_QUEUE_SIZE` wait, then
    `POST /v1/jobs` is `503 busy` with the request id, and the refused job has no row."""
    command = [sys.executable, str(Path(__file__).with_name("jobscript.py")), "--behaviour", "sleep"]
    async with variant(api, tmp_path, job_command=command, executor_workers=1, executor_queue_size=1) as app:
        _org, admin = await app.new_org()
        running = await start_job(app, admin)
        deadline = time.monotonic() + 20
        while (await app.client.get(f"/v1/jobs/{running['id']}", headers=bearer(admin))).json()["state"] != "running":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        waiting = await start_job(app, admin)
        case = await app.case(admin)
        body = {"upper": case["upper"], "lower": case["lower"], "bites": [case["bite"]], "options": {}}
        refused = await app.client.post("/v1/jobs", json=body, headers=bearer(admin))
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == {
            "code": "busy",
            "message": "the job queue is full; retry later",
            "request_id": refused.headers["x-request-id"],
        }
        listed = (await app.client.get("/v1/jobs", headers=bearer(admin))).json()["items"]
        assert sorted(j["id"] for j in listed) == sorted([running["id"], waiting["id"]])
        # the refused job's scans are no job's input: they can be deleted
        assert (await app.client.delete(f"/v1/scans/{case['upper']}", headers=bearer(admin))).status_code == 204
        for job in (waiting, running):
            assert (await app.client.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer(admin))).status_code == 200


async def test_a_link_opens_for_15_minutes_and_not_a_second_more(api: Harness) -> None:
    """docs/api.md: a link is valid 15 minutes (`MESIAL_API__LINK_TTL_S`, 900 s): it opens for 900 s from its
    issue (rounded up to the token's whole second, never less) and is refused ("expired") from then on; through
    the API, issued 14:55 ago it opens and 15:05 ago it is refused (403). (Those seconds of margin are the
    request's own time: at 899 and 901 s a slow request made the test fail on a busy machine.)"""
    _org, admin = await api.new_org()
    job = await finished_job(api, admin)
    links = api.runtime.links
    url = (await api.client.post(f"/v1/jobs/{job['id']}/artifacts/summary.json/link", headers=bearer(admin))).json()[
        "url"
    ]
    claims = links.verify(url.rsplit("/", 1)[1])
    assert claims.expires - time.time() == pytest.approx(900, abs=5)
    for issued in (1_700_000_000.0, 1_700_000_000.4):  # on a whole second, and between two
        at = links.sign(claims.org_id, claims.job_id, claims.artifact, claims.issued_by, issued)
        token = links.token(at)
        assert 900 <= at.expires - issued < 901  # the 15 minutes, rounded up to the token's whole second
        assert links.verify(token, now=at.expires - 0.001) == at
        with pytest.raises(LinkRefused, match="expired"):
            links.verify(token, now=at.expires)
    for age, status in ((895, 200), (905, 403)):
        old = links.token(
            links.sign(claims.org_id, claims.job_id, claims.artifact, claims.issued_by, time.time() - age)
        )
        response = await api.client.get(f"/v1/links/{old}")
        assert response.status_code == status, (age, response.text)
    assert "expired" in response.json()["error"]["message"]


async def test_vault_or_store_down_is_503_unavailable_and_nothing_is_stored(
    api: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/api.md's error table: `503 unavailable` when Vault or the store does not answer, with the
    request id and a message that names no internals; the refused upload leaves no object and no row."""
    org, admin = await api.new_org()
    keys, store = api.runtime.need_keys(), api.runtime.need_store()

    def vault_down(*args: object) -> None:
        raise VaultUnavailable("vault at 10.0.0.7:8200 did not answer")

    async def store_down(*args: object, **kwargs: object) -> None:
        raise EndpointConnectionError(endpoint_url="http://10.0.0.9:8333")

    for target, name, down, message in (
        (keys, "data_key", vault_down, "the key service is unavailable; retry later"),
        (store.client, "put_object", store_down, "the object store is unavailable; retry later"),
    ):
        with monkeypatch.context() as patched:
            patched.setattr(target, name, down)
            response = await api.client.post(
                "/v1/scans",
                params={"kind": "bite"},
                content=meshes.stl_binary(),
                headers={**bearer(admin), "content-type": "application/octet-stream"},
            )
        assert response.status_code == 503, response.text
        assert response.json()["error"] == {
            "code": "unavailable",
            "message": message,
            "request_id": response.headers["x-request-id"],
        }
        assert "10.0.0" not in response.text
    assert [m async for m in store.list(org)] == []
    assert (await api.client.get("/v1/scans", headers=bearer(admin))).json()["items"] == []


async def test_a_job_the_local_queue_cannot_take_after_its_commit_is_failed_with_an_event_of_its_own(
    api: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local executor's queue filled between the route's check and the hand-over (which comes after
    the commit of the job's row and ``job.created``): the client gets the 503 ``busy``, and the job is
    failed in the transaction of a ``job.failed`` of its own (``service:executor``, reason
    ``not_handed_over``); nothing of it is queued."""
    org, admin = await api.new_org()
    case = await api.case(admin)
    executor: LocalExecutor = api.runtime.dispatcher

    def full(job: JobSpec) -> None:
        raise asyncio.QueueFull

    monkeypatch.setattr(executor.queue, "put_nowait", full)
    body = {"upper": case["upper"], "lower": case["lower"], "bites": [case["bite"]]}
    refused = await api.client.post("/v1/jobs", json=body, headers=bearer(admin))
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "busy", refused.text
    [job] = (await api.client.get("/v1/jobs", headers=bearer(admin))).json()["items"]
    assert (job["state"], job["message"]) == ("failed", "not started: the job queue was full")
    with db_context(api.app):
        chain = await AuditEventRow.filter(tenant=org, resource_id=job["id"]).order_by("sequence")
    assert [(e.action, e.actor.startswith("key:"), json.loads(e.details)) for e in chain] == [
        ("job.created", True, {"status": 201}),
        ("job.failed", False, {"reason": "not_handed_over"}),
    ]
    assert chain[1].actor == "service:executor"
