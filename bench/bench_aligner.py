"""Bite registration: accuracy, speed and memory on generated cases, against Open3D's standard pipeline.

    python bench/bench_aligner.py [--quick] [--cases N] [--vertices N] [--no-baseline] [--no-sweep]

Three case sets (noise 0.02 mm with two bite scans, noise 0.05 mm with two, one-sided
bite at 0.02 mm), 20 random poses each (``--quick``: 2). Every case is generated with
``mesial.aligner.samples``, written to files, and aligned from the files by
``align_scans`` (validation, registration, occlusal analysis); writing the outputs
(PLYs, PNG renders, report) is timed apart. One case is aligned first and not
counted: its time (imports of Open3D/SciPy, first calls) is reported separately as
the warm-up. Peak memory is the process's peak resident set size while a case runs
(sampled every 5 ms). The pipeline never sees the truth; the benchmark compares its
result with ``truth``: TRE = distance between the lower arch's vertices placed by the
estimate and by the truth, relative to the upper.

Baselines on the same files, both Open3D's registration tutorial
(``examples/python/pipelines/registration_ransac.py`` + ``icp_registration.py``):
voxel downsampling, normals (radius 2 voxels), FPFH (5 voxels), RANSAC on feature
matches (distance 1.5 voxels, 100 000 iterations, 0.999 confidence), point-to-plane
ICP (0.4 voxels); a bite scan against each arch, the lower pose relative to the
upper follows from the two.

* ``open3d``: voxel 1 mm, the first bite scan (the tutorial as written).
* ``open3d best``: its most favourable fair configuration: voxel sizes 0.5, 1, 1.5
  and 2 mm, every bite scan, and per case the combination whose two ICP fits are
  best (lowest sum of ICP inlier RMSE over fitness, no ground truth used); time is
  the whole sweep. ``oracle TRE`` is the best TRE of any combination in the sweep
  (picked with the truth: an upper bound on what tuning this pipeline could give).

Goals (exit status 1 if one fails): every case ``ok`` with TRE RMS under 0.02 mm
(noise 0.02) / 0.05 mm (noise 0.05); pipeline under 3 s per case; at least 3x faster
than the baseline at equal or better TRE.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import hardware, table

from mesial.aligner._o3d import open3d
from mesial.aligner.pipeline import align_scans
from mesial.aligner.registration import relative_error
from mesial.aligner.report import write_outputs
from mesial.aligner.samples import generate_case, write_case
from mesial.aligner.transforms import invert

SETS = (("noise 0.02 mm, two bites", 0.02, False, 0.02), ("noise 0.05 mm, two bites", 0.05, False, 0.05),
        ("one-sided bite, noise 0.02 mm", 0.02, True, 0.02))  # fmt: skip
TIME_GOAL_S = 3.0
SPEEDUP_GOAL = 3.0
VOXEL_MM = 1.0
SWEEP_VOXELS_MM = (0.5, 1.0, 1.5, 2.0)
STAGES = ("validate", "preprocess", "global", "refine", "occlusion")


@dataclass
class Row:
    seed: int
    status: str
    tre_rms: float
    tre_max: float
    stages: dict[str, float]
    total: float
    render: float
    peak_mib: float
    margin: float
    cpu: float = float("nan")
    base_time: float = float("nan")
    base_tre: float = float("nan")
    best_time: float = float("nan")
    best_tre: float = float("nan")
    best_config: str = ""
    oracle_tre: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


class PeakRss:
    """Peak resident set size (MiB) of this process while the block runs, sampled every 5 ms."""

    def __enter__(self) -> PeakRss:
        self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def tre(estimate_lower_to_upper: np.ndarray, truth: dict[str, np.ndarray], lower_vertices: np.ndarray) -> np.ndarray:
    return relative_error(estimate_lower_to_upper, invert(truth["upper"]) @ truth["lower"], lower_vertices)


def _prepare(o3d: Any, path: Path, voxel: float) -> tuple[Any, Any]:
    reg = o3d.pipelines.registration
    mesh = o3d.io.read_triangle_mesh(str(path))
    cloud = o3d.geometry.PointCloud(mesh.vertices)
    down = cloud.voxel_down_sample(voxel)
    down.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=2 * voxel, max_nn=30))
    feature = reg.compute_fpfh_feature(down, o3d.geometry.KDTreeSearchParamHybrid(radius=5 * voxel, max_nn=100))
    return down, feature


def _register(o3d: Any, source: tuple[Any, Any], target: tuple[Any, Any], voxel: float) -> Any:
    """The tutorial's RANSAC on FPFH matches, then point-to-plane ICP: the ICP result (bite -> arch)."""
    reg = o3d.pipelines.registration
    distance = 1.5 * voxel
    ransac = reg.registration_ransac_based_on_feature_matching(
        source[0], target[0], source[1], target[1], True, distance,
        reg.TransformationEstimationPointToPoint(False), 3,
        [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9), reg.CorrespondenceCheckerBasedOnDistance(distance)],
        reg.RANSACConvergenceCriteria(100000, 0.999),
    )  # fmt: skip
    return reg.registration_icp(
        source[0], target[0], 0.4 * voxel, ransac.transformation, reg.TransformationEstimationPointToPlane()
    )


