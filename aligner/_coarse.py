"""Global step: place each bite scan on the pair of arches, then the lower arch on the bite.

Everything happens in the upper arch's canonical frame (:mod:`._anatomy`): ``z``
from the upper's gingiva towards its crowns (down, towards the occlusal
plane, which is at ``z = 0``), ``y`` anterior. The lower arch starts at the
pose its own canonical frame implies (facing the upper, curves nested),
a few millimetres and degrees off.

Bite scan: a strip seen from the cheek. Its long axis (first principal axis)
follows the arch; its mean normal faces out of the mouth (its sign is checked
against the strip's convexity, so a file with inward winding works too); the
third axis crosses the occlusal plane. A pose of the strip is therefore a
direction ``psi`` in the occlusal plane for its normal (which part of the arch
it faces), which way up it is (``sigma``), and a translation: along the normal
the strip touches the arches' outline in that direction (support function),
across the plane its middle sits at the occlusal plane, and along the arch it
is searched. Every pose is scored with one distance-field look-up per probe
point against both arches; the best distinct poses get a short robust ICP
against the upper arch; each then places the lower arch by a grid search over
the bite points the upper does not explain, and the pairs are ranked by the
share of bite points explained. The margin is the best score minus the best
score of a pose that is distinct from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._anatomy import principal_axes
from mesial.aligner._field import DistanceField
from mesial.aligner._icp import PlaneTarget
from mesial.aligner.transforms import from_rotation_translation

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class StripFrame:
    """A bite scan's own axes (columns ``long, vertical, normal``) and centre, in its file frame."""

    axes: FloatArray
    centre: FloatArray
    depth: float  # largest offset of a point along the normal from the centre (mm)
    flipped: bool  # the mean normal was reversed (the strip is convex the other way)


def strip_frame(points: FloatArray, normals: FloatArray) -> StripFrame:
    """Axes of a bite strip from its thinned points and (unsigned-trustworthy) normals."""
    centre = points.mean(axis=0)
    axes = principal_axes(points)
    long_axis = axes[:, 0]
    normal = normals.sum(axis=0)
    normal -= long_axis * float(long_axis @ normal)
    if np.linalg.norm(normal) < 1e-9:
        normal = axes[:, 2]
    normal /= np.linalg.norm(normal)
    # a buccal strip bulges towards the cheek along its length: depth(u) is concave
    u = (points - centre) @ long_axis
    depth = (points - centre) @ normal
    curvature = float(np.polyfit(u, depth, 2)[0])
    flipped = curvature > 0
    if flipped:
        normal = -normal
    vertical = np.cross(normal, long_axis)
    frame = np.stack([long_axis, vertical, normal], axis=1)
    return StripFrame(frame, centre, float(((points - centre) @ normal).max()), flipped)


@dataclass(frozen=True)
class Candidate:
    """A pose of a bite scan in the upper's canonical frame with its coarse score."""

    bite_to_canonical: FloatArray
    score: float


def _rotations(psi: FloatArray, sigma: float, strip: StripFrame) -> FloatArray:
    """Rotations ``(k, 3, 3)``: strip normal to ``(sin psi, cos psi, 0)``, vertical to ``sigma z``."""
    t_n = np.stack([np.sin(psi), np.cos(psi), np.zeros_like(psi)], axis=1)
    t_v = np.tile(np.array([0.0, 0.0, sigma]), (len(psi), 1))
    t_l = np.cross(t_v, t_n)
    target = np.stack([t_l, t_v, t_n], axis=2)  # columns
    return np.asarray(target @ strip.axes.T, dtype=np.float64)


def search_bite(
    probe: FloatArray,
    strip: StripFrame,
    field: DistanceField,
    outline: FloatArray,
    *,
    psi_step_deg: float,
    along_mm: tuple[float, float],
    heights_mm: tuple[float, ...],
    offsets_mm: tuple[float, ...],
    tau_mm: float,
    keep: int,
) -> list[Candidate]:
    """Exhaustive coarse search of a bite strip's pose against both arches.

    Parameters
    ----------
    probe : (n, 3) float
        A few dozen bite points (file frame), evenly spread.
    strip : StripFrame
    field : DistanceField
        Both arches (upper canonical frame).
    outline : (m, 3) float
        Arch points near the occlusal plane (for the support function).
    psi_step_deg : float
        Resolution of the strip's facing direction.
    along_mm : (half range, step)
        Search along the arch around the support point.
    heights_mm, offsets_mm : tuples of float
        Offsets of the strip's centre across the occlusal plane and along its normal.
    tau_mm : float
        Score of a point: ``max(0, 1 - d / tau)``.
    keep : int
        Best poses returned (by decreasing score, not yet made distinct).
    """
    psi = np.radians(np.arange(-180.0, 180.0, psi_step_deg))
    half, step = along_mm
    along = np.arange(-half, half + 1e-9, step)
    local = probe - strip.centre
    results: list[tuple[float, FloatArray]] = []
    for sigma in (1.0, -1.0):
        rotations = _rotations(psi, sigma, strip)  # (a, 3, 3)
        direction = np.stack([np.sin(psi), np.cos(psi), np.zeros_like(psi)], axis=1)
        tangent = np.cross(np.array([0.0, 0.0, sigma]), direction)
        support = (outline @ direction.T).max(axis=0)  # (a,)
        anchor_index = np.argmax(outline @ direction.T, axis=0)
        anchor = outline[anchor_index]
        moved = np.einsum("aij,nj->ani", rotations, local)  # centred probe, rotated
        # translations: centre to (support point moved along the tangent), depth so the strip touches
        base = anchor - direction * (anchor * direction).sum(axis=1, keepdims=True)
        base += direction * (support - strip.depth)[:, None]
        base[:, 2] = 0.0
        shifts = (
            along[None, :, None, None, None] * tangent[:, None, None, None, :]
            + np.asarray(heights_mm)[None, None, :, None, None] * np.array([0.0, 0.0, 1.0])
            + np.asarray(offsets_mm)[None, None, None, :, None] * direction[:, None, None, None, :]
        )  # (a, s, h, o, 3)
        translation = base[:, None, None, None, :] + shifts
        a, s, h, o = translation.shape[:4]
        flat_t = translation.reshape(a, s * h * o, 3)
        points = moved[:, None, :, :] + flat_t[:, :, None, :]  # (a, s*h*o, n, 3)
        distance = field(points)
        score = np.maximum(0.0, 1.0 - distance / tau_mm).mean(axis=2)  # (a, s*h*o)
        best = np.argsort(-score.ravel(), kind="stable")[:keep]
        for index in best:
            ai, ti = divmod(int(index), s * h * o)
            matrix = from_rotation_translation(rotations[ai], flat_t[ai, ti] - rotations[ai] @ strip.centre)
            results.append((float(score[ai, ti]), matrix))
    results.sort(key=lambda item: -item[0])
    return [Candidate(matrix, value) for value, matrix in results[:keep]]


