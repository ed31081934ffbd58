"""Organization lifecycle on a real kind cluster (admission, RBAC, schema validation and garbage
collection included, which the emulator does not do). Skipped where Docker is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("docker") is None, reason="docker is not installed: kind cannot run here"),
    pytest.mark.skipif(shutil.which("kind") is None, reason="kind is not installed"),
]


def test_crds_examples_and_organization_lifecycle_on_kind() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "e2e-kind.sh")], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
