from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mesial.aligner.cli import MALLOC_VARIABLES
from mesial.cli import root


def test_samples_then_invalid_input_exit_2(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        root, ["samples", "generate", "--out", str(tmp_path / "c"), "--seed", "1", "--vertices", "8000", "--one-sided"]
    )
    assert result.exit_code == 0, result.output
    truth = json.loads((tmp_path / "c" / "truth.json").read_text())
    assert set(truth["file_to_bite"]) == {"upper", "lower", "bite"}
    (tmp_path / "empty.stl").write_bytes(b"")
    result = runner.invoke(
        root,
        ["align", "--upper", str(tmp_path / "empty.stl"), "--lower", str(tmp_path / "c" / "lower.ply"),
         "--bite", str(tmp_path / "c" / "bite.stl"), "--out", str(tmp_path / "o")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "upper scan: the file is empty" in result.output
    document = json.loads((tmp_path / "o" / "result.json").read_text())
    assert document["status"] == "invalid_input"


def test_align_generated_case_exit_code_matches_status(tmp_path):
    runner = CliRunner()
    runner.invoke(root, ["samples", "generate", "--out", str(tmp_path / "c"), "--seed", "2", "--vertices", "15000"])
    case = tmp_path / "c"
    result = runner.invoke(
        root,
        ["align", "--upper", str(case / "upper.ply"), "--lower", str(case / "lower.ply"),
         "--bite", str(case / "bite.stl"), "--bite", str(case / "bite2.stl"), "--out", str(tmp_path / "o"), "--json"],
    )  # fmt: skip
    document = json.loads((tmp_path / "o" / "result.json").read_text())
    assert {"ok": 0, "not_confident": 3}[document["status"]] == result.exit_code
    assert document["frame"] == "bite"
    assert len(document["inputs"]["upper"]["sha256"]) == 64
    # the verdict first: printed as written, and written before every picture
    assert json.loads(result.stdout) == document
    if document["status"] == "ok":
        written = (tmp_path / "o" / "result.json").stat().st_mtime_ns
        artifacts = [tmp_path / "o" / name for name in document["artifacts"] if name != "result.json"]
        assert len(artifacts) == 5 and all(written <= path.stat().st_mtime_ns for path in artifacts)


def test_report_names_the_contact_threshold() -> None:
    from mesial.aligner.report import _html

    document = {"status": "ok", "reasons": [], "software": {"version": "0"}, "timings_s": {},
                "params": {"occlusion": {"contact_threshold_mm": 0.15}}}  # fmt: skip
    assert "Contacts (threshold 0.15 mm)" in _html(document, {})
    assert "Contacts (threshold not measured)" in _html({**document, "params": {}}, {})


def test_json_output_is_the_document_and_the_message_plain_text(tmp_path):
    (tmp_path / "empty.stl").write_bytes(b"")
    (tmp_path / "other.stl").write_bytes(b"")
    result = CliRunner().invoke(
        root,
        ["align", "--upper", str(tmp_path / "empty.stl"), "--lower", str(tmp_path / "other.stl"),
         "--bite", str(tmp_path / "other.stl"), "--out", str(tmp_path / "o"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert json.loads(result.stdout) == json.loads((tmp_path / "o" / "result.json").read_text())
    assert "invalid input: upper scan: the file is empty" in result.stderr  # no rich markup beside --json
    assert "[red]" not in result.stderr


def test_the_limits_come_from_the_settings_when_the_environment_sets_them(tmp_path, monkeypatch, small_case):
    """``mesial align`` reads its input limits without the settings' models unless the
    environment (or a .env file) could change them; then the settings decide."""
    from mesial.aligner.io import write_ply
    from mesial.common.limits import MAX_SCAN_BYTES, MAX_TRIANGLES, aligner_limits
    from mesial.common.settings import AlignerSettings, get_settings

    monkeypatch.chdir(tmp_path)
    defaults = AlignerSettings()
    assert aligner_limits() == (MAX_SCAN_BYTES, MAX_TRIANGLES) == (defaults.max_scan_bytes, defaults.max_triangles)
    monkeypatch.setenv("mesial_aligner__max_triangles", "1000")  # case-insensitive, as the settings read it
    assert aligner_limits() == (MAX_SCAN_BYTES, 1000)
    monkeypatch.delenv("mesial_aligner__max_triangles")
    get_settings.cache_clear()  # read once per process: this test plays two processes
    (tmp_path / ".env").write_text("MESIAL_ALIGNER__MAX_SCAN_BYTES=2048\n")
    assert aligner_limits() == (2048, MAX_TRIANGLES)
    write_ply(tmp_path / "upper.ply", small_case.upper.vertices, small_case.upper.faces)
    result = CliRunner().invoke(
        root,
        ["align", "--upper", "upper.ply", "--lower", "upper.ply", "--bite", "upper.ply", "--out", "o", "--json"],
    )
    assert result.exit_code == 2
    assert "the limit is 2,048" in json.loads((tmp_path / "o" / "result.json").read_text())["reasons"][0]
    get_settings.cache_clear()


MALLOC_AFTER = r"""
import ctypes, sys, threading
from mesial.cli import main
sys.argv = ["mesial", *sys.argv[3:]] if len(sys.argv) > 3 else [
    "mesial", "align", "--upper", sys.argv[1], "--lower", sys.argv[1], "--bite", sys.argv[1], "--out", sys.argv[2]
]
try:
    main()
except SystemExit:
    pass
import numpy as np
started = threading.Barrier(6)
kept = []
def allocate():
    started.wait()  # six threads alive at once: each would get an arena of its own
    kept.extend(np.ones(1000) for _ in range(100))
threads = [threading.Thread(target=allocate) for _ in range(6)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(16 << 20)  # mapped on its own by default (above the default mmap threshold)
libc.malloc_stats()  # on stderr: an "Arena i:" block per arena, then "max mmap bytes"
"""


# `mesial job run` (the cluster Job's entrypoint) with three bites: refused (usage error, exit 2) after the settings
JOB_RUN = ["job", "run", "--org", "acme", "--job-id", "j1", "--upper", "u", "--lower", "l"] + ["--bite", "b1"] * 3
JOB_RUN[-1] = "b3"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's mallopt")
@pytest.mark.parametrize(
    ("command", "ran"),
    [([], "the file is empty"), (JOB_RUN, "a job takes one or two bite scans")],
    ids=["align", "job"],
)
def test_mesial_align_tunes_malloc_unless_the_process_chose(tmp_path, command, ran):
    """`mesial align` and `mesial job run` set the malloc settings before their work, unless the process chose."""
    (tmp_path / "empty.stl").write_bytes(b"")

    def malloc(**chosen: str) -> tuple[int, int]:
        env = {k: v for k, v in os.environ.items() if k not in MALLOC_VARIABLES} | chosen
        run = subprocess.run(
            [sys.executable, "-P", "-c", MALLOC_AFTER, str(tmp_path / "empty.stl"), str(tmp_path / "o"), *command],
            capture_output=True, text=True, check=True, env=env,
        )  # fmt: skip
        assert ran in run.stderr  # the command ran (invalid input, exit 2)
        mapped = int(run.stderr.split("max mmap bytes")[1].split("=")[1].split()[0])
        return run.stderr.count("Arena "), mapped

    arenas, mapped = malloc()
    assert arenas == 2 and mapped < 16 << 20  # two arenas; the 16 MiB block from one of them
    arenas, mapped = malloc(MALLOC_ARENA_MAX="4")  # the process's own choice stands, and glibc's defaults
    assert arenas == 4 and mapped >= 16 << 20


def test_a_case_that_cannot_be_trusted_exits_3(tmp_path):
    """README: exit 3 not confident. Another patient's upper arch given as the lower (as in
    tests/job/test_job_run.py): the verdict `not_confident`, written, with the report."""
    runner = CliRunner()
    for seed, name in ((2, "c"), (11, "other")):
        runner.invoke(
            root, ["samples", "generate", "--out", str(tmp_path / name), "--seed", str(seed), "--vertices", "20000"]
        )
    case, other = tmp_path / "c", tmp_path / "other"
    result = runner.invoke(
        root,
        ["align", "--upper", str(case / "upper.ply"), "--lower", str(other / "upper.ply"),
         "--bite", str(case / "bite.stl"), "--bite", str(case / "bite2.stl"), "--out", str(tmp_path / "o")],
    )  # fmt: skip
    document = json.loads((tmp_path / "o" / "result.json").read_text())
    assert document["status"] == "not_confident", document
    assert result.exit_code == 3, result.output
    assert (tmp_path / "o" / "report.html").is_file()
