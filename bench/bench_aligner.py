"""Bite registration on generated, range-image and real-anatomy cases, beside Open3D's pipeline.

    python bench/bench_aligner.py [--quick] [--cases N] [--vertices N] [--real DIR] [--real-pairs N]
                                  [--relations quick|all|none] [--relation-pairs N]
                                  [--no-baseline] [--strongest] [--fine] [--fine-strongest]

Sets (each case: every file in its own random pose, written to disk, aligned by
``mesial align`` as a whole process: start-up, reading, registration, occlusion, outputs):

* generated: ``samples.generate_case`` arches (``--vertices``, 130 000 by default) with
  its strip bite scans: two bites at 0.02 mm noise, two at 0.05 mm, one one-sided bite;
* range-image: the same arches, bite scans from ``rangescan.range_image_bite`` (a
  swept perspective scanner, depth noise along the ray, no grazing or back-facing
  samples, irregular crop and holes): two bites, one one-sided;
* real anatomy (``--real DIR``, skipped when absent): pairs ``NNN_U.ply``/``NNN_L.ply``
  (the 3D-IOSSeg ``train`` split), subdivided to ~130 000 vertices, put into an
  intercuspal position built by ``_real_cases.occlude``, with bite scans from both
  simulators: two bites (0.02 mm), two noisier (0.05 mm), one-sided, range-image two
  bites, range-image one-sided.
* occlusal relations (with ``--real``; ``_real_cases.relate``): the first pairs
  (``--relation-pairs``, 3 by default, 1 with ``--quick``) moved from that intercuspal position into other
  occlusions and re-seated (class II/III, yaw, crossbites, open bites, shortened arches;
  ``--relations quick``, the default: 7 of them, ``all``: the 18 of ``RELATIONS``), each
  with two bites (0.02 mm), one-sided, and range-image two bites.

Per set: success (``ok`` and TRE RMS < 0.05 mm), **confidently wrong** (``ok`` with TRE
RMS >= 0.05 mm: must be 0), ``not_confident`` count, TRE RMS median/max over the
successes, whole-process wall time median/max and its CPU time (the child's user +
system: the machine is shared). TRE: the lower arch's vertices placed relative to the
upper by the registration (before the bite optimisation, which moves the lower by
design) against the truth.

Open3D's registration tutorial (FPFH + RANSAC + point-to-plane ICP, a bite scan against
each arch; ``_open3d_baseline.py``) runs on the same files in the same run
(``--strongest`` adds the strongest configuration found earlier: 4 million RANSAC
iterations, coarse-to-fine Tukey ICP, every bite; ``--fine`` the tutorial at a 0.5 mm voxel,
which registers about half of the real two-bite cases and none of the generated ones;
``--fine-strongest`` the strongest's search at 0.5 mm: 25 of 36 real strip-bite cases). Per
baseline and set: cases within ``GOAL_MM`` and within 1 mm (on 60 real cases Open3D's errors
were below 0.13 mm or above 6.8 mm, so a coarser criterion adds only the few right ones its
ICP leaves 0.05-0.13 mm off). The exit status is 1 when a case is confidently wrong.

Goal 4's "5x faster than Open3D's pipeline" is computed over the cases both register, against
the configuration run that registers the most cases (``goal_baseline``; the tutorial when none
registers any, then NOT EVALUABLE); every other configuration run gets the same line, marked as
not goal 4's. With ``--real`` and ``--fine-strongest`` that is the configuration registering real
cases as often as issue 10's own measurement of Open3D (24 of 36).

Speed (issue 10, goal 4), printed at the end: the stage medians per set (``other``: the
rest of the whole process, start-up, imports and the outputs), the two-bite generated set's
median wall time against 1.5 s, and reading a 250 000-triangle binary STL (a generated arch)
against 0.1 s, beside trimesh's reader of the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from _common import hardware, table
from _open3d_baseline import FINE, FINE_STRONGEST, STRONGEST, TUTORIAL, Config, register

from mesial.aligner.registration import relative_error
from mesial.aligner.samples import SampleCase, generate_case, write_case
from mesial.aligner.transforms import invert

if TYPE_CHECKING:
    from _real_cases import Occluded

GOAL_MM = 0.05
COARSE_MM = 1.0  # a coarse criterion for the baselines, printed beside GOAL_MM
GOAL_WALL_S = 1.5  # whole process, two bites, 130 000-vertex arches, 2 cores
GOAL_STL_S = 0.1  # reading a 250 000-triangle binary STL
STL_TRIANGLES = 250_000
STAGES = ("validate", "preprocess", "global", "refine", "occlusion")
# a constructed intercuspal position needs contacts on both posterior sides (mm² closer than 0.1 mm)
MIN_CONTACT_MM2 = 0.05
MESIAL = Path(sys.executable).with_name("mesial")
# name, simulator, noise mm, one-sided
GENERATED = (("two bites", "strip", 0.02, False), ("two bites, noise 0.05", "strip", 0.05, False),
             ("one-sided", "strip", 0.02, True))  # fmt: skip
RANGE = (("range-image, two bites", "range", 0.02, False), ("range-image, one-sided", "range", 0.02, True))
REAL = GENERATED + RANGE
RELATION_VARIANTS = (GENERATED[0], GENERATED[2], RANGE[0])
BASELINES: dict[str, Config] = {
    "open3d": TUTORIAL,
    "strongest": STRONGEST,
    "open3d 0.5 mm": FINE,
    "strongest 0.5 mm": FINE_STRONGEST,
}


@dataclass
class Row:
    case: str
    status: str
    tre: float
    wall: float
    cpu: float
    reasons: str = ""
    stages: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)


def lower_to_upper(document: dict[str, object]) -> np.ndarray | None:
    """The registration's lower -> upper transform from a result.json (the bite optimisation undone)."""
    transforms = document.get("transforms")
    if not isinstance(transforms, dict):
        return None
    upper, lower = np.asarray(transforms["upper"]), np.asarray(transforms["lower"])
    occlusion = document.get("occlusion")
    if isinstance(occlusion, dict):
        lower = invert(np.asarray(occlusion["correction"]["matrix"])) @ lower
    return np.asarray(invert(upper) @ lower)