def open3d_baseline(paths: dict[str, Path]) -> tuple[np.ndarray, float]:
    """Lower-to-upper pose by Open3D's tutorial pipeline (voxel 1 mm, first bite), and its wall time."""
    o3d = open3d()  # typed Any: Open3D's stubs lack its defaults
    start = time.perf_counter()
    bite = _prepare(o3d, paths["bite"], VOXEL_MM)
    poses = {arch: np.asarray(_register(o3d, bite, _prepare(o3d, paths[arch], VOXEL_MM), VOXEL_MM).transformation)
             for arch in ("upper", "lower")}  # fmt: skip
    return poses["upper"] @ invert(poses["lower"]), time.perf_counter() - start


def open3d_sweep(paths: dict[str, Path]) -> tuple[list[tuple[str, float, np.ndarray]], float]:
    """Every (voxel, bite) combination: ``(name, badness, lower_to_upper)``, and the sweep's wall time.

    ``badness`` is what a user without ground truth could rank by: the sum over
    both arches of ICP inlier RMSE / fitness (inf when a fit found nothing).
    """
    o3d = open3d()
    start = time.perf_counter()
    bites = [role for role in ("bite", "bite2") if role in paths]
    results = []
    for voxel in SWEEP_VOXELS_MM:
        arches = {arch: _prepare(o3d, paths[arch], voxel) for arch in ("upper", "lower")}
        for role in bites:
            bite = _prepare(o3d, paths[role], voxel)
            fits = {arch: _register(o3d, bite, arches[arch], voxel) for arch in ("upper", "lower")}
            badness = sum(f.inlier_rmse / f.fitness if f.fitness > 0 else np.inf for f in fits.values())
            pose = np.asarray(fits["upper"].transformation) @ invert(np.asarray(fits["lower"].transformation))
            results.append((f"{voxel:g} mm, {role}", float(badness), pose))
    return results, time.perf_counter() - start


def run_case(seed: int, noise: float, one_sided: bool, vertices: int, baseline: bool, sweep: bool, work: Path) -> Row:
    case = generate_case(seed, noise_mm=noise, one_sided=one_sided, vertices=vertices)
    paths = write_case(case, work / f"case{seed}")
    bites = [paths["bite"]] + ([paths["bite2"]] if "bite2" in paths else [])
    with PeakRss() as memory:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = align_scans(paths["upper"], paths["lower"], bites)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    start = time.perf_counter()
    write_outputs(result, work / f"out{seed}", "bench")
    render = time.perf_counter() - start
    error = np.full(1, np.inf)
    margin = float("nan")
    if result.registration is not None:
        registration = result.registration
        error = tre(invert(registration.upper_to_bite) @ registration.lower_to_bite, case.truth, case.lower.vertices)
        margin = min(item.margin for item in registration.evidence)
    row = Row(seed, result.status, float(np.sqrt(np.mean(error**2))), float(error.max()), dict(result.timings),
              total, render, memory.peak, margin, cpu)  # fmt: skip
    if result.registration is not None:
        row.extra = {
            "fitness": min(b.fitness for b in result.registration.fit.bites),
            "rmse": max(b.inlier_rmse_mm for b in result.registration.fit.bites),
        }

    def rms(pose: np.ndarray) -> float:
        return float(np.sqrt(np.mean(tre(pose, case.truth, case.lower.vertices) ** 2)))

    if baseline:
        estimate, row.base_time = open3d_baseline(paths)
        row.base_tre = rms(estimate)
    if sweep:
        results, row.best_time = open3d_sweep(paths)
        name, _, pose = min(results, key=lambda item: item[1])
        row.best_tre, row.best_config = rms(pose), name
        row.oracle_tre = min(rms(pose) for _, _, pose in results)
    return row


