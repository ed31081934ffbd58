"""Confidence measures against registration error, on real anatomy (train split) and generated cases.

    python bench/calibrate_aligner.py --real DIR [--pairs N | --names 007,009] [--subdivisions 2]
        [--seeds N] [--cases N] [--csv FILE] [--merge FILE ...] [--plot FILE]

Runs ``align_scans`` in this process on the same kinds of cases as ``bench_aligner.py``
(real pairs from ``DIR`` in a constructed intercuspal position with bite scans from both
simulators, and generated cases), and records per case the TRE RMS against the truth
and every measure the confidence rule reads: the global margin (the smallest of the
bites'), the smallest fitness, the largest inlier RMSE, the largest ratio of the two
arches' inlier RMSEs and the smallest share of a bite explained by one arch (the status
and reasons say the rest). It prints, per measure, the threshold in force and how many
wrong results (TRE RMS >= 0.05 mm) it lets through, and draws each measure against the
TRE (``--plot``; docs/aligner-confidence.png is made this way).

Real arches are Loop-subdivided ``--subdivisions`` times (2: ~130 000 vertices, as the
benchmark; 0: the scans' native ~8 000), each pair with ``--seeds`` bite simulations per
variant. ``--merge`` adds the rows of earlier ``--csv`` files to the counts and the plot,
so a calibration can be run in parts (e.g. native and subdivided) and drawn once
(``--merge-only``: no new cases).

Only scalar measurements are written (``--csv``, ``--plot``); the meshes stay where
they are. Use the ``train`` split only: the ``test`` split is for independent checks.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from _real_cases import bite_case, occlude, pairs

from mesial.aligner.params import AlignParams
from mesial.aligner.pipeline import AlignmentResult, align_scans
from mesial.aligner.registration import relative_error
from mesial.aligner.samples import SampleCase, generate_case
from mesial.aligner.transforms import invert
from mesial.aligner.validate import scan_from_arrays

GOAL_MM = 0.05
VARIANTS = (("strip", 0.02, False), ("strip", 0.05, False), ("strip", 0.02, True), ("range", 0.02, False),
            ("range", 0.02, True))  # fmt: skip
FIELDS = ("set", "case", "contact", "seed", "vertices", "simulator", "noise", "one_sided", "status", "tre_mm", "margin",
          "fitness", "rmse_mm", "rmse_ratio", "arch_share", "reasons")  # fmt: skip


def measures(case: SampleCase) -> dict[str, object]:
    upper = scan_from_arrays(case.upper.vertices, case.upper.faces, "upper")
    lower = scan_from_arrays(case.lower.vertices, case.lower.faces, "lower")
    roles = ("bite", "bite2")
    bites = [scan_from_arrays(b.vertices, b.faces, r, orient=False) for b, r in zip(case.bites, roles, strict=False)]
    result: AlignmentResult = align_scans(upper, lower, bites)
    registration = result.registration
    assert registration is not None
    estimate = invert(registration.upper_to_bite) @ registration.lower_to_bite
    error = relative_error(estimate, invert(case.truth["upper"]) @ case.truth["lower"], case.lower.vertices)
    fits = registration.fit.bites
    ratio = max(max(b.upper_rmse_mm, b.lower_rmse_mm) / max(min(b.upper_rmse_mm, b.lower_rmse_mm), 1e-6) for b in fits)
    share = min(min(b.upper_inliers, b.lower_inliers) / max(b.points, 1) for b in fits)
    return {
        "vertices": len(case.upper.vertices),
        "status": result.status,
        "tre_mm": float(np.sqrt(np.mean(error**2))),
        "margin": min(item.margin for item in registration.evidence),
        "fitness": min(b.fitness for b in fits),
        "rmse_mm": max(b.inlier_rmse_mm for b in fits),
        "rmse_ratio": float(ratio),
        "arch_share": float(share),
        "reasons": "; ".join(result.reasons)[:300],
    }


def plot(rows: list[dict[str, object]], path: Path, params: AlignParams) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("margin", params.min_margin, "min margin (share of bite points)", ">="),
              ("fitness", params.min_fitness, "min fitness", ">="),
              ("rmse_mm", params.max_inlier_rmse_mm, "max inlier RMSE (mm)", "<="),
              ("rmse_ratio", params.max_rmse_ratio, "max RMSE ratio of the arches", "<="),
              ("arch_share", params.min_arch_share, "min share of a bite on one arch", ">="))  # fmt: skip
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0))
    tre = np.array([float(r["tre_mm"]) for r in rows])  # type: ignore[arg-type]
    real = np.array([str(r["set"]) == "real" for r in rows])
    ok = np.array([r["status"] == "ok" for r in rows])
    dense = np.array([int(r["vertices"]) > 50_000 for r in rows])  # type: ignore[call-overload]
    for axis, (key, threshold, label, _) in zip(axes, panels, strict=True):
        value = np.array([float(r[key]) for r in rows])  # type: ignore[arg-type]
        for mask, colour, name in ((ok & real, "tab:green", "real, ok"), (~ok & real, "tab:red", "real, not confident"),
                                   (ok & ~real, "tab:blue", "generated, ok"),
                                   (~ok & ~real, "tab:orange", "generated, not confident")):  # fmt: skip
            for size, marker, suffix in ((mask & ~dense, "o", " (~8k vertices)"), (mask & dense, "^", " (~130k)")):
                if size.any():
                    label_of = name + (suffix if real[size].all() else "")
                    axis.scatter(value[size], np.maximum(tre[size], 1e-4), s=14, c=colour, marker=marker,
                                 label=label_of, alpha=0.7)  # fmt: skip
        axis.axhline(GOAL_MM, color="k", lw=0.8, ls="--")
        axis.axvline(threshold, color="gray", lw=0.8)
        axis.set_yscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("TRE RMS (mm)")
    axes[0].legend(fontsize=7)
    figure.suptitle("Confidence measures against registration error (dashed: 0.05 mm; grey: threshold)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def _span(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}" if values else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", type=Path, required=True, help="folder of real NNN_U.ply / NNN_L.ply (train split)")
    parser.add_argument("--pairs", type=int, default=8, help="real pairs (0: all)")
    parser.add_argument("--names", default="", help="comma-separated real pairs (instead of --pairs)")
    parser.add_argument("--subdivisions", type=int, default=2, help="Loop subdivisions of the real arches")
    parser.add_argument("--seeds", type=int, default=1, help="bite simulations per real pair and variant")
    parser.add_argument(
        "--no-contact",
        action="store_true",
        help="also pairs whose construction has no posterior contact on a side (more wrong poses)",
    )
    parser.add_argument("--merge", type=Path, nargs="*", default=[], help="earlier --csv files counted and plotted too")
    parser.add_argument("--merge-only", action="store_true", help="no new cases: count and plot the --merge rows")
    parser.add_argument("--cases", type=int, default=3, help="generated cases per variant")
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    for seed in range(0 if args.merge_only else args.cases):
        for simulator, noise, one_sided in VARIANTS:
            case = generate_case(3000 + seed, noise_mm=noise, one_sided=one_sided, vertices=60_000, simulator=simulator)
            rows.append({"set": "generated", "case": seed, "contact": True, "seed": 0, "simulator": simulator, "noise": noise,
                         "one_sided": one_sided, **measures(case)})  # fmt: skip
            print(rows[-1], flush=True)
    names = pairs(args.real)
    chosen = args.names.split(",") if args.names else names[: args.pairs] if args.pairs else names
    if args.merge_only:
        chosen = []
    for stem in chosen:
        occluded = occlude(args.real, stem, args.subdivisions)
        contact = min(occluded.contacts_mm2) >= 0.05
        if not contact and not args.no_contact:
            print(f"{stem}: no posterior contact on a side ({occluded.contacts_mm2}), skipped", flush=True)
            continue
        for seed in range(args.seeds):
            for simulator, noise, one_sided in VARIANTS:
                try:
                    case = bite_case(occluded, 4000 + int(stem) + 1000 * seed, simulator=simulator, noise_mm=noise,
                                     one_sided=one_sided)  # fmt: skip
                    for bite in case.bites:  # an empty or degenerate simulated bite is refused as input
                        scan_from_arrays(bite.vertices, bite.faces, "bite", orient=False)
                except ValueError as error:  # the simulator's failure (an empty bite: input errors are ValueErrors)
                    print(f"{stem} {simulator} {noise} {one_sided}: no bite simulated ({error})", flush=True)
                    continue
                rows.append({"set": "real", "case": stem, "contact": contact, "seed": seed, "simulator": simulator, "noise": noise,
                             "one_sided": one_sided, **measures(case)})  # fmt: skip
                print(rows[-1], flush=True)
    for earlier in args.merge:
        with earlier.open(newline="") as handle:
            rows += list(csv.DictReader(handle))
    params = AlignParams()
    wrong = [r for r in rows if float(r["tre_mm"]) >= GOAL_MM]  # type: ignore[arg-type]
    passed = [r for r in wrong if r["status"] == "ok"]
    print(f"\n{len(rows)} cases, {sum(r['status'] == 'ok' for r in rows)} ok, {len(wrong)} with TRE RMS >= {GOAL_MM} mm, "
          f"of which ok (confidently wrong): {len(passed)}")  # fmt: skip
    for key, threshold, better in (("margin", params.min_margin, max), ("fitness", params.min_fitness, max),
                                   ("rmse_mm", params.max_inlier_rmse_mm, min),
                                   ("rmse_ratio", params.max_rmse_ratio, min),
                                   ("arch_share", params.min_arch_share, max)):  # fmt: skip
        values = [float(r[key]) for r in wrong]  # type: ignore[arg-type]
        through = sum((v >= threshold) if better is max else (v <= threshold) for v in values)
        right = [float(r[key]) for r in rows if float(r["tre_mm"]) < GOAL_MM]  # type: ignore[arg-type]
        refused = sum((v < threshold) if better is max else (v > threshold) for v in right)
        print(
            f"  {key}: threshold {threshold}; wrong results it alone would let through: {through}/{len(values)} "
            f"(their range {_span(values)}); right ones it refuses: {refused}/{len(right)} (range {_span(right)})"
        )
    if args.csv:
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    if args.plot:
        plot(rows, args.plot, params)
    return 1 if passed else 0


if __name__ == "__main__":
    sys.exit(main())
