"""Bite registration: both arches into the first bite scan's frame, with a confidence.

``preprocess → global (FPFH, sampled RANSAC, several hypotheses) → evaluate
(short robust ICP per hypothesis, margin best vs second best) → refine (joint
robust point-to-plane ICP of every bite scan against both arches)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._features import Cloud, downsample, voxel_representatives
from mesial.aligner._icp import JointFit, SurfaceTarget, refine_joint
from mesial.aligner._registration import (
    BiteStrip,
    Hypothesis,
    _principal_axes,
    _same_pose,
    bite_strip,
    crown_direction,
    global_hypotheses,
)
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
        Best joint score: share of bite points explained by exactly one of the
        two arches in their best poses (after a short robust ICP each).
    second_score : float
        The best score of any other pair of distinct poses (0 if none).
    margin : float
        ``score - second_score`` (share of bite points).
    upper_hypotheses, lower_hypotheses : int
        Distinct poses evaluated per arch.
    """

    bite: int
    score: float
    second_score: float
    margin: float
    upper_hypotheses: int
    lower_hypotheses: int


@dataclass(frozen=True)
class Registration:
    """Both arches in the first bite scan's frame.

    Attributes
    ----------
    upper_to_bite, lower_to_bite : (4, 4) float
        Map each arch file's coordinates (mm) into the frame of bite scan 0.
    bite_to_bite : tuple of (4, 4) float
        Each bite scan's frame into bite scan 0's (identity first).
    pairs : tuple of BiteEvidence
    fit : JointFit
        The joint fine step (per-bite fitness and RMSE).
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
    """
    params = params or AlignParams()
    report = progress or _no_progress
    if not 1 <= len(bites) <= 2:
        raise AlignmentError(f"one or two bite scans are needed, got {len(bites)}")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    # preprocess: feature clouds (global step), exact surfaces and thinned bites (fine step)
    report("preprocess", 0.0)
    arch_scans = {"upper": upper, "lower": lower}
    arch_features = {
        name: downsample(scan.vertices, scan.vertex_normals, params.global_voxel_mm)
        for name, scan in arch_scans.items()
    }
    bite_features = [downsample(bite.vertices, bite.vertex_normals, params.global_voxel_mm) for bite in bites]
    crowns = {
        name: crown_direction(scan.vertices, scan.faces, _principal_axes(arch_features[name].points)[:, 2])
        for name, scan in arch_scans.items()
    }
    strips = [bite_strip(cloud, params.half_gap_mm) for cloud in bite_features]
    surfaces = {name: SurfaceTarget(scan.vertices, scan.faces) for name, scan in arch_scans.items()}
    fine_points = [bite.vertices[voxel_representatives(bite.vertices, params.fine_voxel_mm)] for bite in bites]
    coarse_points = [bite.vertices[voxel_representatives(bite.vertices, 0.6)] for bite in bites]
    timings["preprocess"] = time.perf_counter() - clock
    report("preprocess", 1.0)

    # global: hypotheses per (bite, arch), short ICP each, then the best pair of poses
    clock = time.perf_counter()
    evidence: list[BiteEvidence] = []
    bite_to_upper: list[FloatArray] = []
    candidates: list[tuple[float, FloatArray]] = []
    for k, bite_cloud in enumerate(bite_features):
        poses: dict[str, list[FloatArray]] = {}
        sides: dict[str, list[int]] = {}
        distances: dict[str, list[FloatArray]] = {}
        for a, arch in enumerate(ARCHES):
            report("global", (2 * k + a) / (2 * len(bites)))
            rng = np.random.default_rng([params.seed, k, a])
            hypotheses = global_hypotheses(bite_cloud, strips[k], arch_features[arch], crowns[arch], params, rng)
            poses[arch], sides[arch], distances[arch] = _refine_hypotheses(
                hypotheses, coarse_points[k], strips[k], bite_cloud, surfaces[arch], params
            )
        bite_to_lower, upper_pose, item = _best_pair(poses, sides, distances, params, k)
        evidence.append(item)
        bite_to_upper.append(upper_pose)
        candidates.append((item.score, upper_pose @ invert(bite_to_lower)))
    timings["global"] = time.perf_counter() - clock
    report("global", 1.0)

    # refine: every bite against both arches jointly, in the upper frame
    clock = time.perf_counter()
    report("refine", 0.0)
    lower_to_upper = max(candidates, key=lambda item: item[0])[1]
    fit = refine_joint(fine_points, surfaces["upper"], surfaces["lower"], bite_to_upper, lower_to_upper, params)
    timings["refine"] = time.perf_counter() - clock
    report("refine", 1.0)

    if fit.lower_to_upper is None:  # pragma: no cover - refine_joint always returns it with a lower arch
        raise AlignmentError("the joint fine step returned no lower pose")
    upper_to_bite = invert(fit.bite_to_upper[0])
    lower_to_bite = upper_to_bite @ fit.lower_to_upper
    bite_to_bite = tuple(upper_to_bite @ pose for pose in fit.bite_to_upper)
    reasons = _reasons(evidence, fit, params, [pose for _, pose in candidates])
    return Registration(
        upper_to_bite, lower_to_bite, bite_to_bite, tuple(evidence), fit, not reasons, tuple(reasons), timings
    )


