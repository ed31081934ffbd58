"""Bite registration: accuracy, speed and memory on generated cases, against Open3D's standard pipeline.

    python bench/bench_aligner.py [--quick] [--cases N] [--vertices N] [--no-baseline]

Three case sets (noise 0.02 mm with two bite scans, noise 0.05 mm, one-sided bite
at 0.02 mm), 20 random poses each (``--quick``: 2). Every case is generated with
``mesial.aligner.samples``, written to files, and aligned from the files by
``align_scans`` (validation, registration, occlusal analysis); writing the outputs
(PLYs, PNG renders, report) is timed apart. The pipeline never sees the truth; the
benchmark compares its result with ``truth``: TRE = distance between the lower
arch's vertices placed by the estimate and by the truth, relative to the upper.

Baseline on the same files: Open3D's registration tutorial
(``examples/python/pipelines/registration_ransac.py`` + ``icp_registration.py``):
voxel downsampling, normals (radius 2 voxels), FPFH (5 voxels), RANSAC on feature
matches (distance 1.5 voxels, 100 000 iterations, 0.999 confidence), point-to-plane
ICP (0.4 voxels), voxel 1 mm; the first bite scan against each arch; the lower pose
relative to the upper follows from the two.

Goals (exit status 1 if one fails): every case ``ok`` with TRE RMS under 0.02 mm
(noise 0.02) / 0.05 mm (noise 0.05); pipeline under 3 s per case; at least 3x faster
than the baseline at equal or better TRE.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
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
    base_time: float = float("nan")
    base_tre: float = float("nan")


def tre(estimate_lower_to_upper: np.ndarray, truth: dict[str, np.ndarray], lower_vertices: np.ndarray) -> np.ndarray:
    return relative_error(estimate_lower_to_upper, invert(truth["upper"]) @ truth["lower"], lower_vertices)


def open3d_baseline(paths: dict[str, Path]) -> tuple[np.ndarray, float]:
    """Lower-to-upper pose by Open3D's tutorial pipeline, and its wall time (file reading included)."""
    o3d = open3d()  # typed Any: Open3D's stubs lack its defaults
    reg = o3d.pipelines.registration
    start = time.perf_counter()

    def prepare(path: Path) -> tuple[Any, Any]:
        mesh = o3d.io.read_triangle_mesh(str(path))
        cloud = o3d.geometry.PointCloud(mesh.vertices)
        down = cloud.voxel_down_sample(VOXEL_MM)
        down.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=2 * VOXEL_MM, max_nn=30))
        feature = reg.compute_fpfh_feature(down, o3d.geometry.KDTreeSearchParamHybrid(radius=5 * VOXEL_MM, max_nn=100))
        return down, feature

    bite, bite_f = prepare(paths["bite"])
    poses = {}
    for arch in ("upper", "lower"):
        target, target_f = prepare(paths[arch])
        distance = 1.5 * VOXEL_MM
        ransac = reg.registration_ransac_based_on_feature_matching(
            bite, target, bite_f, target_f, True, distance,
            reg.TransformationEstimationPointToPoint(False), 3,
            [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9), reg.CorrespondenceCheckerBasedOnDistance(distance)],
            reg.RANSACConvergenceCriteria(100000, 0.999),
        )  # fmt: skip
        icp = reg.registration_icp(
            bite, target, 0.4 * VOXEL_MM, ransac.transformation, reg.TransformationEstimationPointToPlane()
        )
        poses[arch] = np.asarray(icp.transformation)  # bite -> arch
    return poses["upper"] @ invert(poses["lower"]), time.perf_counter() - start


