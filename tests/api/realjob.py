"""One real alignment through the API: a generated case uploaded, aligned by ``mesial job run``.

The app must run ``JOB_COMMAND`` on its local executor (``job_command=JOB_COMMAND`` in
its settings). :func:`run_real_job` writes a one-sided case with ``mesial samples
generate``, uploads its scans, posts the job and waits for it to finish.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Harness, bearer
from tests.api.test_jobs import wait_job

MESIAL = str(Path(sys.executable).parent / "mesial")
JOB_COMMAND = ["mesial", "job", "run"]


@dataclass(frozen=True)
class RealJob:
    """What a real alignment left: the scan ids by kind, the job as posted and as finished."""

    scans: dict[str, list[str]]
    job: dict[str, Any]
    done: dict[str, Any]


async def run_real_job(app: Harness, key: str, case_dir: Path, *, seed: int, vertices: int) -> RealJob:
    """Generate a one-sided case in ``case_dir``, upload it with ``key``, align it; skipped without the aligner."""
    pytest.importorskip("mesial.aligner.job")
    generated = subprocess.run(
        [MESIAL, "samples", "generate", "--out", str(case_dir), "--seed", str(seed), "--vertices", str(vertices),
         "--one-sided"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    scans: dict[str, list[str]] = {}
    for path in sorted(p for p in case_dir.iterdir() if p.suffix in (".ply", ".stl")):
        kind = "upper" if "upper" in path.stem else "lower" if "lower" in path.stem else "bite"
        scans.setdefault(kind, []).append((await app.upload(key, kind, path.read_bytes()))["id"])
    body = {"upper": scans["upper"][0], "lower": scans["lower"][0], "bites": scans["bite"]}
    job = (await app.client.post("/v1/jobs", json=body, headers=bearer(key))).json()
    done = await wait_job(app, key, job["id"], timeout=300)
    return RealJob(scans, job, done)
