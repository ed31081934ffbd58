"""Confidence measures against registration error, on real anatomy (train split) and generated cases.

    python bench/calibrate_aligner.py --real DIR [--pairs N | --names 007,009] [--subdivisions 2]
        [--seeds N] [--first-seed N] [--cases N] [--negatives] [--csv FILE] [--merge FILE ...] [--plot FILE]

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
variant (``--first-seed`` 1: seeds 1.. alone, e.g. to check a change on a second seed
without repeating the first). ``--merge`` adds the rows of earlier ``--csv`` files to the counts and the plot,
so a calibration can be run in parts (e.g. native and subdivided) and drawn once
(``--merge-only``: no new cases).

``--negatives`` adds, per real pair with posterior contact on both sides, cases that have no right registration or whose bites
disagree (the hard negatives a confidence rule must refuse; the pairs' order, cyclic, names
"the next pair"):

* ``other-lower``: the bites and upper of one pair with the lower arch of the next pair (another
  patient's lower cannot be seated on a bite of this one). No true pose: every ``ok`` is
  confidently wrong. Its ``tre_mm`` is the RMS distance (capped at 5 mm) from the true lower's
  vertices within 2 mm of a bite point to the nearest vertex of the placed other lower: how far
  the surface the result shows is from the one the bite shows.
* ``other-bite``: the arches of one pair with the bite scans of the next pair (a bite scan of
  another patient). No true pose either: every ``ok`` is confidently wrong (``tre_mm`` against
  the pair's own constructed occlusion).
* ``shifted-bite`` (two-bite variants): bite 1 simulated with the lower arch slid forward by
  0.25, 0.5, 1 or 2 mm (cycling over the pairs), as when the patient bit differently for the second
  scan. The truth is bite 0's occlusion: ``ok`` is right only within 0.05 mm of it.

Only scalar measurements are written (``--csv``, ``--plot``); the meshes stay where
they are. Use the ``train`` split only: the ``test`` split is for independent checks.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
from _real_cases import Occluded, bite_case, occlude, pairs
from scipy.spatial import cKDTree

from mesial.aligner.params import AlignParams
from mesial.aligner.pipeline import AlignmentResult, align_scans
from mesial.aligner.registration import Registration, relative_error
from mesial.aligner.samples import Mesh, SampleCase, generate_case
from mesial.aligner.transforms import invert, random_rigid, transform_points
from mesial.aligner.validate import scan_from_arrays

GOAL_MM = 0.05
VARIANTS = (("strip", 0.02, False), ("strip", 0.05, False), ("strip", 0.02, True), ("range", 0.02, False),
            ("range", 0.02, True))  # fmt: skip
FIELDS = ("set", "case", "contact", "seed", "vertices", "simulator", "noise", "one_sided", "status", "tre_mm", "margin",
          "fitness", "rmse_mm", "rmse_ratio", "arch_share", "disagreement_mm", "position_sd_mm", "reasons", "truth")  # fmt: skip
# negative sets without a true pose: every ok is confidently wrong
NO_TRUTH = ("other-lower", "other-bite")
SHIFTS_MM = (0.25, 0.5, 1.0, 2.0)


def wrong(row: dict[str, object]) -> bool:
    """A result that is not right: no true pose exists (``truth`` none), or TRE RMS >= GOAL_MM."""
    return row.get("truth") == "none" or float(row["tre_mm"]) >= GOAL_MM  # type: ignore[arg-type]


def measures(case: SampleCase, error_of: Callable[[Registration], float] | None = None) -> dict[str, object]:
    """Align a case and return its measures; ``tre_mm`` by ``error_of`` when given (else the lower's TRE RMS)."""
    upper = scan_from_arrays(case.upper.vertices, case.upper.faces, "upper")
    lower = scan_from_arrays(case.lower.vertices, case.lower.faces, "lower")
    roles = ("bite", "bite2")
    bites = [scan_from_arrays(b.vertices, b.faces, r, orient=False) for b, r in zip(case.bites, roles, strict=False)]
    result: AlignmentResult = align_scans(upper, lower, bites)
    registration = result.registration
    assert registration is not None
    estimate = invert(registration.upper_to_bite) @ registration.lower_to_bite
    error = relative_error(estimate, invert(case.truth["upper"]) @ case.truth["lower"], case.lower.vertices)
    tre = float(np.sqrt(np.mean(error**2))) if error_of is None else error_of(registration)
    fits = registration.fit.bites
    ratio = max(max(b.upper_rmse_mm, b.lower_rmse_mm) / max(min(b.upper_rmse_mm, b.lower_rmse_mm), 1e-6) for b in fits)
    share = min(min(b.upper_inliers, b.lower_inliers) / max(b.points, 1) for b in fits)
    return {
        "vertices": len(case.upper.vertices),
        "status": result.status,
        "tre_mm": tre,
        "margin": min(item.margin for item in registration.evidence),
        "fitness": min(b.fitness for b in fits),
        "rmse_mm": max(b.inlier_rmse_mm for b in fits),
        "rmse_ratio": float(ratio),
        "arch_share": float(share),
        # two bites: how far apart each alone places the lower (NaN with one bite, or bite 0 alone)
        "disagreement_mm": float("nan")
        if registration.bite_disagreement_mm is None
        else registration.bite_disagreement_mm,
        # how precisely the bites fix the lower arch (mm; NaN when no fit was evaluated)
        "position_sd_mm": float("nan")
        if registration.lower_position_sd_mm is None
        else registration.lower_position_sd_mm,
        "reasons": "; ".join(result.reasons)[:300],
    }


def other_lower(case: SampleCase, other: Occluded, seed: int) -> tuple[SampleCase, Callable[[Registration], float]]:
    """``case`` with the lower arch of ``other`` (another patient) in a random pose, and its error measure.

    The error: RMS distance (capped at 5 mm) from the true lower's vertices within 2 mm of a bite
    point to the nearest vertex of the other lower as placed (upper file frame).
    """
    pose = random_rigid(np.random.default_rng([seed, 11]), translation_mm=40.0)
    lower = Mesh(transform_points(other.lower.vertices, pose), other.lower.faces)
    to_upper = invert(case.truth["upper"])
    true_lower = transform_points(case.lower.vertices, to_upper @ case.truth["lower"])
    shown = np.vstack([transform_points(b.vertices, to_upper @ case.truth[r])
                       for b, r in zip(case.bites, ("bite", "bite2"), strict=False)])  # fmt: skip
    near = cKDTree(shown).query(true_lower, distance_upper_bound=2.0)[0] < 2.0
    seen = true_lower[near] if near.any() else true_lower

    def error_of(registration: Registration) -> float:
        placed = transform_points(lower.vertices, invert(registration.upper_to_bite) @ registration.lower_to_bite)
        distance = np.minimum(cKDTree(placed).query(seen, distance_upper_bound=5.0)[0], 5.0)
        return float(np.sqrt(np.mean(distance**2)))

    return replace(case, lower=lower), error_of


def simulate(source: Occluded, seed: int, simulator: str, noise_mm: float, one_sided: bool) -> SampleCase:
    """``bite_case``, its bites checked as input (an empty or degenerate simulated bite: ValueError)."""
    case = bite_case(source, seed, simulator=simulator, noise_mm=noise_mm, one_sided=one_sided)
    for bite in case.bites:
        scan_from_arrays(bite.vertices, bite.faces, "bite", orient=False)
    return case


def shifted(occluded: Occluded, shift_mm: float) -> Occluded:
    """The same pair with its lower arch slid forward (occlusion frame: y anterior) by ``shift_mm``."""
    motion = np.eye(4)
    motion[1, 3] = shift_mm
    return replace(occluded, lower=Mesh(transform_points(occluded.lower.vertices, motion), occluded.lower.faces))


def checks(params: AlignParams) -> tuple[tuple[str, float, str, bool], ...]:
    """The confidence measures a row records, each ``(column, threshold, label, at_least)``: a result passes
    the check when its value is at least (``at_least``) or at most the threshold (the plot's panels, the counts)."""
    return (("margin", params.min_margin, "min margin (share of bite points)", True),
            ("fitness", params.min_fitness, "min fitness", True),
            ("rmse_mm", params.max_inlier_rmse_mm, "max inlier RMSE (mm)", False),
            ("rmse_ratio", params.max_rmse_ratio, "max RMSE ratio of the arches", False),
            ("arch_share", params.min_arch_share, "min share of a bite on one arch", True),
            ("disagreement_mm", params.max_bite_disagreement_mm, "two bites alone: lower apart (mm)", False),
            ("position_sd_mm", params.max_lower_position_sd_mm, "lower arch's position SD (mm)", False))  # fmt: skip


def plot(rows: list[dict[str, object]], path: Path, params: AlignParams) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = checks(params)
    columns = 3
    rows_of = -(-len(panels) // columns)
    figure, grid = plt.subplots(rows_of, columns, figsize=(4.6 * columns, 4.2 * rows_of))
    axes = list(np.ravel(grid))[: len(panels)]
    tre = np.array([float(r["tre_mm"]) for r in rows])  # type: ignore[arg-type]
    real = np.array([str(r["set"]) == "real" for r in rows])
    generated = np.array([str(r["set"]) == "generated" for r in rows])
    negative = ~real & ~generated  # another patient's lower or bites, a second bite in a slid occlusion
    ok = np.array([r["status"] == "ok" for r in rows])
    dense = np.array([int(r["vertices"]) > 50_000 for r in rows])  # type: ignore[call-overload]
    for axis, (key, threshold, label, _) in zip(axes, panels, strict=True):
        value = np.array([float(r.get(key) or "nan") for r in rows])  # type: ignore[arg-type]
        for mask, colour, name in ((ok & real, "tab:green", "real, ok"), (~ok & real, "tab:red", "real, not confident"),
                                   (ok & generated, "tab:blue", "generated, ok"),
                                   (~ok & generated, "tab:orange", "generated, not confident"),
                                   (ok & negative, "black", "negative, ok"),
                                   (~ok & negative, "tab:purple", "negative, not confident")):  # fmt: skip
            for size, marker, suffix in ((mask & ~dense, "o", " (~8k vertices)"), (mask & dense, "^", " (~130k)")):
                if size.any():
                    label_of = name + (suffix if real[size].all() else "")
                    axis.scatter(value[size], np.maximum(tre[size], 1e-4), s=14, c=colour, marker="x" if negative[size].all() else marker, label=label_of,
                                 alpha=0.7)  # fmt: skip
        axis.axhline(GOAL_MM, color="k", lw=0.8, ls="--")
        axis.axvline(threshold, color="gray", lw=0.8)
        axis.set_yscale("log")
        if key in ("disagreement_mm", "position_sd_mm"):
            axis.set_xscale("log")
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
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first of the --seeds simulations (1: a second seed alone, without rerunning seed 0)")  # fmt: skip
    parser.add_argument(
        "--no-contact",
        action="store_true",
        help="also pairs whose construction has no posterior contact on a side (more wrong poses)",
    )
    parser.add_argument("--merge", type=Path, nargs="*", default=[], help="earlier --csv files counted and plotted too")
    parser.add_argument("--merge-only", action="store_true", help="no new cases: count and plot the --merge rows")
    parser.add_argument("--cases", type=int, default=3, help="generated cases per variant")
    parser.add_argument("--negatives", action="store_true",
                        help="also another patient's lower, another patient's bites, and a second bite in a slid "
                             "occlusion, per real pair (see above)")  # fmt: skip
    parser.add_argument("--positives", action=argparse.BooleanOptionalAction, default=True,
                        help="the real pairs' own cases (--no-positives: only the negatives)")  # fmt: skip
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
    built: list[tuple[str, Occluded, bool]] = []
    for stem in chosen:
        occluded = occlude(args.real, stem, args.subdivisions)
        contact = min(occluded.contacts_mm2) >= 0.05
        if not contact and not args.no_contact:
            print(f"{stem}: no posterior contact on a side ({occluded.contacts_mm2}), skipped", flush=True)
            continue
        built.append((stem, occluded, contact))
    for index, (stem, occluded, contact) in enumerate(built):
        following = built[(index + 1) % len(built)][1]  # the next pair: another patient
        slid = shifted(occluded, SHIFTS_MM[index % len(SHIFTS_MM)])
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for simulator, noise, one_sided in VARIANTS:
                variant = partial(simulate, seed=4000 + int(stem) + 1000 * seed, simulator=simulator, noise_mm=noise,
                                  one_sided=one_sided)  # fmt: skip
                label = {"case": stem, "contact": contact, "seed": seed, "simulator": simulator, "noise": noise,
                         "one_sided": one_sided}  # fmt: skip
                try:
                    case = variant(occluded)
                except ValueError as error:  # the simulator's failure (an empty bite: input errors are ValueErrors)
                    print(f"{stem} {simulator} {noise} {one_sided}: no bite simulated ({error})", flush=True)
                    continue
                todo: list[tuple[str, SampleCase, Callable[[Registration], float] | None, str]] = []
                if args.positives:
                    todo.append(("real", case, None, "yes"))
                if args.negatives and contact and len(built) > 1:  # a construction without contact is no occlusion
                    mismatched, error_of = other_lower(case, following, seed)
                    todo.append(("other-lower", mismatched, error_of, "none"))
                    try:
                        foreign = variant(following)
                        todo.append(("other-bite", replace(case, bites=foreign.bites), None, "none"))
                        if not one_sided:
                            todo.append(("shifted-bite", replace(case, bites=(case.bites[0], variant(slid).bites[1])),
                                         None, "yes"))  # fmt: skip
                    except ValueError as error:
                        print(f"{stem} {simulator} {noise} {one_sided}: a negative not simulated ({error})", flush=True)
                for kind, item, measure_of, truth in todo:
                    rows.append({"set": kind, **label, **measures(item, measure_of), "truth": truth})
                    print(rows[-1], flush=True)
    for earlier in args.merge:
        with earlier.open(newline="") as handle:
            rows += list(csv.DictReader(handle))
    params = AlignParams()
    bad = [r for r in rows if wrong(r)]
    passed = [r for r in bad if r["status"] == "ok"]
    print(f"\n{len(rows)} cases, {sum(r['status'] == 'ok' for r in rows)} ok, {len(bad)} wrong (TRE RMS >= {GOAL_MM} mm "
          f"or no true pose), of which ok (confidently wrong): {len(passed)}")  # fmt: skip
    for kind in sorted({str(r["set"]) for r in rows}):
        of_kind = [r for r in rows if r["set"] == kind]
        print(f"  {kind}: {len(of_kind)} cases, {sum(r['status'] == 'ok' for r in of_kind)} ok, "
              f"{sum(wrong(r) for r in of_kind)} wrong, {sum(wrong(r) and r['status'] == 'ok' for r in of_kind)} wrong and ok")  # fmt: skip
    for key, threshold, _, at_least in checks(params):
        # a measure a row lacks (one bite: no disagreement; an earlier CSV) is left out of its counts
        values = [float(r[key]) for r in bad if r.get(key) not in (None, "", "nan")]  # type: ignore[arg-type]
        values = [v for v in values if v == v]
        through = sum((v >= threshold) if at_least else (v <= threshold) for v in values)
        right = [float(r[key]) for r in rows if not wrong(r) and r.get(key) not in (None, "", "nan")]  # type: ignore[arg-type]
        right = [v for v in right if v == v]
        refused = sum((v < threshold) if at_least else (v > threshold) for v in right)
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