def tre_rms(estimate: np.ndarray, case: SampleCase) -> float:
    truth = invert(case.truth["upper"]) @ case.truth["lower"]
    error = relative_error(estimate, truth, case.lower.vertices)
    return float(np.sqrt(np.mean(error**2)))


def run_case(label: str, case: SampleCase, work: Path, baselines: list[str]) -> Row:
    paths = write_case(case, work / "case")
    bites = [paths["bite"]] + ([paths["bite2"]] if "bite2" in paths else [])
    out = work / "out"
    command = [str(MESIAL), "align", "--upper", str(paths["upper"]), "--lower", str(paths["lower"])]
    command += [arg for bite in bites for arg in ("--bite", str(bite))] + ["--out", str(out), "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    try:
        document = json.loads((out / "result.json").read_text())
    except (OSError, ValueError):
        return Row(label, f"error {done.returncode}", float("inf"), wall, cpu, done.stderr.strip()[-300:])
    estimate = lower_to_upper(document)
    row = Row(label, str(document["status"]), float("inf") if estimate is None else tre_rms(estimate, case), wall, cpu,
              "; ".join(document.get("reasons", []))[:200], dict(document.get("timings_s", {})))  # fmt: skip
    for name in baselines:
        outcome = register(paths, BASELINES[name])
        row.baselines[name] = tre_rms(outcome.pose, case)
        row.baselines[name + " s"] = outcome.wall
    return row


def summarise(name: str, rows: list[Row], baselines: list[str]) -> list[object]:
    ok = [r for r in rows if r.status == "ok" and r.tre < GOAL_MM]
    wrong = [r for r in rows if r.status == "ok" and r.tre >= GOAL_MM]
    tres = [r.tre for r in ok] or [float("nan")]
    cells: list[object] = [
        name, f"{len(ok)}/{len(rows)}", len(wrong), sum(r.status == "not_confident" for r in rows),
        f"{np.median(tres):.4f} / {max(tres):.4f}",
        f"{np.median([r.wall for r in rows]):.2f} / {max(r.wall for r in rows):.2f}",
        f"{np.median([r.cpu for r in rows]):.2f}",
    ]  # fmt: skip
    for b in baselines:
        cells += [f"{sum(r.baselines[b] < GOAL_MM for r in rows)}/{len(rows)}",
                  f"{sum(r.baselines[b] < COARSE_MM for r in rows)}/{len(rows)}",
                  f"{np.median([r.baselines[b] for r in rows]):.3f}",
                  f"{np.median([r.baselines[b + ' s'] for r in rows]):.2f}"]  # fmt: skip
    return cells


def print_rows(name: str, rows: list[Row], baselines: list[str]) -> None:
    print(f"## {name}")
    stages = ("validate", "preprocess", "global", "refine", "occlusion")
    headers = ["case", "status", "TRE rms mm", "wall s", "CPU s", *[f"{s} s" for s in stages]]
    headers += [f"{b} TRE mm" for b in baselines] + ["reasons"]
    print(table(headers, [[r.case, r.status, f"{r.tre:.4f}", f"{r.wall:.2f}", f"{r.cpu:.2f}",
                           *[f"{r.stages.get(s, 0.0):.2f}" for s in stages],
                           *[f"{r.baselines[b]:.3f}" for b in baselines], r.reasons] for r in rows]))  # fmt: skip
    print(flush=True)


def stage_rows(results: dict[str, list[Row]]) -> list[list[object]]:
    """Per set: the median of each stage's wall time and of the rest of the process."""
    rows: list[list[object]] = []
    for name, found in results.items():
        stages = [float(np.median([r.stages.get(s, 0.0) for r in found])) for s in STAGES]
        other = float(np.median([r.wall - sum(r.stages.get(s, 0.0) for s in STAGES) for r in found]))
        rows.append([name, *[f"{v:.2f}" for v in stages], f"{other:.2f}", f"{np.median([r.wall for r in found]):.2f}"])
    return rows


def registered(results: dict[str, list[Row]], baseline: str) -> int:
    """How many cases of the run ``baseline`` registers within ``GOAL_MM``."""
    return sum(r.baselines[baseline] < GOAL_MM for found in results.values() for r in found)


def goal_baseline(results: dict[str, list[Row]], baselines: list[str]) -> str:
    """Goal 4's "Open3D's pipeline": of the configurations run, the one that registers the most
    cases (the first listed on a tie; the tutorial when none registers any). A speed ratio
    against a configuration that fails the cases says nothing; the issue's own measurement of
    Open3D registered 24 of 36 real cases, which ``--fine-strongest`` reproduces (25 of 36) and
    the tutorial does not (0)."""
    return max(baselines, key=lambda b: (registered(results, b), -baselines.index(b)))


def against_open3d(
    results: dict[str, list[Row]], baseline: str = "open3d", load: float | None = None, goal: bool = True
) -> str:
    """Goal 4's "at least 5x faster than Open3D's pipeline on the same cases", as far as it can be evaluated.

    A speed ratio compares two registrations of the same cases: it is computed over the cases
    both register (within ``GOAL_MM``). Where Open3D registers none there is nothing to divide;
    the ratio of the median times over all cases is printed beside, for what the times say
    (Open3D's in-process time plus its module load, against Mesial's whole process).

    ``baseline``: the configuration compared; ``goal``: whether this is goal 4's line
    (:func:`goal_baseline`) or the same comparison for another configuration run.
    """
    rows = [r for found in results.values() for r in found]
    both = [r for r in rows if r.status == "ok" and r.tre < GOAL_MM and r.baselines[baseline] < GOAL_MM]
    load = open3d_load_s() if load is None else load
    theirs = float(np.median([r.baselines[baseline + " s"] for r in rows])) + load
    ours = float(np.median([r.wall for r in rows]))
    who = "Open3D's pipeline" if baseline == "open3d" else f"Open3D's pipeline ({BASELINES[baseline].name})"
    line = (f"{who} registered {registered(results, baseline)}/{len(rows)} cases; median time over all cases: Mesial "
            f"{ours:.2f} s (whole process), Open3D {theirs:.2f} s (in-process {theirs - load:.2f} s + loading its "
            f"module {load:.2f} s), ratio {theirs / ours:.2f}")  # fmt: skip
    what = (
        f"5x faster than Open3D (goal 4; its configuration registering the most cases here: {baseline})"
        if goal
        else f"5x faster than {baseline} (not goal 4's line)"
    )
    if not both:
        return line + f"\n{what}: NOT EVALUABLE: no case registered by both to compare times on"
    ratio = float(np.median([r.baselines[baseline + " s"] + load for r in both]) / np.median([r.wall for r in both]))
    verdict = "met" if ratio >= 5 else "NOT MET"
    return line + f"\n{what}, over the {len(both)} cases both register: {ratio:.2f}x ({verdict})"


def open3d_load_s() -> float:
    """Wall time (s) a fresh Python process takes to load Open3D's compiled core (the baseline's start-up)."""
    code = "import time; t = time.perf_counter(); from mesial.aligner._o3d import open3d; open3d(); print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def stl_reading(work: Path, repeats: int = 7) -> list[list[object]]:
    """Read a 250 000-triangle binary STL (a generated arch): median CPU and wall of ``read_mesh``, and trimesh's."""
    from mesial.aligner.io import read_mesh, write_stl

    case = generate_case(0, vertices=130_000)
    path = work / "arch.stl"
    write_stl(path, case.upper.vertices, case.upper.faces[:STL_TRIANGLES])

    def timed(read: object) -> tuple[float, float]:
        cpu, wall = [], []
        for _ in range(repeats):
            c, w = time.process_time(), time.perf_counter()
            read()  # type: ignore[operator]
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - w)
        return float(np.median(cpu)), float(np.median(wall))

    rows: list[list[object]] = []
    for label, arch in (
        ("mesial read_mesh (a bite: format checks)", False),
        ("mesial read_mesh (an arch: + shape)", True),
    ):
        cpu, wall = timed(
            lambda arch=arch: read_mesh(path, max_bytes=1 << 30, max_triangles=10_000_000, role="upper", arch=arch)
        )
        rows.append([label, f"{cpu:.3f}", f"{wall:.3f}", "met" if cpu <= GOAL_STL_S else "NOT MET"])
    try:
        import trimesh
    except ImportError:  # pragma: no cover - trimesh is a test dependency
        return rows
    cpu, wall = timed(lambda: trimesh.load(path, force="mesh"))
    rows.append(["trimesh.load (baseline)", f"{cpu:.3f}", f"{wall:.3f}", ""])
    return rows


