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

The global step assumes no pose between the two arches: a frame only gives its arch
its own coordinates (the search field and buccal outline of :mod:`.registration`). In
occlusion the lower arch's canonical frame is roughly the upper's turned 180° about its
anterior axis (:data:`FLIP`), which the benchmark's constructed occlusions start from.
"""

from __future__ import annotations

import ctypes
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from mesial.aligner._field import DistanceField

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

    The border edges (used by one triangle, :func:`border_edges`) have their
    length-weighted centroid on the gingiva side of the vertex centroid.
    """
    border = border_edges(faces, len(vertices))
    if len(border) == 0:
        return np.asarray(axis, dtype=np.float64)
    a, b = vertices[border // len(vertices)], vertices[border % len(vertices)]
    weight = np.linalg.norm(a - b, axis=1)
    middle = ((a + b) / 2 * weight[:, None]).sum(axis=0) / max(float(weight.sum()), 1e-12)
    side = float((row_mean(vertices) - middle) @ axis)
    return np.asarray(axis if side >= 0 else -axis, dtype=np.float64)


def border_edges(faces: NDArray[np.int64], count: int) -> NDArray[np.int64]:
    """Keys ``min(a, b) * count + max(a, b)`` of the edges used by exactly one of ``faces (m, 3)`` (indices
    into ``count`` vertices), increasing.

    Compiled (``_prep.c``: the edges bucketed by their smaller end, each bucket's other ends counted), the
    same keys as :func:`border_edges_numpy` (which answers for meshes beyond the kernel's 32-bit buckets).
    """
    from mesial.aligner._meshquery import _load

    triangles = np.ascontiguousarray(faces, dtype=np.int64)
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"faces must be (m, 3), got shape {triangles.shape}")
    out = np.empty(3 * len(triangles), dtype=np.int64)
    found = ctypes.c_int64()
    status = _load().pp_border_edges(
        triangles.ctypes.data, len(triangles), int(count), out.ctypes.data, ctypes.byref(found)
    )
    if status == -4:  # beyond 2^31 vertices or edges
        return border_edges_numpy(triangles, count)
    if status == -1:
        raise MemoryError("out of memory finding an arch's border")
    if status != 0:
        raise ValueError(f"a face indexes a vertex outside the {count} vertices")
    return out[: found.value].copy()


def border_edges_numpy(faces: NDArray[np.int64], count: int) -> NDArray[np.int64]:
    """:func:`border_edges` in NumPy: one sort of all the edge keys."""
    first = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    second = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    key = np.minimum(first, second) * np.int64(count) + np.maximum(first, second)
    key.sort()  # plain integers: any sort gives the same array (NumPy's default one is the fastest)
    single = np.ones(len(key), dtype=bool)
    same = key[1:] == key[:-1]
    single[1:] &= ~same
    single[:-1] &= ~same
    return np.asarray(key[single], dtype=np.int64)


