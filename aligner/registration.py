"""Bite registration: both arches into the first bite scan's frame, with a confidence.

``preprocess (thinning, canonical arch frames) → global (per bite scan:
exhaustive strip search against both arches in the upper's canonical frame,
short ICP on the upper for the best distinct poses, grid search of the lower
arch on the bite points the upper leaves unexplained, short joint ICP, ranking
by explained share with the margin to the best distinct alternative) → refine
(joint robust point-to-plane ICP of every bite scan against both arches)``.
See docs/aligner.md for the reasoning and the measured accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._anatomy import FLIP, ArchFrame, arch_frame
from mesial.aligner._coarse import distinct, grid_scores, icp, search_bite, strip_frame, yaw_grid
from mesial.aligner._features import invariant_representatives, voxel_representatives
from mesial.aligner._field import DistanceField
from mesial.aligner._icp import JointFit, PlaneTarget, SurfaceTarget, _match, refine_joint
from mesial.aligner.errors import AlignmentError
from mesial.aligner.params import AlignParams
from mesial.aligner.transforms import invert, rotation_angle_deg, transform_points
from mesial.aligner.validate import Scan

FloatArray = NDArray[np.float64]
Progress = Callable[[str, float], None]

ARCHES = ("upper", "lower")


@dataclass(frozen=True)
class BiteEvidence:
    """Global-step evidence for one bite scan.

    Attributes
    ----------
    bite : int
        Index of the bite scan (0 = the reference).
    score : float
        Share of the bite's points explained (within ``pair_distance_mm``) by
        either arch in the best hypothesis (bite pose and lower-arch pose after
        a short joint ICP).
    second_score : float
        The same for the best hypothesis whose bite pose is distinct from the
        best one (0 if none).
    margin : float
        ``score - second_score`` (share of bite points).
    hypotheses : int
        Distinct bite poses refined; ``paired`` of them placed the lower arch.
    tolerance_mm : float
        The distance within which a point counts as explained. When the
        coarse margin (``pair_distance_mm``, on thinned arches) is below
        ``min_margin``, both hypotheses are refined on the exact surfaces and
        scored again within ``tight_distance_mm``: these numbers are then those.
    """

    bite: int
    score: float
    second_score: float
    margin: float
    hypotheses: int
    paired: int
    tolerance_mm: float = 0.0


@dataclass(frozen=True)
class Registration:
    """Both arches in the first bite scan's frame.

    Attributes
    ----------
    upper_to_bite, lower_to_bite : (4, 4) float
        Map each arch file's coordinates (mm) into the frame of bite scan 0.
    bite_to_bite : tuple of (4, 4) float
        Each bite scan's frame into bite scan 0's (identity first). Only bite 0's
        when the result is the reference bite alone (see ``register_bite``).
    evidence : tuple of BiteEvidence
        Per bite used (bite 0 only for a reference-bite-alone result).
    fit : JointFit
        The joint fine step (per-bite fitness and RMSE) of the bites used.
    confident : bool
    reasons : tuple of str
        Why the result is not confident (empty when it is).
    timings : dict of str -> float
        Seconds per stage.
    """

    upper_to_bite: FloatArray
    lower_to_bite: FloatArray
    bite_to_bite: tuple[FloatArray, ...]
    evidence: tuple[BiteEvidence, ...]
    fit: JointFit
    confident: bool
    reasons: tuple[str, ...]
    timings: dict[str, float] = field(default_factory=dict)


def _no_progress(stage: str, fraction: float) -> None:
    return None


def register_bite(
    upper: Scan,
    lower: Scan,
    bites: list[Scan],
    params: AlignParams | None = None,
    progress: Progress | None = None,
) -> Registration:
    """Register both arches to one or two bite scans, each in an arbitrary pose.

    Parameters
    ----------
    upper, lower : Scan
        Arch scans, millimetres, any pose.
    bites : list of Scan
        One or two buccal bite scans; the first defines the output frame.
    params : AlignParams, optional
    progress : callable (stage, fraction), optional

    Returns
    -------
    registration : Registration
        With two bites that are not confident together, bite 0 is refined alone
        when its own global match is unambiguous and scores higher than bite 1's;
        if its own fit then explains ``strong_bite_min_fitness`` of its points and
        passes every one-bite check, the result is that one-bite registration (confident,
        bite 1 left out of ``evidence``, ``fit`` and ``bite_to_bite``).
    """
    params = params or AlignParams()
    report = progress or _no_progress
    if not 1 <= len(bites) <= 2:
        raise AlignmentError(f"one or two bite scans are needed, got {len(bites)}")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    # preprocess: thinned arches, canonical frames, search fields, thinned bites
    report("preprocess", 0.0)
    arch_scans = {"upper": upper, "lower": lower}
    frames: dict[str, ArchFrame] = {}
    coarse: dict[str, PlaneTarget] = {}
    for name, scan in arch_scans.items():
        pick = voxel_representatives(scan.vertices, params.frame_voxel_mm)
        frames[name] = arch_frame(scan.vertices[pick], scan.vertex_normals[pick], scan.vertices, scan.faces)
        pick = voxel_representatives(scan.vertices, params.coarse_voxel_mm)
        coarse[name] = PlaneTarget(scan.vertices[pick], scan.vertex_normals[pick], params.coarse_voxel_mm)
    to_canonical = frames["upper"].to_canonical
    lower_start = FLIP @ frames["lower"].to_canonical  # lower file -> upper canonical, arches facing
    upper_model = transform_points(coarse["upper"].points, to_canonical)
    lower_model = transform_points(coarse["lower"].points, lower_start)
    both = np.vstack([upper_model, lower_model])
    # look-ups farther than the score's reach (search_tau_mm, 2 x pair_distance_mm) all score 0
    search_field = DistanceField(
        both[voxel_representatives(both, params.frame_voxel_mm)], 0.6, params.search_tau_mm + 0.6
    )
    outline = both[np.abs(both[:, 2]) < 4.0]
    lower_field = DistanceField(lower_model, 0.5, 2 * params.pair_distance_mm + 0.5)
    pivot = lower_model.mean(axis=0) * np.array([1.0, 1.0, 0.0])
    motions = yaw_grid(params.lower_yaw_deg, params.lower_x_mm, params.lower_y_mm, params.lower_z_mm, pivot)
    fine = {name: scan.surface() for name, scan in arch_scans.items()}
    if len(bites) == 1:
        fine_voxel = params.one_bite_fine_voxel_mm
    else:  # the same number of fine points in all: each of n bites thinned sqrt(n) times coarser
        fine_voxel = params.fine_voxel_mm * float(np.sqrt(len(bites)))
    # the fine step's points do not depend on the bite file's pose or vertex order (nor then does its result)
    fine_points = [bite.vertices[invariant_representatives(bite.vertices, fine_voxel)] for bite in bites]
    rough_points = [bite.vertices[invariant_representatives(bite.vertices, params.rough_voxel_mm)] for bite in bites]
    timings["preprocess"] = time.perf_counter() - clock
    report("preprocess", 1.0)

    # global: per bite scan, the best (bite pose, lower pose) hypothesis and its margin
    clock = time.perf_counter()
    evidence: list[BiteEvidence] = []
    bite_to_upper: list[FloatArray] = []
    candidates: list[tuple[float, FloatArray]] = []
    runners_up: list[tuple[FloatArray, FloatArray] | None] = []
    for k, bite in enumerate(bites):
        report("global", k / len(bites))
        rng = np.random.default_rng([params.seed, k])
        item, bite_pose, lower_pose, runner_up = _global_one_bite(
            k, bite, to_canonical, lower_start, search_field, outline, lower_field, motions, coarse, params, rng
        )
        evidence.append(item)
        runners_up.append(runner_up)
        bite_to_upper.append(bite_pose)
        candidates.append((item.score, lower_pose))
    timings["global"] = time.perf_counter() - clock
    report("global", 1.0)

    # refine: every bite against both arches jointly, in the upper frame, at full resolution
    clock = time.perf_counter()
    report("refine", 0.0)
    lower_to_upper = max(candidates, key=lambda item: item[0])[1]
    # nearest-vertex planes until the poses settle, then exact closest points on the triangles
    planes = {name: fine[name].vertex_planes(scan.vertex_normals) for name, scan in arch_scans.items()}
    fit = _refine(rough_points, fine_points, planes, fine, bite_to_upper, lower_to_upper, params)
    timings["refine"] = time.perf_counter() - clock
    report("refine", 1.0)

    for k, item in enumerate(evidence):
        runner_up = runners_up[k]
        if item.margin < params.min_margin and runner_up is not None:
            evidence[k] = _resolve(item, fine_points[k], fine, (bite_to_upper[k], candidates[k][1]), runner_up, params)
    reasons = _reasons(evidence, fit, params, [pose for _, pose in candidates])
    if (
        reasons
        and len(bites) == 2
        and evidence[0].margin >= params.min_margin
        and evidence[0].score > evidence[1].score
    ):
        # the two bites together are not confident: the reference bite alone may be (its own
        # global match unambiguous, and every one-bite check passed on its own fit)
        clock = time.perf_counter()
        alone_fine = [bites[0].vertices[invariant_representatives(bites[0].vertices, params.one_bite_fine_voxel_mm)]]
        alone = _refine(rough_points[:1], alone_fine, planes, fine, bite_to_upper[:1], candidates[0][1], params)
        timings["refine_reference_bite"] = time.perf_counter() - clock
        strong = alone.bites[0].fitness >= params.strong_bite_min_fitness
        if strong and not _reasons(evidence[:1], alone, params, [candidates[0][1]]):
            return _registration(alone, evidence[:1], (), timings)
    return _registration(fit, evidence, tuple(reasons), timings)


def _refine(
    rough_points: list[FloatArray],
    fine_points: list[FloatArray],
    planes: dict[str, Any],
    fine: dict[str, SurfaceTarget],
    bite_to_upper: list[FloatArray],
    lower_to_upper: FloatArray,
    params: AlignParams,
) -> JointFit:
    """Joint fine step: nearest-vertex planes until the poses settle, then exact closest points."""
    rough = refine_joint(
        rough_points, planes["upper"], planes["lower"], bite_to_upper, lower_to_upper, params,
        threshold_mm=params.plane_threshold_mm, evaluate=False,
    )  # fmt: skip
    fit = refine_joint(
        fine_points, fine["upper"], fine["lower"], list(rough.bite_to_upper), rough.lower_to_upper, params,
        max_distance_mm=max(params.fine_gate_floor_mm, params.fine_gate_sigmas * rough.sigma_mm),
        max_iterations=params.exact_iterations,
    )  # fmt: skip
    if fit.lower_to_upper is None:  # pragma: no cover - refine_joint always returns it with a lower arch
        raise AlignmentError("the joint fine step returned no lower pose")
    return fit


def _registration(
    fit: JointFit, evidence: list[BiteEvidence], reasons: tuple[str, ...], timings: dict[str, float]
) -> Registration:
    """Both arches in the frame of the fit's first bite (bite scan 0)."""
    assert fit.lower_to_upper is not None
    upper_to_bite = invert(fit.bite_to_upper[0])
    lower_to_bite = upper_to_bite @ fit.lower_to_upper
    bite_to_bite = tuple(upper_to_bite @ pose for pose in fit.bite_to_upper)
    return Registration(upper_to_bite, lower_to_bite, bite_to_bite, tuple(evidence), fit, not reasons, reasons, timings)


