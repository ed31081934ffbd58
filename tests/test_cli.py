"""The `mesial` console script: one entry point, every component's subcommands, clean errors."""

from __future__ import annotations

import contextlib
import gc
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mesial.cli import COMMANDS, main, root
from mesial.common import __version__

MESIAL = Path(sys.executable).parent / "mesial"


def test_version() -> None:
    result = subprocess.run([str(MESIAL), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"mesial, version {__version__}"


def test_the_entry_point_freezes_what_is_left_for_the_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["mesial", "--version"])
    gc.unfreeze()
    try:
        with contextlib.suppress(SystemExit):
            main()
        assert gc.get_freeze_count() > 0  # the process's objects out of the teardown's last collection
    finally:
        gc.unfreeze()


def test_help_lists_every_registered_command() -> None:
    result = CliRunner().invoke(root, ["--help"])
    assert result.exit_code == 0, result.output
    for name in COMMANDS:
        assert name in result.output


def test_every_registered_command_has_help() -> None:
    for name in COMMANDS:
        result = CliRunner().invoke(root, [name, "--help"])
        assert result.exit_code == 0, f"{name}: {result.output}"


def test_unknown_command_is_a_usage_error() -> None:
    result = subprocess.run([str(MESIAL), "no-such-command"], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "No such command" in result.stderr


def test_services_down_with_nothing_running(tmp_path: Path) -> None:
    result = CliRunner().invoke(root, ["services", "down", "--dir", str(tmp_path)])
    assert result.exit_code == 0
    assert "nothing was running" in result.output
