"""Global registration of a buccal bite scan to an arch: anchored, exhaustive, scored.

Local descriptors (FPFH) match poorly here: a bite scan sees only the buccal
side of both arches, so every neighbourhood of the arch holds surfaces the bite
lacks and every neighbourhood of the bite holds the antagonist (measured on
the synthetic cases: under 1 % of FPFH correspondences are right). The search
below uses what every buccal bite scan shares instead (a strip along the arch,
seen from outside) and tries every place along the arch, scoring all poses
with one common evaluation. The result is a short list of *distinct*
hypotheses, best first, so the caller can measure the margin between the best
and the second best.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._features import Cloud
from mesial.aligner.params import AlignParams
from mesial.aligner.transforms import rotation_angle_deg

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Hypothesis:
    """A candidate pose of the source (bite) in the target (arch) frame.

    Attributes
    ----------
    source_to_target : (4, 4) float
    fitness : float
        Share of source points within the inlier distance of the target cloud.
    side : int
        The half of the bite scan (+1 or -1 across its height) on this arch.
    """

    source_to_target: FloatArray
    fitness: float
    side: int


def _principal_axes(points: FloatArray) -> FloatArray:
    """Principal axes ``(3, 3)`` as columns, by decreasing variance."""
    centred = points - points.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    return np.asarray(vectors[:, ::-1], dtype=np.float64)


def _frame(first: FloatArray, second: FloatArray) -> FloatArray:
    """Right-handed orthonormal frame (columns) from ``first`` and ``second`` made orthogonal to it."""
    e1 = first / np.linalg.norm(first)
    e2 = second - e1 * float(e1 @ second)
    e2 /= np.linalg.norm(e2)
    return np.stack([e1, e2, np.cross(e1, e2)], axis=1)


def _axis_rotation(axis: FloatArray, angle: float) -> FloatArray:
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.asarray(np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k), dtype=np.float64)


def crown_direction(vertices: FloatArray, faces: NDArray[np.int64], occlusal: FloatArray) -> FloatArray:
    """Unit direction ``(3,)`` along ``occlusal`` pointing from the gingiva towards the crowns.

    A scan is open where the scanner stopped, on the gingiva; the boundary
    edges' length-weighted centroid lies on that side of the vertex centroid.
    """
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    key = edges[:, 0] * np.int64(len(vertices)) + edges[:, 1]
    unique, counts = np.unique(key, return_counts=True)
    border = unique[counts == 1]
    if len(border) == 0:
        return np.asarray(occlusal, dtype=np.float64)
    a, b = vertices[border // len(vertices)], vertices[border % len(vertices)]
    weight = np.linalg.norm(a - b, axis=1)
    middle = ((a + b) / 2 * weight[:, None]).sum(axis=0) / max(weight.sum(), 1e-12)
    side = float((vertices.mean(axis=0) - middle) @ occlusal)
    return np.asarray(occlusal if side >= 0 else -occlusal, dtype=np.float64)


@dataclass(frozen=True)
class BiteStrip:
    """A bite scan's own frame: ``height (n,)`` mm across the strip, anchors and normals per half."""

    height: FloatArray
    vertical: FloatArray
    anchors: dict[int, FloatArray]
    normals: dict[int, FloatArray]


def bite_strip(cloud: Cloud, half_gap_mm: float = 0.5) -> BiteStrip:
    """Split a bite scan across its height into two halves (one per arch, unknown which).

    The strip's long axis follows the arch and its mean normal faces out of the
    mouth; the height axis is their cross product (sign arbitrary). Points more
    than ``half_gap_mm`` above (side +1) or below (side -1) the median height
    form the halves; each half gets an anchor (its point nearest its centroid)
    and the mean normal within 3 mm of it.
    """
    long_axis = _principal_axes(cloud.points)[:, 0]
    normal = cloud.normals.sum(axis=0)
    normal -= long_axis * float(long_axis @ normal)
    vertical = np.cross(normal / np.linalg.norm(normal), long_axis)
    height = (cloud.points - cloud.points.mean(axis=0)) @ vertical
    height -= np.median(height)
    anchors, normals = {}, {}
    for side in (1, -1):
        half = cloud.points[side * height > half_gap_mm]
        half_normals = cloud.normals[side * height > half_gap_mm]
        if len(half) == 0:
            continue
        anchor = half[np.argmin(np.linalg.norm(half - half.mean(axis=0), axis=1))]
        near = np.linalg.norm(half - anchor, axis=1) < 3.0
        anchors[side], normals[side] = anchor, half_normals[near].sum(axis=0)
    return BiteStrip(height, vertical, anchors, normals)