def _refine_hypotheses(
    hypotheses: list[Hypothesis],
    points: FloatArray,
    strip: BiteStrip,
    cloud: Cloud,
    surface: SurfaceTarget,
    params: AlignParams,
) -> tuple[list[FloatArray], list[int], list[FloatArray]]:
    """Short robust ICP of the best hypotheses on their half of the bite.

    Returns the distinct refined poses and, for every point of the whole bite,
    its distance to the arch in that pose.
    """
    poses: list[FloatArray] = []
    sides_of: list[int] = []
    distances: list[FloatArray] = []
    centre = points.mean(axis=0)
    height = (points - cloud.points.mean(axis=0)) @ strip.vertical
    height -= float(np.median(strip.height + cloud.points.mean(axis=0) @ strip.vertical)) - float(
        cloud.points.mean(axis=0) @ strip.vertical
    )
    sides: dict[int, int] = {}
    for hypothesis in hypotheses:
        if sides.get(hypothesis.side, 0) == params.refined_hypotheses:
            continue
        sides[hypothesis.side] = sides.get(hypothesis.side, 0) + 1
        half = points[hypothesis.side * height > params.half_gap_mm]
        fit = refine_joint(
            [half],
            surface,
            None,
            [hypothesis.source_to_target],
            None,
            params,
            max_distance_mm=2.0 * params.global_voxel_mm,
            max_iterations=params.coarse_iterations,
        )
        pose = fit.bite_to_upper[0]
        if any(_same_pose(pose, kept, centre, params) for kept in poses):
            continue
        poses.append(pose)
        sides_of.append(hypothesis.side)
        distances.append(surface.vertex_distance(transform_points(points, pose), upper_bound=1.0))
    return poses, sides_of, distances


def _best_pair(
    poses: dict[str, list[FloatArray]],
    sides: dict[str, list[int]],
    distances: dict[str, list[FloatArray]],
    params: AlignParams,
    bite: int,
) -> tuple[FloatArray, FloatArray, BiteEvidence]:
    """The pair of arch poses on opposite halves that together explain the bite best.

    A point counts when exactly one arch explains it; points both explain count against.
    """
    tau = params.pair_distance_mm
    scores = []
    for i, d_upper in enumerate(distances["upper"]):
        for j, d_lower in enumerate(distances["lower"]):
            if sides["upper"][i] == sides["lower"][j]:
                continue
            on_upper, on_lower = d_upper < tau, d_lower < tau
            score = float(np.mean(on_upper ^ on_lower)) - float(np.mean(on_upper & on_lower))
            scores.append((score, i, j))
    if not scores:
        return np.eye(4), np.eye(4), BiteEvidence(bite, 0.0, 0.0, 0.0, len(poses["upper"]), len(poses["lower"]))
    scores.sort(key=lambda item: -item[0])
    best, i, j = scores[0]
    second = scores[1][0] if len(scores) > 1 else 0.0
    evidence = BiteEvidence(
        bite, best, max(second, 0.0), best - max(second, 0.0), len(poses["upper"]), len(poses["lower"])
    )
    return poses["lower"][j], poses["upper"][i], evidence


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