def run_relations(
    seated: list[tuple[int, Occluded]], which: str, work: Path, baselines: list[str]
) -> dict[str, list[Row]]:
    """Each seated pair moved into each occlusal relation (``_real_cases.relate``), three bite variants.

    Returns the rows per set ``relation: <relation>`` (the variants of all pairs together).
    """
    from _real_cases import QUICK_RELATIONS, RELATIONS, bite_case, relate

    chosen = [r for r in RELATIONS if which == "all" or r.name in QUICK_RELATIONS]
    out: dict[str, list[Row]] = {}
    for rel in chosen:
        rows: list[Row] = []
        for i, occluded in seated:
            related = relate(occluded, rel)
            moved = related.occluded
            print(f"pair {occluded.name}, {rel.name}: posterior contact area right/left {moved.contacts_mm2[0]:.2f} / "
                  f"{moved.contacts_mm2[1]:.2f} mm², incisal opening {related.incisal_opening_mm:.2f} mm",
                  flush=True)  # fmt: skip
            for name, simulator, noise, one_sided in RELATION_VARIANTS:
                try:
                    case = bite_case(moved, 2000 + i, simulator=simulator, noise_mm=noise, one_sided=one_sided,
                                     per_side=True)  # fmt: skip
                except ValueError as error:  # the simulator found nothing to scan on a side
                    print(f"  {name}: no bite simulated ({error})")
                    continue
                rows.append(run_case(f"{occluded.name} {name}", case, work, baselines))
        if rows:
            out["relation: " + rel.name] = rows
            print_rows("relation: " + rel.name, rows, baselines)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 generated cases per set, 3 real pairs, 1 in the relations"
    )
    parser.add_argument("--cases", type=int, default=None, help="generated cases per set (default 8)")
    parser.add_argument("--vertices", type=int, default=130_000, help="vertices per generated arch")
    parser.add_argument(
        "--real", type=Path, default=os.environ.get("MESIAL_REAL_SCANS") or None,
        help="folder of real NNN_U.ply / NNN_L.ply pairs (default: $MESIAL_REAL_SCANS; skipped when absent)",
    )  # fmt: skip
    parser.add_argument("--real-pairs", type=int, default=None, help="real pairs used (default 12; 0: all)")
    parser.add_argument("--relations", choices=("quick", "all", "none"), default="quick",
                        help="occlusal relations of the real pairs (default quick: 7 of 18)")  # fmt: skip
    parser.add_argument("--relation-pairs", type=int, default=None, help="real pairs moved into the relations (3)")
    parser.add_argument("--no-baseline", action="store_true", help="skip Open3D")
    parser.add_argument("--strongest", action="store_true", help="also Open3D's strongest configuration (slow)")
    parser.add_argument("--fine", action="store_true", help="also Open3D's tutorial at a 0.5 mm voxel (slow)")
    parser.add_argument("--fine-strongest", action="store_true", help="also the strongest at 0.5 mm (slowest)")
    parser.add_argument("--no-generated", action="store_true", help="real anatomy only")
    args = parser.parse_args()
    cases = args.cases or (2 if args.quick else 8)
    n_pairs = args.real_pairs if args.real_pairs is not None else (3 if args.quick else 12)
    relation_pairs = args.relation_pairs if args.relation_pairs is not None else (1 if args.quick else 3)
    chosen = ["open3d"] + (["strongest"] if args.strongest else []) + (["open3d 0.5 mm"] if args.fine else [])
    chosen += ["strongest 0.5 mm"] if args.fine_strongest else []
    baselines = [] if args.no_baseline else chosen
    print(hardware())
    print(f"load average at start {os.getloadavg()[0]:.1f} (other processes share the cores: wall times include "
          f"their load; CPU is the aligner process's own)\n")  # fmt: skip
    results: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.no_generated:
            for name, simulator, noise, one_sided in GENERATED + RANGE:
                rows = []
                for seed in range(cases):
                    case = generate_case(1000 + seed, noise_mm=noise, one_sided=one_sided, vertices=args.vertices,
                                         simulator=simulator)  # fmt: skip
                    rows.append(run_case(f"seed {1000 + seed}", case, work, baselines))
                label = ("range-image: " if simulator == "range" else "generated: ") + name
                results[label] = rows
                print_rows(label, rows, baselines)
        if args.real is not None and not args.real.is_dir():
            print(f"real anatomy skipped: {args.real} is not a folder\n")
        elif args.real is not None:
            from _real_cases import bite_case, occlude, pairs

            names = pairs(args.real)
            names = names[:n_pairs] if n_pairs else names
            real: dict[str, list[Row]] = {name: [] for name, *_ in REAL}
            seated: list[tuple[int, Occluded]] = []
            for i, stem in enumerate(names):
                occluded = occlude(args.real, stem)
                print(f"pair {stem}: posterior contact area right/left {occluded.contacts_mm2[0]:.2f} / "
                      f"{occluded.contacts_mm2[1]:.2f} mm², deepest penetration {occluded.penetration_mm:.3f} mm",
                      flush=True)  # fmt: skip
                if min(occluded.contacts_mm2) < MIN_CONTACT_MM2:
                    print(f"pair {stem} skipped: the constructed occlusion has no contact on a posterior side\n")
                    continue
                seated.append((i, occluded))
                for name, simulator, noise, one_sided in REAL:
                    case = bite_case(occluded, 2000 + i, simulator=simulator, noise_mm=noise, one_sided=one_sided)
                    real[name].append(run_case(stem, case, work, baselines))
            for name, rows in real.items():
                results["real: " + name] = rows
                print_rows("real: " + name, rows, baselines)
            if args.relations != "none":
                results.update(run_relations(seated[:relation_pairs], args.relations, work, baselines))
    headers = ["set", "success", "confidently wrong", "not confident", "TRE median / max mm (successes)",
               "time median / max s", "CPU median s"]  # fmt: skip
    for b in baselines:
        headers += [f"{b} success", f"{b} < {COARSE_MM:g} mm", f"{b} TRE median mm", f"{b} time median s"]
    print("## Summary (success: ok and TRE RMS < 0.05 mm; confidently wrong: ok and TRE RMS >= 0.05 mm)\n")
    print(table(headers, [summarise(name, rows, baselines) for name, rows in results.items()]))
    wrong = sum(r.status == "ok" and r.tre >= GOAL_MM for rows in results.values() for r in rows)
    print(f"\nconfidently wrong: {wrong}")
    print("\n## Speed (issue 10, goal 4): stage medians, wall s (other: start-up, imports, outputs)\n")
    print(table(["set", *STAGES, "other", "whole process"], stage_rows(results)))
    two_bites = results.get("generated: two bites")
    if two_bites:
        wall = float(np.median([r.wall for r in two_bites]))
        cpu = float(np.median([r.cpu for r in two_bites]))
        print(f"\ngenerated two bites, whole process: median wall {wall:.2f} s (goal {GOAL_WALL_S} s: "
              f"{'met' if wall <= GOAL_WALL_S else 'NOT MET'}), median CPU {cpu:.2f} s, "
              f"load average now {os.getloadavg()[0]:.1f}")  # fmt: skip
    if baselines:
        load = open3d_load_s()
        goal = goal_baseline(results, baselines)
        for name in [goal, *[b for b in baselines if b != goal]]:
            print("\n" + against_open3d(results, name, load, goal=name == goal))
    with tempfile.TemporaryDirectory() as tmp:
        print(f"\n## Reading a {STL_TRIANGLES:,}-triangle binary STL (median of 7, s; goal {GOAL_STL_S} s CPU)\n")
        print(table(["reader", "CPU s", "wall s", "goal"], stl_reading(Path(tmp))))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