def global_hypotheses(
    source: Cloud,
    strip: BiteStrip,
    target: Cloud,
    crown: FloatArray,
    params: AlignParams,
    rng: np.random.Generator,
) -> list[Hypothesis]:
    """Distinct candidate poses of a bite scan in an arch's frame, best first.

    A buccal bite scan is a strip seen from the cheek: its long axis follows the
    arch, its mean normal faces out of the mouth, and one half across its
    height shows this arch. The search pairs that half's anchor with every
    outward-facing wall point of the arch, orients the strip's height along the
    arch's occlusal axis (both ways up: each way decides which half is this
    arch's, since the arch's crowns point at ``crown``), tries a few tilts, and
    scores every pose by the mean distance of the half's points to the arch,
    capped at ``distance_factor`` voxels (1 = all on the surface, 0 = none near). There is no assumption on the
    initial pose of either scan.

    Parameters
    ----------
    source : Cloud
        The bite scan, downsampled.
    strip : BiteStrip
        Its halves (:func:`bite_strip`).
    target : Cloud
        One arch, downsampled.
    crown : (3,) float
        The arch's crown direction (:func:`crown_direction`).
    params : AlignParams
    rng : numpy Generator
        Draws the subset of bite points used for scoring (determinism by seed).

    Returns
    -------
    hypotheses : list of Hypothesis
        At most ``params.hypotheses``, pairwise distinct, by decreasing fitness;
        ``side`` names the half of the bite that lies on this arch.
    """
    from scipy.spatial import cKDTree

    if len(source.points) < 10 or len(target.points) < 10:
        return []
    voxel = params.global_voxel_mm
    centroid = target.points.mean(axis=0)
    horizontal = target.normals - np.outer(target.normals @ crown, crown)
    wall = np.linalg.norm(horizontal, axis=1) > 0.8
    radial = target.points - centroid
    radial -= np.outer(radial @ crown, crown)
    wall &= np.einsum("ij,ij->i", radial, horizontal) > 0  # buccal side of the U
    candidates = np.flatnonzero(wall)
    if len(candidates) == 0:
        return []
    candidates = candidates[voxel_subset(target.points[candidates], params.anchor_spacing_mm)]
    tree = cKDTree(target.points)
    threshold = params.distance_factor * voxel
    results: list[tuple[float, FloatArray, int]] = []
    for side in strip.anchors:
        # this half lies on the arch when the strip's height axis, times side,
        # points from the occlusal plane towards this arch's gingiva (-crown)
        half = np.flatnonzero(side * strip.height > params.half_gap_mm)
        if len(half) < 10:
            continue
        probe = source.points[rng.choice(half, size=min(params.score_points, len(half)), replace=False)]
        anchor, bite_frame = strip.anchors[side], _frame(strip.normals[side], side * strip.vertical)
        rotations, translations = [], []
        for index in candidates:
            arch_frame = _frame(target.normals[index], -crown)
            for tilt in params.anchor_tilts_deg:
                rotation = _axis_rotation(arch_frame[:, 0], np.radians(tilt)) @ arch_frame @ bite_frame.T
                rotations.append(rotation)
                translations.append(target.points[index] - rotation @ anchor)
        rotation_stack, translation_stack = np.array(rotations), np.array(translations)
        moved = np.einsum("sij,kj->ski", rotation_stack, probe) + translation_stack[:, None]
        distance, _ = tree.query(moved.reshape(-1, 3), workers=-1, distance_upper_bound=threshold)
        capped = np.minimum(distance, threshold).reshape(len(rotation_stack), -1)
        score = 1.0 - capped.mean(axis=1) / threshold
        for index in np.argsort(-score, kind="stable")[: params.hypotheses * 4]:
            matrix = np.eye(4)
            matrix[:3, :3], matrix[:3, 3] = rotation_stack[index], translation_stack[index]
            results.append((float(score[index]), matrix, side))
    centre = source.points.mean(axis=0)
    distinct: list[Hypothesis] = []
    for side in strip.anchors:  # an equal quota per side: the side is a discrete ambiguity
        kept: list[Hypothesis] = []
        for score_value, matrix, which in sorted(results, key=lambda item: -item[0]):
            if which != side:
                continue
            if all(not _same_pose(matrix, other.source_to_target, centre, params) for other in kept):
                kept.append(Hypothesis(matrix, score_value, side))
            if len(kept) == params.hypotheses:
                break
        distinct += kept
    return distinct


def voxel_subset(points: FloatArray, voxel_mm: float) -> NDArray[np.int64]:
    """Index of one point per occupied voxel of ``voxel_mm`` (first in input order)."""
    keys = np.floor((points - points.min(axis=0)) / voxel_mm).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    return np.sort(first).astype(np.int64)


def _same_pose(first: FloatArray, second: FloatArray, centre: FloatArray, params: AlignParams) -> bool:
    relative = np.linalg.inv(second) @ first
    moved = first[:3, :3] @ centre + first[:3, 3] - (second[:3, :3] @ centre + second[:3, 3])
    return (
        rotation_angle_deg(relative) < params.distinct_rotation_deg
        and float(np.linalg.norm(moved)) < params.distinct_translation_mm
    )
