"""How the `mesial` command fails, as README.md says: an error is one line on stderr and a non-zero exit;
a usage error (a bad option or value) is click's usage message ending in its `Error:` line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MESIAL = str(Path(sys.executable).parent / "mesial")


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "MESIAL_DATA_DIR": str(tmp_path / "data"),
        "MESIAL_DATABASE_URL": f"sqlite://{tmp_path / 'cli.sqlite3'}",
    }
    return subprocess.run([MESIAL, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_an_error_is_one_line_on_stderr_and_exit_1(tmp_path: Path) -> None:
    failed = _run(tmp_path, "admin", "issue-key", "--org", "no-such-org", "--role", "auditor")
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.splitlines() == ["error: organization not found"], failed.stderr


def test_a_usage_error_ends_in_its_error_line_and_exit_2(tmp_path: Path) -> None:
    for args, said in (
        (["no-such-command"], "Error: No such command 'no-such-command'."),
        (["admin", "create-org", "lab", "--retention-days", "0"], "0 is not in the range 1<=x<=36500"),
    ):
        refused = _run(tmp_path, *args)
        assert refused.returncode == 2 and refused.stdout == "", refused
        assert refused.stderr.splitlines()[0].startswith("Usage: mesial")
        last = refused.stderr.splitlines()[-1]
        assert last.startswith("Error: ") and said in last, refused.stderr
