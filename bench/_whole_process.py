"""``mesial align`` as a whole process: wall and CPU time from start-up to the last output.

    python bench/_whole_process.py CASE_DIR [CASE_DIR ...] [--repeats N] [--out DIR]

A case directory holds the files ``mesial samples generate`` writes (``upper.*``,
``lower.*``, ``bite.*`` and optionally ``bite2.*``). Each run is a fresh ``mesial align
--json`` process: Python start-up, imports, reading and validation, registration,
occlusion and every output (result.json, PLYs, PNGs, report.html). Measured per run:

* ``wall``: from the process start to its exit;
* ``verdict``: from the start to the first byte of result.json on its stdout (the
  verdict is written and printed before the pictures);
* ``cpu``: the process's user + system CPU time (``getrusage(RUSAGE_CHILDREN)``), which
  other processes sharing the cores inflate much less than the wall time.

``bench_aligner.py`` (or anything else) can call :func:`whole_process` with case
directories it wrote and print :func:`summary`.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessTiming:
    """One ``mesial align`` process."""

    case: str
    status: str
    exit_code: int
    wall_s: float
    verdict_s: float
    user_s: float
    system_s: float

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s


def align_command() -> list[str]:
    """The ``mesial`` console script of this interpreter's environment (as a user runs it)."""
    script = Path(sys.executable).with_name("mesial")
    if script.is_file():
        return [str(script)]
    found = shutil.which("mesial")
    return [found] if found else [sys.executable, "-P", "-c", "from mesial.cli import main; main()"]


def case_arguments(case_dir: Path) -> list[str]:
    """``--upper/--lower/--bite`` arguments for the files of a case directory."""

    def one(stem: str) -> Path | None:
        found = sorted(p for p in case_dir.glob(f"{stem}.*") if p.suffix in (".stl", ".ply", ".obj"))
        return found[0] if found else None

    upper, lower, bite, bite2 = one("upper"), one("lower"), one("bite"), one("bite2")
    if upper is None or lower is None or bite is None:
        raise FileNotFoundError(f"{case_dir} lacks upper.*, lower.* or bite.*")
    args = ["--upper", str(upper), "--lower", str(lower), "--bite", str(bite)]
    return args + (["--bite", str(bite2)] if bite2 is not None else [])


def time_align(case_dir: Path, out_dir: Path, mesial: list[str] | None = None) -> ProcessTiming:
    """Run ``mesial align --json`` once on a case and time it (``mesial``: another build's command)."""
    command = [*(mesial or align_command()), "align", *case_arguments(case_dir), "--out", str(out_dir), "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as process:
        assert process.stdout is not None
        first = process.stdout.read(1)
        verdict = time.perf_counter() - start
        document = first + process.stdout.read()
        exit_code = process.wait()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        status = str(json.loads(document)["status"])
    except (ValueError, KeyError):
        status = "no result"
    return ProcessTiming(
        case_dir.name,
        status,
        exit_code,
        wall,
        verdict if first else wall,
        after.ru_utime - before.ru_utime,
        after.ru_stime - before.ru_stime,
    )


def whole_process(
    case_dirs: list[Path], repeats: int = 1, out: Path | None = None, mesial: list[str] | None = None
) -> list[ProcessTiming]:
    """Time ``mesial align`` on every case, ``repeats`` times each (outputs in ``out`` or a temporary folder)."""
    timings = []
    with tempfile.TemporaryDirectory(prefix="mesial-whole-") as scratch:
        base = out or Path(scratch)
        for _ in range(repeats):
            for case_dir in case_dirs:
                timings.append(time_align(case_dir, base / case_dir.name, mesial))
    return timings


def summary(timings: list[ProcessTiming]) -> dict[str, float]:
    """Median and maximum of the wall, verdict and CPU times (seconds)."""
    out: dict[str, float] = {"runs": float(len(timings))}
    for name in ("wall_s", "verdict_s", "cpu_s", "user_s", "system_s"):
        values = [float(getattr(t, name)) for t in timings]
        out[f"{name[:-2]}_median_s"] = statistics.median(values)
        out[f"{name[:-2]}_max_s"] = max(values)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", type=Path, help="case directories")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="keep the outputs here")
    parser.add_argument("--mesial", default=None, help="another build's mesial command (e.g. a wrapper script)")
    args = parser.parse_args()
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    timings = whole_process(args.cases, args.repeats, args.out, [args.mesial] if args.mesial else None)
    print(f"{'case':<16}{'status':<15}{'exit':>5}{'wall s':>9}{'verdict s':>11}{'cpu s':>8}{'user s':>8}{'sys s':>7}")
    for t in timings:
        print(
            f"{t.case:<16}{t.status:<15}{t.exit_code:>5}{t.wall_s:>9.2f}{t.verdict_s:>11.2f}"
            f"{t.cpu_s:>8.2f}{t.user_s:>8.2f}{t.system_s:>7.2f}"
        )
    stats = summary(timings)
    print(
        f"median wall {stats['wall_median_s']:.2f} s (max {stats['wall_max_s']:.2f}), verdict "
        f"{stats['verdict_median_s']:.2f} s, CPU {stats['cpu_median_s']:.2f} s (max {stats['cpu_max_s']:.2f}); "
        f"load average before: {' '.join(load)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
