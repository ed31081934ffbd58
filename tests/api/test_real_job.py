"""End to end with the real aligner: synthetic arches uploaded through the API, aligned by
``mesial job run`` on the local executor, results downloaded through a signed link."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.conftest import Harness, bearer, variant
from tests.api.test_jobs import wait_job

MESIAL = str(Path(sys.executable).parent / "mesial")


@pytest.mark.slow
async def test_real_alignment_job(api: Harness, tmp_path: Path) -> None:
    pytest.importorskip("mesial.aligner.job")
    case_dir = tmp_path / "case"
    generated = subprocess.run(
        [MESIAL, "samples", "generate", "--out", str(case_dir), "--seed", "3", "--vertices", "20000", "--one-sided"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    files = {p.stem: p for p in case_dir.iterdir() if p.suffix in (".ply", ".stl")}
    command = ["mesial", "job", "run"]
    async with variant(
        api, tmp_path / "data", job_command=command, job_timeout_s=300, max_upload_bytes=64 << 20
    ) as app:
        _org, admin = await app.new_org()
        ids: dict[str, list[str]] = {}
        for stem, path in sorted(files.items()):
            kind = "upper" if "upper" in stem else "lower" if "lower" in stem else "bite"
            ids.setdefault(kind, []).append((await app.upload(admin, kind, path.read_bytes()))["id"])
        body = {"upper": ids["upper"][0], "lower": ids["lower"][0], "bites": ids["bite"]}
        job = (await app.client.post("/v1/jobs", json=body, headers=bearer(admin))).json()
        done = await wait_job(app, admin, job["id"], timeout=300)
        log = (Path(app.runtime.settings.data_dir) / "jobs" / job["id"] / "job.log").read_text()[-3000:]
        assert done["state"] == "succeeded", (done, log)
        assert done["progress"] == 1.0 and done["metrics"] and done["result"] == "ok"
        artifacts = (await app.client.get(f"/v1/jobs/{job['id']}/artifacts", headers=bearer(admin))).json()["items"]
        assert artifacts, log
        first = artifacts[0]
        link = await app.client.post(f"/v1/jobs/{job['id']}/artifacts/{first['name']}/link", headers=bearer(admin))
        content = (await app.client.get(link.json()["url"])).content
        assert len(content) == first["size"]
        report = next((a for a in artifacts if a["name"].endswith(".json")), None)
        if report is not None:
            link = await app.client.post(f"/v1/jobs/{job['id']}/artifacts/{report['name']}/link", headers=bearer(admin))
            json.loads((await app.client.get(link.json()["url"])).content)
