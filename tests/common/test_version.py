"""The version the code reports is the installed distribution's, pyproject.toml's, found without
importing importlib.metadata (the ``mesial`` command's start-up)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mesial.common import __version__, installed_version

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_pyprojects_and_the_installed_distributions() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == installed_version() == importlib.metadata.version("mesial") == declared


def test_the_version_is_read_from_the_dist_info_on_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "mesial-9.8.7.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.4\nName: mesial\nVersion: 9.8.7\n\nVersion: 1.0 in the body\n")
    (tmp_path / "mesial_other-1.0.dist-info").mkdir()
    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing"), str(tmp_path), *sys.path])
    assert installed_version() == "9.8.7"
    (info / "METADATA").write_text("Metadata-Version: 2.4\nName: mesial\n\nVersion: 1.0 in the body\n")
    # no version header: importlib.metadata answers (and stops at that same first dist-info)
    assert installed_version() == (importlib.metadata.version("mesial") or "0.0.0+unknown")
    (info / "METADATA").unlink()
    assert installed_version() == (importlib.metadata.version("mesial") or "0.0.0+unknown")


def test_starting_the_command_does_not_import_importlib_metadata() -> None:
    code = "import sys, mesial.cli, mesial.aligner.cli; print('importlib.metadata' in sys.modules)"
    result = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"
