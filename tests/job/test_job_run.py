"""`mesial job run` against the real OpenBao and SeaweedFS: encrypted in, encrypted out, status kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mesial.aligner.job import run_job
from mesial.aligner.samples import generate_case, write_case
from mesial.common.contract import EXIT_FAILED, EXIT_INVALID, JobSpec, artifact_key, progress_key
from mesial.common.errors import InputError
from mesial.common.objectstore import ObjectStore
from mesial.common.settings import Settings
from mesial.common.vault import TenantKeys

ORG = "job-lab"


@pytest.fixture(scope="module")
def keys(service_settings: Settings) -> TenantKeys:
    tenant_keys = TenantKeys(service_settings.vault)
    tenant_keys.ensure_transit()
    for org in (ORG, "other-lab"):
        tenant_keys.ensure_key(org)
    return tenant_keys


@pytest.fixture(scope="module")
def case_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    case = generate_case(3, vertices=20_000)
    return write_case(case, tmp_path_factory.mktemp("case"))


async def upload(settings: Settings, keys: TenantKeys, files: dict[str, Path], prefix: str) -> dict[str, str]:
    ids: dict[str, str] = {}
    async with ObjectStore(settings.store, keys) as store:
        for role in ("upper", "lower", "bite", "bite2"):
            if role in files:
                ids[role] = f"{prefix}-{role}"
                await store.put(ORG, f"scans/{ids[role]}", files[role].read_bytes())
    return ids


async def read_status(settings: Settings, keys: TenantKeys, org: str, job_id: str) -> dict[str, Any]:
    async with ObjectStore(settings.store, keys) as store:
        status: dict[str, Any] = json.loads(await store.read_bytes(org, progress_key(job_id)))
    return status


async def test_job_aligns_from_and_to_the_encrypted_store(
    service_settings: Settings, keys: TenantKeys, case_files: dict[str, Path], tmp_path: Path
) -> None:
    ids = await upload(service_settings, keys, case_files, "c1")
    spec = JobSpec(ORG, "job-1", ids["upper"], ids["lower"], (ids["bite"], ids["bite2"]))
    code = await run_job(spec, service_settings, tmp_path)
    status = await read_status(service_settings, keys, ORG, "job-1")
    assert status["state"] == "succeeded", status["message"]
    assert status["result_status"] == "ok"
    assert code == 0
    assert status["percent"] == 100
    assert all(isinstance(value, float) for value in status["metrics"].values())
    assert artifact_key("job-1", "result.json") in status["artifacts"]
    async with ObjectStore(service_settings.store, keys) as store:
        result = json.loads(await store.read_bytes(ORG, artifact_key("job-1", "result.json")))
        at_rest = [meta.key async for meta in store.list(ORG, "jobs/job-1/")]
    assert result["status"] == status["result_status"]
    assert len(at_rest) == len(status["artifacts"]) + 1  # + progress.json
    assert list(tmp_path.iterdir()) == []  # decrypted scans are gone


async def test_the_verdict_is_in_the_status_before_the_pictures_are_drawn(
    service_settings: Settings,
    keys: TenantKeys,
    case_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from mesial.aligner import report

    seen: list[dict[str, Any]] = []
    draw = report.write_artifacts

    def watched(result: Any, out: Path) -> dict[str, Path]:  # runs on a worker thread: its own event loop
        seen.append(asyncio.run(read_status(service_settings, keys, ORG, "job-v")))
        return draw(result, out)

    monkeypatch.setattr(report, "write_artifacts", watched)
    ids = await upload(service_settings, keys, case_files, "v")
    code = await run_job(
        JobSpec(ORG, "job-v", ids["upper"], ids["lower"], (ids["bite"], ids["bite2"])), service_settings
    )
    assert code == 0 and len(seen) == 1
    early = seen[0]
    assert early["state"] == "running" and early["result_status"] == "ok" and early["metrics"]
    assert early["artifacts"] == [artifact_key("job-v", "result.json")]
    final = await read_status(service_settings, keys, ORG, "job-v")
    assert final["state"] == "succeeded" and len(final["artifacts"]) == 6


async def test_garbage_scan_is_invalid_input(service_settings: Settings, keys: TenantKeys, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.stl"
    garbage.write_bytes(os.urandom(5000))
    files = {"upper": garbage, "lower": garbage, "bite": garbage}
    ids = await upload(service_settings, keys, files, "bad")
    code = await run_job(JobSpec(ORG, "job-bad", ids["upper"], ids["lower"], (ids["bite"],)), service_settings)
    status = await read_status(service_settings, keys, ORG, "job-bad")
    assert code == EXIT_INVALID
    assert status["state"] == "failed" and status["result_status"] == "invalid_input"
    assert status["message"].startswith("invalid input:")


async def test_not_confident_alignment_is_a_job_that_ran(
    service_settings: Settings, keys: TenantKeys, case_files: dict[str, Path], tmp_path: Path
) -> None:
    # another patient's upper arch given as the lower: the alignment must not be trusted, and the
    # job still succeeds (exit 0: Kubernetes neither retries nor fails it) with its report written
    other = write_case(generate_case(11, vertices=20_000), tmp_path / "other")
    ids = await upload(service_settings, keys, {**case_files, "lower": other["upper"]}, "nc")
    spec = JobSpec(ORG, "job-nc", ids["upper"], ids["lower"], (ids["bite"], ids["bite2"]))
    (tmp_path / "scratch").mkdir()
    code = await run_job(spec, service_settings, tmp_path / "scratch")
    status = await read_status(service_settings, keys, ORG, "job-nc")
    assert code == 0
    assert status["state"] == "succeeded" and status["result_status"] == "not_confident"
    assert status["message"].startswith("not confident: ")
    assert artifact_key("job-nc", "report.html") in status["artifacts"]


async def test_other_tenants_scans_are_not_found(
    service_settings: Settings, keys: TenantKeys, case_files: dict[str, Path]
) -> None:
    ids = await upload(service_settings, keys, case_files, "c2")
    spec = JobSpec("other-lab", "job-x", ids["upper"], ids["lower"], (ids["bite"],))
    assert await run_job(spec, service_settings) == EXIT_FAILED
    status = await read_status(service_settings, keys, "other-lab", "job-x")
    assert status["state"] == "failed"
    assert "no object" in status["message"]


@pytest.mark.parametrize(
    "changes",
    [{"org": "../x"}, {"job_id": "a/b"}, {"upper": ".."}, {"bites": ()}, {"bites": ("a", "b", "c")}],
)
def test_hostile_job_specs_are_refused(changes: dict[str, object]) -> None:
    fields: dict[str, object] = {"org": ORG, "job_id": "j", "upper": "u", "lower": "l", "bites": ("b",)}
    fields.update(changes)
    with pytest.raises(InputError):
        JobSpec(**fields)  # type: ignore[arg-type]


def test_cli_usage_error_for_bad_ids(service_settings: Settings) -> None:
    mesial = Path(sys.executable).parent / "mesial"
    result = subprocess.run(
        [
            str(mesial),
            "job",
            "run",
            "--org",
            ORG,
            "--job-id",
            "../escape",
            "--upper",
            "u",
            "--lower",
            "l",
            "--bite",
            "b",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid job id" in result.stderr


async def test_the_process_exits_with_the_contracts_codes(
    service_settings: Settings, keys: TenantKeys, tmp_path: Path
) -> None:
    """README: `mesial job run` exits 2 on invalid input (final: Kubernetes does not retry it) and 1 when
    the job itself failed (it may be retried); the codes as the process gives them to the Job controller."""
    garbage = tmp_path / "garbage.stl"
    garbage.write_bytes(os.urandom(5000))
    ids = await upload(service_settings, keys, {"upper": garbage, "lower": garbage, "bite": garbage}, "exit")
    env = {
        **os.environ,
        "MESIAL_VAULT__ADDR": service_settings.vault.addr,
        "MESIAL_VAULT__TOKEN": service_settings.vault.token.get_secret_value(),
        "MESIAL_STORE__ENDPOINT_URL": service_settings.store.endpoint_url,
        "MESIAL_STORE__BUCKET": service_settings.store.bucket,
        "MESIAL_STORE__ACCESS_KEY": service_settings.store.access_key.get_secret_value(),
        "MESIAL_STORE__SECRET_KEY": service_settings.store.secret_key.get_secret_value(),
    }
    mesial = str(Path(sys.executable).parent / "mesial")
    scans = ["--upper", ids["upper"], "--lower", ids["lower"], "--bite", ids["bite"]]
    for org, job_id, code in ((ORG, "job-exit2", EXIT_INVALID), ("other-lab", "job-exit1", EXIT_FAILED)):
        done = subprocess.run(
            [mesial, "job", "run", "--org", org, "--job-id", job_id, *scans],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == code, (job_id, done.returncode, done.stderr[-2000:])
        assert (await read_status(service_settings, keys, org, job_id))["state"] == "failed"