def _stats(values: list[float]) -> str:
    return f"{np.mean(values):.4f} / {max(values):.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 cases per set")
    parser.add_argument("--cases", type=int, default=None, help="cases per set (default 20, quick 2)")
    parser.add_argument("--vertices", type=int, default=150_000, help="vertices per arch")
    parser.add_argument("--no-baseline", action="store_true", help="skip both Open3D baselines")
    parser.add_argument("--no-sweep", action="store_true", help="skip the Open3D configuration sweep")
    args = parser.parse_args()
    cases = args.cases or (2 if args.quick else 20)
    baseline, sweep = not args.no_baseline, not (args.no_baseline or args.no_sweep)
    print(hardware())
    print(f"{cases} cases per set, {args.vertices:,} vertices per arch; load average at start "
          f"{os.getloadavg()[0]:.1f} (other processes share the cores: wall times include their load)\n")  # fmt: skip
    failures: list[str] = []
    all_rows: list[tuple[str, float, Row]] = []
    summary: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        warm = generate_case(999, vertices=args.vertices)
        paths = write_case(warm, Path(tmp) / "warm")
        generated = time.perf_counter() - start
        start = time.perf_counter()
        align_scans(paths["upper"], paths["lower"], [paths["bite"], paths["bite2"]])
        print(f"warm-up (first case in the process: imports, first calls; not counted): "
              f"{time.perf_counter() - start:.2f} s (its generation {generated:.2f} s)\n")  # fmt: skip
        for name, noise, one_sided, goal in SETS:
            rows = []
            for seed in range(cases):
                row = run_case(1000 + seed, noise, one_sided, args.vertices, baseline, sweep, Path(tmp))
                rows.append(row)
                all_rows.append((name, goal, row))
            print(f"## {name} (goal: TRE RMS < {goal} mm)")
            print(table(
                ["seed", "status", "TRE rms mm", "TRE max mm", "margin", "min fitness", "max rmse mm",
                 *[f"{s} s" for s in STAGES], "total s", "CPU s", "render s", "peak RSS MiB"],
                [[r.seed, r.status, f"{r.tre_rms:.4f}", f"{r.tre_max:.4f}", f"{r.margin:.2f}",
                  f"{r.extra.get('fitness', float('nan')):.3f}", f"{r.extra.get('rmse', float('nan')):.4f}",
                  *[f"{r.stages.get(s, 0.0):.2f}" for s in STAGES], f"{r.total:.2f}", f"{r.cpu:.2f}", f"{r.render:.2f}",
                  f"{r.peak_mib:.0f}"] for r in rows],
            ))  # fmt: skip
            ok = [r for r in rows if r.status == "ok" and r.tre_rms < goal]
            wrong_ok = [r for r in rows if r.status == "ok" and r.tre_rms >= 0.1]
            line = (f"success {len(ok)}/{len(rows)} (ok but TRE >= 0.1 mm: {len(wrong_ok)}); "
                    f"TRE RMS mean/max {_stats([r.tre_rms for r in rows])} mm; "
                    f"time mean/max {np.mean([r.total for r in rows]):.2f} / {max(r.total for r in rows):.2f} s "
                    f"(CPU mean {np.mean([r.cpu for r in rows]):.2f} s, load average {os.getloadavg()[0]:.1f}); "
                    f"stage means " + ", ".join(f"{s} {np.mean([r.stages.get(s, 0.0) for r in rows]):.2f}"
                                                for s in STAGES) +
                    f"; peak RSS max {max(r.peak_mib for r in rows):.0f} MiB")  # fmt: skip
            print(line + "\n")
            summary.append([name, f"{len(ok)}/{len(rows)}", _stats([r.tre_rms for r in rows]),
                            f"{np.mean([r.total for r in rows]):.2f} / {max(r.total for r in rows):.2f}",
                            f"{max(r.peak_mib for r in rows):.0f}"])  # fmt: skip
            if len(ok) < len(rows):
                failures.append(f"{name}: {len(rows) - len(ok)} case(s) failed")
            slow = [r for r in rows if r.total >= TIME_GOAL_S]
            if slow:
                failures.append(f"{name}: {len(slow)} case(s) took {TIME_GOAL_S} s or more")
    if baseline:
        print("## Mesial vs Open3D (FPFH + RANSAC + point-to-plane ICP)")
        rows_out = []
        for name, goal, r in all_rows:
            rows_out.append([name, r.seed, f"{r.total:.2f}", f"{r.tre_rms:.4f}", "yes" if r.status == "ok" and
                             r.tre_rms < goal else "no", f"{r.base_time:.2f}", f"{r.base_tre:.3f}",
                             f"{r.best_time:.2f}", r.best_config, f"{r.best_tre:.3f}", f"{r.oracle_tre:.3f}"])  # fmt: skip
        print(table(["set", "seed", "mesial s", "mesial TRE", "mesial ok", "open3d s", "open3d TRE",
                     "open3d best s", "best config", "best TRE", "oracle TRE"], rows_out))  # fmt: skip
        print()
        per_set = []
        for name, _, _, goal in SETS:
            rows = [r for n, _, r in all_rows if n == name]
            entry = [name, f"{len(rows)}", f"{np.mean([r.total for r in rows]):.2f}",
                     f"{np.median([r.tre_rms for r in rows]):.4f}",
                     f"{sum(r.status == 'ok' and r.tre_rms < goal for r in rows)}",
                     f"{np.mean([r.base_time for r in rows]):.2f}", f"{np.median([r.base_tre for r in rows]):.2f}",
                     f"{sum(r.base_tre < goal for r in rows)}"]  # fmt: skip
            if sweep:
                entry += [f"{np.mean([r.best_time for r in rows]):.2f}", f"{np.median([r.best_tre for r in rows]):.2f}",
                          f"{sum(r.best_tre < goal for r in rows)}", f"{np.median([r.oracle_tre for r in rows]):.2f}",
                          f"{sum(r.oracle_tre < goal for r in rows)}"]  # fmt: skip
            per_set.append(entry)
        headers = ["set", "cases", "mesial s", "mesial TRE (median)", "mesial ok", "open3d s", "open3d TRE",
                   "open3d ok"]  # fmt: skip
        if sweep:
            headers += ["best s", "best TRE", "best ok", "oracle TRE", "oracle ok"]
        print(table(headers, per_set))
        mesial_time = float(np.mean([r.total for _, _, r in all_rows]))
        base_time = float(np.mean([r.base_time for _, _, r in all_rows]))
        mesial_tre = float(np.median([r.tre_rms for _, _, r in all_rows]))
        base_tre = float(np.median([r.base_tre for _, _, r in all_rows]))
        print(f"\nmean time: mesial {mesial_time:.2f} s, open3d {base_time:.2f} s (open3d / mesial "
              f"{base_time / mesial_time:.1f}x); median TRE: mesial {mesial_tre:.4f} mm, open3d {base_tre:.3f} mm")  # fmt: skip
        if base_time / mesial_time < SPEEDUP_GOAL:
            failures.append(
                f"open3d / mesial time {base_time / mesial_time:.1f}x < {SPEEDUP_GOAL}x "
                f"(the baseline's TRE is {base_tre:.1f} mm: it does not solve these cases)"
            )
        if mesial_tre > base_tre:
            failures.append("TRE worse than the baseline's")
    print("\n## Summary\n")
    print(table(["set", "success", "TRE RMS mean / max mm", "time mean / max s", "peak RSS MiB"], summary))
    print("\nGOALS MET" if not failures else "\nGOALS NOT MET: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
