"""The API suite again on SQLite (the local-mode default), in a process of its own.

tortoise-orm binds models to one SQL dialect per process, so the SQLite run cannot share
this process with the PostgreSQL app.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.conftest import BACKEND

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(BACKEND == "sqlite", reason="this run is the SQLite run")
def test_api_suite_passes_on_sqlite() -> None:
    env = {**os.environ, "MESIAL_TEST_API_DB": "sqlite"}
    # Backend-independent modules (their servers and migrations pick their own databases) run once.
    skip = ["test_cli.py", "test_schemathesis.py", "test_migrations.py", "test_sqlite_backend.py"]
    command = [sys.executable, "-m", "pytest", "tests/api", "-q", "-x", "-p", "no:cacheprovider"]
    command += [f"--ignore=tests/api/{name}" for name in skip]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
