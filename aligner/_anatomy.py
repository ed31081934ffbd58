"""Anatomical frame of one dental arch, from its shape alone.

An arch scan is an open U-shaped surface: its occlusal plane is the plane of
the U (the smallest principal axis of its points is the plane's normal), it is
open on the gingiva side (the scanner stopped there), and it is close to
mirror-symmetric about the midsagittal plane. From these three facts every
arch gets a *canonical frame*:

* ``z``: the occlusal-plane normal, pointing from the gingiva towards the crowns;
* ``y``: the symmetry axis within the plane, pointing anterior (towards the
  incisors, the closed end of the U);
* ``x = y × z`` (the patient's right for a lower arch, the left for an upper);
* origin: on the symmetry axis at the arch's centroid, at the height of the
  occlusal table (median height of the high, crown-facing points).

In occlusion the two arches face each other with nested curves, so the lower
arch's canonical frame is the upper's turned 180° about its anterior axis, up
to a few millimetres and degrees. The global step starts from that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

# turns a lower arch's canonical frame into the upper's (180° about y)
FLIP = np.diag([-1.0, 1.0, -1.0, 1.0])


@dataclass(frozen=True)
class ArchFrame:
    """Canonical frame of an arch.

    Attributes
    ----------
    to_canonical : (4, 4) float
        Maps the arch file's coordinates (mm) into its canonical frame.
    symmetry_mm : float
        Mean distance between the arch's occlusal outline and its mirror image
        about the symmetry axis (small for a well-formed arch).
    anterior_evidence : float
        Share of the points near the symmetry axis that lie anterior of the
        centroid (near 1: the U's closed end is clear).
    """

    to_canonical: FloatArray
    symmetry_mm: float
    anterior_evidence: float


def principal_axes(points: FloatArray) -> FloatArray:
    """Principal axes ``(3, 3)`` as columns, by decreasing variance."""
    centred = points - points.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    return np.asarray(vectors[:, ::-1], dtype=np.float64)


def crown_direction(vertices: FloatArray, faces: NDArray[np.int64], axis: FloatArray) -> FloatArray:
    """``axis`` or ``-axis``: the one pointing from the open (gingival) border towards the crowns.

    The border edges (used by one triangle) are found with one sort of the edge
    keys; their length-weighted centroid lies on the gingiva side of the
    vertex centroid.
    """
    first = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    second = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    key = np.minimum(first, second) * np.int64(len(vertices)) + np.maximum(first, second)
    key.sort(kind="stable")  # radix sort for integers
    single = np.ones(len(key), dtype=bool)
    same = key[1:] == key[:-1]
    single[1:] &= ~same
    single[:-1] &= ~same
    border = key[single]
    if len(border) == 0:
        return np.asarray(axis, dtype=np.float64)
    a, b = vertices[border // len(vertices)], vertices[border % len(vertices)]
    weight = np.linalg.norm(a - b, axis=1)
    middle = ((a + b) / 2 * weight[:, None]).sum(axis=0) / max(float(weight.sum()), 1e-12)
    side = float((vertices.mean(axis=0) - middle) @ axis)
    return np.asarray(axis if side >= 0 else -axis, dtype=np.float64)


def arch_frame(
    points: FloatArray,
    normals: FloatArray,
    vertices: FloatArray,
    faces: NDArray[np.int64],
    *,
    angle_step_deg: float = 1.0,
    top_share: float = 25.0,
) -> ArchFrame:
    """The canonical frame of one arch.

    Parameters
    ----------
    points, normals : (n, 3) float
        The arch, evenly thinned (e.g. one point per 1 mm voxel), with outward normals.
    vertices, faces : the full mesh (its open border gives the crown side).
    angle_step_deg : float
        Resolution of the symmetry-axis search (refined to a tenth of it).
    top_share : float
        The occlusal table is the points of the highest ``top_share`` percent
        (along the crown direction) facing the crowns' way; its median height
        is the origin's.

    Returns
    -------
    frame : ArchFrame
    """
    from mesial.aligner._field import DistanceField

    centroid = points.mean(axis=0)
    axes = principal_axes(points)
    z = crown_direction(vertices, faces, axes[:, 2])
    e1 = axes[:, 0]
    e2 = np.cross(z, e1)
    flat = np.stack([(points - centroid) @ e1, (points - centroid) @ e2], axis=1)
    field = DistanceField(flat, 0.5, 5.0)

    def mirror_cost(angles: FloatArray, sample: FloatArray) -> FloatArray:
        direction = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (k, 2)
        along = sample @ direction.T  # (n, k)
        mirrored = 2 * along[:, :, None] * direction[None] - sample[:, None, :]  # (n, k, 2)
        return np.asarray(field(mirrored).mean(axis=0), dtype=np.float64)

    step = np.radians(angle_step_deg)
    coarse = np.arange(0.0, np.pi, step)
    # the coarse sweep on an even subset of the outline (every point for the fine one)
    costs = mirror_cost(coarse, flat[:: max(1, len(flat) // 1500)])
    best = float(coarse[int(np.argmin(costs))])
    fine = best + np.linspace(-step, step, 21)
    fine_costs = mirror_cost(fine, flat)
    angle = float(fine[int(np.argmin(fine_costs))])
    symmetry = float(fine_costs.min())
    y2 = np.array([np.cos(angle), np.sin(angle)])
    y = y2[0] * e1 + y2[1] * e2
    along = flat @ y2
    across = flat @ np.array([-y2[1], y2[0]])
    near_axis = np.abs(across) < 3.0
    forward = float(np.mean(along[near_axis] > 0)) if near_axis.any() else 0.5
    if forward < 0.5:
        y, forward = -y, 1.0 - forward
    x = np.cross(y, z)
    rotation = np.stack([x, y, z])  # rows: canonical axes in file coordinates
    heights = (points - centroid) @ z
    occlusal = (normals @ z > 0.7) & (heights > np.percentile(heights, 100 - top_share))
    level = float(np.median(heights[occlusal])) if occlusal.sum() > 10 else float(np.percentile(heights, 99))
    origin = centroid + level * z
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = -rotation @ origin
    return ArchFrame(matrix, symmetry, forward)