def distinct(poses: list[FloatArray], centre: FloatArray, rotation_deg: float, translation_mm: float) -> list[int]:
    """Indices of poses (in order) that differ from every earlier kept one.

    Two poses are the same when the rotation between them is below
    ``rotation_deg`` and they place ``centre`` within ``translation_mm``.
    """
    if not poses:
        return []
    stack = np.asarray(poses, dtype=np.float64)
    rotations = stack[:, :3, :3]
    moved = rotations @ centre + stack[:, :3, 3]
    # rotation angle between R_i and R_j: trace(R_j^T R_i) = sum of the elementwise product
    cos_limit = float(np.cos(np.radians(rotation_deg)))
    kept: list[int] = []
    for i in range(len(poses)):
        if kept:
            index = np.asarray(kept)
            cos = (np.einsum("kab,ab->k", rotations[index], rotations[i]) - 1.0) / 2.0
            close = np.linalg.norm(moved[index] - moved[i], axis=1) < translation_mm
            if np.any((cos > cos_limit) & close):
                continue
        kept.append(i)
    return kept


def icp(
    source: FloatArray,
    target: PlaneTarget,
    pose: FloatArray,
    gates: tuple[float, ...],
    iterations: int = 3,
) -> FloatArray:
    """Point-to-plane ICP of ``source`` onto ``target`` from ``pose``, with shrinking hard gates.

    Points farther than the current gate from the target are ignored; the
    rest are weighted by ``(1 - (r / gate)^2)^2`` (Tukey) on the plane residual.
    """
    from mesial.aligner.transforms import exp_se3

    pose = np.array(pose, dtype=np.float64)
    for gate in gates:
        for _ in range(iterations):
            x = source @ pose[:3, :3].T + pose[:3, 3]
            distance, index = target.match(x, gate)
            use = np.isfinite(distance)
            if use.sum() < 12:
                return pose
            x, index = x[use], index[use]
            normal = target.normals[index]
            residual = np.einsum("ij,ij->i", x - target.points[index], normal)
            weight = np.clip(1.0 - (residual / gate) ** 2, 0.0, None) ** 2
            rows = np.hstack([np.cross(x, normal), normal])
            hessian = rows.T @ (rows * weight[:, None]) + 1e-9 * np.eye(6)
            step = np.linalg.solve(hessian, -rows.T @ (weight * residual))
            pose = exp_se3(step) @ pose
    return pose


def yaw_grid(
    yaw_deg: tuple[float, float],
    x_mm: tuple[float, float],
    y_mm: tuple[float, float],
    z_mm: tuple[float, float],
    pivot: FloatArray,
) -> FloatArray:
    """Rigid motions ``(k, 4, 4)``: rotations about ``z`` through ``pivot`` and translations.

    Each argument is ``(half range, step)``.
    """

    def values(spec: tuple[float, float]) -> FloatArray:
        half, step = spec
        return np.arange(-half, half + 1e-9, step) if half > 0 else np.zeros(1)

    yaw, dx, dy, dz = np.meshgrid(np.radians(values(yaw_deg)), values(x_mm), values(y_mm), values(z_mm), indexing="ij")
    yaw, dx, dy, dz = yaw.ravel(), dx.ravel(), dy.ravel(), dz.ravel()
    c, s = np.cos(yaw), np.sin(yaw)
    motions = np.zeros((len(yaw), 4, 4))
    motions[:, 0, 0], motions[:, 0, 1], motions[:, 1, 0], motions[:, 1, 1] = c, -s, s, c
    motions[:, 2, 2] = motions[:, 3, 3] = 1.0
    rotated_pivot = np.einsum("kij,j->ki", motions[:, :3, :3], pivot)
    motions[:, :3, 3] = pivot - rotated_pivot + np.stack([dx, dy, dz], axis=1)
    return motions


def grid_scores(points: FloatArray, motions: FloatArray, field: DistanceField, tau_mm: float) -> FloatArray:
    """Score ``(k,)`` of each motion: mean ``max(0, 1 - d / tau)`` of the points moved by its inverse.

    ``field`` holds the moving model in its initial placement; moving the model
    by ``M`` is looking the points up after ``M^-1``.
    """
    rotation = motions[:, :3, :3]
    translation = motions[:, :3, 3]
    back = np.matmul(points[None, :, :], rotation) - np.matmul(translation[:, None, :], rotation)
    distance = field(back)
    return np.asarray(np.maximum(0.0, 1.0 - distance / tau_mm).mean(axis=1), dtype=np.float64)