def _global_one_bite(
    k: int,
    bite: Scan,
    to_canonical: FloatArray,
    lower_start: FloatArray,
    search_field: DistanceField,
    outline: FloatArray,
    lower_field: DistanceField,
    motions: FloatArray,
    coarse: dict[str, PlaneTarget],
    params: AlignParams,
    rng: np.random.Generator,
) -> tuple[BiteEvidence, FloatArray, FloatArray, tuple[FloatArray, FloatArray] | None]:
    """Best hypothesis for one bite scan: ``(evidence, bite_to_upper, lower_to_upper, runner_up)``.

    ``runner_up`` is the best distinct hypothesis ``(bite_to_upper, lower_to_upper)``, if any.
    """
    pick = voxel_representatives(bite.vertices, params.frame_voxel_mm)
    thin, thin_normals = bite.vertices[pick], bite.vertex_normals[pick]
    points = bite.vertices[voxel_representatives(bite.vertices, 0.6)]
    strip = strip_frame(thin, thin_normals)
    probe = thin[rng.choice(len(thin), size=min(params.probe_points, len(thin)), replace=False)]
    found = search_bite(
        probe,
        strip,
        search_field,
        outline,
        psi_step_deg=params.psi_step_deg,
        along_mm=params.along_mm,
        heights_mm=params.heights_mm,
        offsets_mm=params.offsets_mm,
        tau_mm=params.search_tau_mm,
        keep=300,
    )
    poses = [candidate.bite_to_canonical for candidate in found]
    keep = distinct(poses, strip.centre, params.distinct_rotation_deg, params.distinct_translation_mm)
    from_canonical = invert(to_canonical)
    tau = params.pair_distance_mm
    refined = []
    for index in keep[: params.bite_candidates]:
        pose = icp(thin, coarse["upper"], from_canonical @ poses[index], (2.0, 1.0, 0.5))
        on_upper = np.isfinite(coarse["upper"].match(transform_points(points, pose), tau)[0])
        refined.append((float(on_upper.mean()), pose, on_upper))
    refined.sort(key=lambda item: -item[0])
    scored: list[tuple[float, FloatArray, FloatArray]] = []
    for _, pose, on_upper in refined[: params.paired_candidates]:
        residual = transform_points(points[~on_upper], to_canonical @ pose)
        if len(residual) > params.residual_points:
            residual = residual[rng.choice(len(residual), size=params.residual_points, replace=False)]
        if len(residual) < 10:
            continue
        best = int(np.argmax(grid_scores(residual, motions, lower_field, 2 * tau)))
        lower_pose = from_canonical @ motions[best] @ lower_start
        joint = refine_joint(
            [thin], coarse["upper"], coarse["lower"], [pose], lower_pose, params,
            max_distance_mm=1.0, max_iterations=8, threshold_mm=params.plane_threshold_mm, evaluate=False,
        )  # fmt: skip
        assert joint.lower_to_upper is not None
        explained = _explained(points, joint.bite_to_upper[0], joint.lower_to_upper, coarse, tau)
        scored.append((explained, joint.bite_to_upper[0], joint.lower_to_upper))
    if not scored:
        return BiteEvidence(k, 0.0, 0.0, 0.0, len(refined), 0, tau), np.eye(4), lower_start, None
    scored.sort(key=lambda item: -item[0])
    best_score, best_pose, best_lower = scored[0]
    second = 0.0
    runner_up = None
    for value, pose, lower in scored[1:]:
        if (
            len(distinct([best_pose, pose], strip.centre, params.distinct_rotation_deg, params.distinct_translation_mm))
            == 2
        ):
            second, runner_up = value, (pose, lower)
            break
    item = BiteEvidence(k, best_score, second, best_score - second, len(refined), len(scored), tau)
    return item, best_pose, best_lower, runner_up