def run_case(seed: int, noise: float, one_sided: bool, vertices: int, baseline: bool, work: Path) -> Row:
    case = generate_case(seed, noise_mm=noise, one_sided=one_sided, vertices=vertices)
    paths = write_case(case, work / f"case{seed}")
    bites = [paths["bite"]] + ([paths["bite2"]] if "bite2" in paths else [])
    tracemalloc.start()
    start = time.perf_counter()
    result = align_scans(paths["upper"], paths["lower"], bites)
    total = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / (1 << 20)
    tracemalloc.stop()
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
              total, render, peak, margin)  # fmt: skip
    if baseline:
        estimate, row.base_time = open3d_baseline(paths)
        base_error = tre(estimate, case.truth, case.lower.vertices)
        row.base_tre = float(np.sqrt(np.mean(base_error**2)))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 cases per set")
    parser.add_argument("--cases", type=int, default=None, help="cases per set (default 20, quick 2)")
    parser.add_argument("--vertices", type=int, default=150_000, help="vertices per arch")
    parser.add_argument("--no-baseline", action="store_true", help="skip the Open3D baseline")
    args = parser.parse_args()
    cases = args.cases or (2 if args.quick else 20)
    print(hardware())
    print(f"{cases} cases per set, {args.vertices:,} vertices per arch\n")
    failures: list[str] = []
    all_rows: list[tuple[str, float, Row]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, noise, one_sided, goal in SETS:
            rows = []
            for seed in range(cases):
                row = run_case(1000 + seed, noise, one_sided, args.vertices, not args.no_baseline, Path(tmp))
                rows.append(row)
                all_rows.append((name, goal, row))
            print(f"## {name} (goal: TRE RMS < {goal} mm)")
            stage_names = ["validate", "preprocess", "global", "refine", "occlusion"]
            print(table(
                ["seed", "status", "TRE rms mm", "TRE max mm", "margin", *[f"{s} s" for s in stage_names],
                 "total s", "render s", "peak MiB"],
                [[r.seed, r.status, f"{r.tre_rms:.4f}", f"{r.tre_max:.4f}", f"{r.margin:.2f}",
                  *[f"{r.stages.get(s, 0.0):.2f}" for s in stage_names], f"{r.total:.2f}", f"{r.render:.2f}",
                  f"{r.peak_mib:.0f}"] for r in rows],
            ))  # fmt: skip
            ok = [r for r in rows if r.status == "ok" and r.tre_rms < goal]
            print(f"success {len(ok)}/{len(rows)}, TRE RMS mean {np.mean([r.tre_rms for r in rows]):.4f} mm, "
                  f"time mean {np.mean([r.total for r in rows]):.2f} s max {max(r.total for r in rows):.2f} s\n")  # fmt: skip
            if len(ok) < len(rows):
                failures.append(f"{name}: {len(rows) - len(ok)} case(s) failed")
            slow = [r for r in rows if r.total >= TIME_GOAL_S]
            if slow:
                failures.append(f"{name}: {len(slow)} case(s) took {TIME_GOAL_S} s or more")
    if not args.no_baseline:
        print("## Mesial vs Open3D (FPFH + RANSAC + point-to-plane ICP, voxel 1 mm)")
        rows_out = []
        for name, goal, r in all_rows:
            rows_out.append([name, r.seed, f"{r.total:.2f}", f"{r.base_time:.2f}", f"{r.base_time / r.total:.1f}x",
                             f"{r.tre_rms:.4f}", f"{r.base_tre:.4f}", "yes" if r.status == "ok" and r.tre_rms < goal
                             else "no", "yes" if r.base_tre < goal else "no"])  # fmt: skip
        print(table(["set", "seed", "mesial s", "open3d s", "speed-up", "mesial TRE", "open3d TRE", "mesial ok",
                     "open3d ok"], rows_out))  # fmt: skip
        mesial_time = float(np.mean([r.total for _, _, r in all_rows]))
        base_time = float(np.mean([r.base_time for _, _, r in all_rows]))
        mesial_tre = float(np.median([r.tre_rms for _, _, r in all_rows]))
        base_tre = float(np.median([r.base_tre for _, _, r in all_rows]))
        base_ok = sum(r.base_tre < goal for _, goal, r in all_rows)
        print(f"mean time: mesial {mesial_time:.2f} s, open3d {base_time:.2f} s ({base_time / mesial_time:.1f}x); "
              f"median TRE: mesial {mesial_tre:.4f} mm, open3d {base_tre:.4f} mm; open3d successes "
              f"{base_ok}/{len(all_rows)}")  # fmt: skip
        if base_time / mesial_time < SPEEDUP_GOAL:
            failures.append(f"speed-up {base_time / mesial_time:.1f}x < {SPEEDUP_GOAL}x")
        if mesial_tre > base_tre:
            failures.append("TRE worse than the baseline's")
    print("\nGOALS MET" if not failures else "\nGOALS NOT MET: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
