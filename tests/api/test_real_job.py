"""End to end with the real aligner: synthetic arches uploaded through the API, aligned by
``mesial job run`` on the local executor, results downloaded through a signed link."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.api.conftest import Harness, bearer, variant
from tests.api.realjob import JOB_COMMAND, run_real_job


@pytest.mark.slow
async def test_real_alignment_job(api: Harness, tmp_path: Path) -> None:
    async with variant(
        api, tmp_path / "data", job_command=JOB_COMMAND, job_timeout_s=300, max_upload_bytes=64 << 20
    ) as app:
        _org, admin = await app.new_org()
        run = await run_real_job(app, admin, tmp_path / "case", seed=3, vertices=20_000)
        job, done = run.job, run.done
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