def _resolve(
    item: BiteEvidence,
    points: FloatArray,
    surfaces: dict[str, SurfaceTarget],
    best: tuple[FloatArray, FloatArray],
    runner_up: tuple[FloatArray, FloatArray],
    params: AlignParams,
) -> BiteEvidence:
    """Evidence of a bite whose two best hypotheses explain it almost equally at the coarse tolerance.

    Both are refined alone on the exact surfaces (same points, same
    iterations) and scored by the share of points within ``tight_distance_mm``
    of either arch: a pose shifted along a repetitive row of teeth explains
    most points within 0.3 mm but far fewer within 0.1 mm.
    """
    scores = []
    for bite_pose, lower_pose in (best, runner_up):
        fit = refine_joint(
            [points], surfaces["upper"], surfaces["lower"], [bite_pose], lower_pose, params,
            max_distance_mm=0.5, max_iterations=params.exact_iterations,
        )  # fmt: skip
        assert fit.lower_to_upper is not None
        x, _, closest, normals, distance, _ = _match(
            points, fit.bite_to_upper[0], surfaces["upper"], surfaces["lower"], fit.lower_to_upper,
            params.tight_distance_mm,
        )  # fmt: skip
        plane = np.abs(np.einsum("ij,ij->i", x - closest, normals))
        scores.append(float((np.isfinite(distance) & (plane < params.tight_distance_mm)).mean()))
    return BiteEvidence(
        item.bite, scores[0], scores[1], scores[0] - scores[1], item.hypotheses, item.paired, params.tight_distance_mm
    )