def row_mean(points: FloatArray) -> FloatArray:
    """``points.mean(axis=0)`` of ``(n, 3)`` points, n >= 1, compiled (``_prep.c``): the same sums, row after
    row (NumPy's reduction over the first axis), without its strided passes."""
    from mesial.aligner._meshquery import _load

    rows = np.ascontiguousarray(points, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 3 or len(rows) == 0:
        raise ValueError(f"points must be (n, 3) with n >= 1, got shape {rows.shape}")
    out = np.empty(3)
    _load().pp_row_mean(rows.ctypes.data, len(rows), out.ctypes.data)
    return out


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

    step = np.radians(angle_step_deg)
    coarse = np.arange(0.0, np.pi, step)
    # the coarse sweep on an even subset of the outline (every point for the fine one)
    costs = mirror_costs(field, flat[:: max(1, len(flat) // 1500)], coarse)
    best = float(coarse[int(np.argmin(costs))])
    fine = best + np.linspace(-step, step, 21)
    fine_costs = mirror_costs(field, flat, fine)
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


def mirror_costs(field: DistanceField, sample: FloatArray, angles: FloatArray) -> FloatArray:
    """Mean distance (``field``, 2-D) of the ``sample (n, 2)`` points mirrored about each axis through the
    origin at ``angles (k,)``: ``(k,)``.

    Compiled (``_prep.c``) after NumPy's ``sample @ direction.T``: each mirrored point looked up and
    summed at once, bit for bit :func:`mirror_costs_numpy` without its ``(n, k, 2)`` arrays.
    """
    from mesial.aligner._meshquery import _load

    if len(field.strides) != 2 or field.grid.dtype != np.float32 or len(field.grid) >= 2**31 or not len(sample):
        return mirror_costs_numpy(field, sample, angles)  # (the field's int32 cells as NumPy's path has them)
    direction = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (k, 2)
    along = np.ascontiguousarray(sample @ direction.T, dtype=np.float64)  # (n, k)
    rows = np.ascontiguousarray(sample, dtype=np.float64)
    if rows.shape != (len(along), 2):
        raise ValueError(f"sample must be (n, 2), got shape {rows.shape}")
    origin = np.ascontiguousarray(field.origin, dtype=np.float64)
    limit = np.ascontiguousarray(field.limit, dtype=np.float64)
    strides = np.asarray(field.strides, dtype=np.int64)
    out = np.empty(len(direction))
    status = _load().pp_mirror_costs(
        rows.ctypes.data, along.ctypes.data, direction.ctypes.data, len(rows), len(direction),
        field.grid.ctypes.data, origin.ctypes.data, field.voxel, limit.ctypes.data, strides.ctypes.data,
        out.ctypes.data,
    )  # fmt: skip
    if status != 0:
        raise MemoryError("out of memory computing an arch's symmetry")
    return out


def mirror_costs_numpy(field: DistanceField, sample: FloatArray, angles: FloatArray) -> FloatArray:
    """:func:`mirror_costs` in NumPy (the reference its tests compare with)."""
    direction = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (k, 2)
    along = sample @ direction.T  # (n, k)
    mirrored = 2 * along[:, :, None] * direction[None] - sample[:, None, :]  # (n, k, 2)
    return np.asarray(field(mirrored).mean(axis=0), dtype=np.float64)


def sorted_percentiles(
    values: FloatArray, starts: NDArray[np.int64], counts: NDArray[np.int64], q: float
) -> FloatArray:
    """``np.percentile(values[s : s + c], q)`` for each ``(s, c)`` of ``starts, counts``, the runs of ``values``
    sorted increasing, ``c >= 2``, ``0 <= q < 100``: NumPy's "linear" method with its arithmetic (the index
    ``(c - 1) * (q / 100)``, its floor and fraction, and ``_lerp``'s two sides), so the same values."""
    if not 0 <= q < 100 or (len(counts) and counts.min() < 2):
        raise ValueError("sorted_percentiles takes 0 <= q < 100 and runs of two values or more")
    virtual = (counts - 1) * np.true_divide(q, 100)
    previous = np.floor(virtual)
    gamma = virtual - previous
    low = values[starts + previous.astype(np.int64)]
    high = values[starts + previous.astype(np.int64) + 1]
    diff = high - low
    return np.asarray(np.where(gamma >= 0.5, high - diff * (1 - gamma), low + diff * gamma), dtype=np.float64)


def _filtered(values: FloatArray, size: int, how: str) -> FloatArray:
    """Running median or mean of a 1-D array over ``size`` samples, the ends repeated (SciPy's "nearest")."""
    half = size // 2
    padded = np.concatenate([np.full(half, values[0]), values, np.full(half, values[-1])])
    windows = np.lib.stride_tricks.sliding_window_view(padded, size)
    return np.asarray(np.median(windows, axis=1) if how == "median" else windows.mean(axis=1), dtype=np.float64)


# Widest run of empty angular bins between filled ones that an outline bridges. On the 3D-IOSSeg train
# arches such gaps were 2-14° (a lower arch without premolars, pair 047: 2° and 4°, enough to end its
# outline at the canines); two missing teeth at 25 mm are about 32°. The open back of the U lies across
# +-180°, at the ends of the bins, and is never bridged.
GAP_DEG = 40.0


def outline_polyline(points: FloatArray, *, band_mm: float, bin_deg: float = 2.0) -> FloatArray:
    """The buccal outline of the points within ``band_mm`` of ``z = 0``, as a polyline.

    Seen from a centre inside the U (on ``x = 0``, 40 % of the depth from the posterior
    ends), per ``bin_deg`` of angle the 98th percentile radius, smoothed over five bins
    (median, then mean; NumPy only, so the aligner loads no SciPy filters). Runs of empty
    bins up to ``GAP_DEG`` wide between filled ones are bridged (radius interpolated): missing
    teeth leave a gap with only low gingiva, outside the band. The U is the longest run of
    filled bins through the anterior direction (missing incisors leave the front bins empty),
    cut where the outline turns to face backwards behind the last molars.

    Parameters
    ----------
    points : (n, 3) float, millimetres, canonical frame of one arch (or of two facing arches)
    band_mm, bin_deg : float

    Returns
    -------
    xy : (k, 2) float, k >= 2
        Outline vertices (mm) from the left posterior end to the right.
    """
    near = points[np.abs(points[:, 2]) < band_mm][:, :2]
    if len(near) < 10:
        raise ValueError("no points near the occlusal plane: no arch outline")
    y_low, y_high = np.percentile(near[:, 1], [1, 99])
    centre = np.array([0.0, y_low + 0.4 * (y_high - y_low)])
    offset = near - centre
    angle = np.degrees(np.arctan2(offset[:, 0], offset[:, 1]))  # 0 = anterior, + = right
    radius = np.linalg.norm(offset, axis=1)
    edges = np.arange(-180.0, 180.0 + 1e-9, bin_deg)
    which = np.clip(np.digitize(angle, edges) - 1, 0, len(edges) - 2)
    counts = np.bincount(which, minlength=len(edges) - 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    best = np.full(len(edges) - 1, np.nan)
    full = np.flatnonzero(counts >= 3)
    # each bin's radii increasing (one sort for all bins), then each bin's np.percentile(..., 98)
    best[full] = sorted_percentiles(radius[np.lexsort((radius, which))], starts[full], counts[full], 98.0)
    centres = (edges[:-1] + edges[1:]) / 2
    filled = np.flatnonzero(np.isfinite(best))
    if not len(filled):
        raise ValueError("no points near the occlusal plane: no arch outline")
    for before, after in itertools.pairwise(filled.tolist()):
        if 1 < after - before <= GAP_DEG / bin_deg + 1:  # a gap of missing teeth: bridged
            best[before + 1 : after] = np.interp(np.arange(before + 1, after), [before, after], best[[before, after]])
    filled = np.isfinite(best)
    mid = int(np.flatnonzero(filled)[np.argmin(np.abs(centres[filled]))])
    lo = hi = mid
    while lo > 0 and filled[lo - 1]:
        lo -= 1
    while hi < len(best) - 1 and filled[hi + 1]:
        hi += 1
    theta = np.radians(centres[lo : hi + 1])
    r = _filtered(_filtered(best[lo : hi + 1], 5, "median"), 5, "mean")
    xy = centre + np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)
    step = np.diff(xy, axis=0)
    backwards = step[:, 1] / np.maximum(np.linalg.norm(step, axis=1), 1e-12)
    keep = np.ones(len(xy), dtype=bool)
    half = len(xy) // 2
    left = np.flatnonzero(backwards[:half] > -0.3)
    right = np.flatnonzero(backwards[half:] < 0.3)
    if len(left):
        keep[: left[0]] = False
    if len(right):
        keep[half + right[-1] + 2 :] = False
    xy = xy[keep]
    if len(xy) < 2:
        raise ValueError("no arch outline: fewer than two outline samples")
    return xy


def buccal_outline(points: FloatArray, *, band_mm: float, step_mm: float, bin_deg: float = 2.0) -> FloatArray:
    """Samples of an arch's buccal outline in its canonical frame, with their buccal directions.

    The outline of the points within ``band_mm`` of the occlusal table (``z = 0``): seen
    from a centre inside the U (on ``x = 0``, 40 % of the depth from the posterior
    ends), per ``bin_deg`` of angle the 98th percentile radius, smoothed over five
    bins (median, then mean); the U is the longest run of filled bins through the
    anterior direction, gaps of missing teeth bridged, cut where the outline turns to face
    backwards behind the last molars (:func:`outline_polyline`, which ``rangescan.ArchPath``
    draws too).

    Parameters
    ----------
    points : (n, 3) float, millimetres, canonical frame of one arch (or of two facing arches)
    band_mm, step_mm : float
        Height band about ``z = 0``; spacing of the samples along the outline.

    Returns
    -------
    outline : (2, k, 3) float
        Sample points (``z = 0``) and unit buccal directions (in the plane), from the
        left posterior end to the right.
    """
    xy = outline_polyline(points, band_mm=band_mm, bin_deg=bin_deg)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    s = np.arange(0.0, arc[-1], step_mm)
    x, y = np.interp(s, arc, xy[:, 0]), np.interp(s, arc, xy[:, 1])
    tangent = np.stack(
        [np.interp(s, arc, np.gradient(xy[:, 0], arc)), np.interp(s, arc, np.gradient(xy[:, 1], arc))], 1
    )
    # left to right along a U opening backwards: the buccal side is to the left of the tangent
    buccal = np.stack([-tangent[:, 1], tangent[:, 0], np.zeros(len(s))], axis=1)
    buccal /= np.maximum(np.linalg.norm(buccal, axis=1, keepdims=True), 1e-12)
    return np.stack([np.stack([x, y, np.zeros(len(s))], axis=1), buccal])