def _edge_length(scan: Scan) -> float:
    """Median edge length (mm) of a scan: how far a surface point can be from its nearest vertex."""
    corners = scan.vertices[scan.faces[:: max(1, len(scan.faces) // 20000)]]
    return float(np.median(np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=2)))


def _explained(
    points: FloatArray, pose: FloatArray, lower_pose: FloatArray, coarse: dict[str, PlaneTarget], tau: float
) -> float:
    """Share of bite points within ``tau`` of either arch (nearest thinned sample's plane)."""
    x = transform_points(points, pose)
    hit = np.zeros(len(x), dtype=bool)
    for name, moved in (("upper", x), ("lower", transform_points(x, invert(lower_pose)))):
        distance, index = coarse[name].match(moved, tau + coarse[name].spacing)
        found = np.isfinite(distance)
        plane = np.abs(
            np.einsum("ij,ij->i", moved[found] - coarse[name].points[index[found]], coarse[name].normals[index[found]])
        )
        hit[np.flatnonzero(found)[plane < tau]] = True
    return float(hit.mean())


def _reasons(
    evidence: list[BiteEvidence], fit: JointFit, params: AlignParams, candidates: list[FloatArray]
) -> list[str]:
    reasons = []
    for item in evidence:
        if item.margin < params.min_margin:
            reasons.append(
                f"bite {item.bite}: ambiguous global match (score {item.score:.2f}, "
                f"second-best {item.second_score:.2f}, margin {item.margin:.2f} < {params.min_margin})"
            )
    for k, bite in enumerate(fit.bites):
        if bite.fitness < params.min_fitness:
            reasons.append(
                f"bite {k}: only {bite.fitness:.0%} of its points lie on the arches (< {params.min_fitness:.0%})"
            )
        for arch, count in (("upper", bite.upper_inliers), ("lower", bite.lower_inliers)):
            if count < params.min_arch_share * bite.points:
                reasons.append(f"bite {k} shows too little of the {arch} arch ({count / bite.points:.0%})")
        if bite.inlier_rmse_mm > params.max_inlier_rmse_mm:
            reasons.append(f"bite {k}: inlier RMSE {bite.inlier_rmse_mm:.3f} mm > {params.max_inlier_rmse_mm} mm")
        low, high = sorted((bite.upper_rmse_mm, bite.lower_rmse_mm))
        if high > params.max_rmse_ratio * low + params.residual_floor_mm:
            reasons.append(
                f"bite {k}: the arches fit it unequally (inlier RMSE upper {bite.upper_rmse_mm:.3f} mm, "
                f"lower {bite.lower_rmse_mm:.3f} mm): a nearby wrong pose"
            )
    if len(candidates) > 1:
        spread = rotation_angle_deg(invert(candidates[0]) @ candidates[1])
        if spread > params.distinct_rotation_deg:
            reasons.append(f"the bite scans disagree on the lower arch's pose ({spread:.1f}°)")
    return reasons


def relative_error(estimate: FloatArray, truth: FloatArray, points: FloatArray) -> FloatArray:
    """Per-point distance (mm) between two placements of ``points (n, 3)``."""
    return np.asarray(
        np.linalg.norm(transform_points(points, estimate) - transform_points(points, truth), axis=1),
        dtype=np.float64,
    )


def summary(registration: Registration) -> dict[str, Any]:
    """JSON-ready metrics of a registration."""
    return {
        "evidence": [item.__dict__ for item in registration.evidence],
        "bites": [bite.__dict__ for bite in registration.fit.bites],
        "iterations": registration.fit.iterations,
        "sigma_mm": registration.fit.sigma_mm,
    }
