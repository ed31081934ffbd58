"""Voxel thinning (one real sample per occupied voxel) and points spread evenly (farthest-point sampling)."""

from __future__ import annotations

import ctypes

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def voxel_representatives(points: FloatArray, voxel_mm: float) -> NDArray[np.int64]:
    """Index of one input point per occupied voxel (the first in input order), increasing.

    Unlike averaging, this keeps real samples (no shrinkage on curved surfaces). The voxels are
    ``floor((points - points.min(axis=0)) / voxel_mm)``; compiled (``_prep.c``: one pass through a
    hash table of the voxels' keys in input order), the same indices as NumPy's sort of the keys
    (``tests/aligner/test_prep.py`` compares them).

    Parameters
    ----------
    points : (n, 3) float, millimetres, finite, n >= 1
    voxel_mm : float, > 0

    Returns
    -------
    index : (k,) int
    """
    from mesial.aligner._meshquery import _load

    rows = np.ascontiguousarray(points, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 3 or len(rows) == 0:
        raise ValueError(f"points must be (n, 3) with n >= 1, got shape {rows.shape}")
    if not (np.isfinite(voxel_mm) and voxel_mm > 0):
        raise ValueError(f"voxel_mm must be a positive number, got {voxel_mm}")
    index = np.empty(len(rows), dtype=np.int64)
    count = ctypes.c_int64()
    status = _load().pp_voxel_first(
        rows.ctypes.data, len(rows), float(voxel_mm), index.ctypes.data, ctypes.byref(count)
    )
    if status == -1:
        raise MemoryError("out of memory thinning points")
    if status != 0:
        raise ValueError("points must be finite and within 2**62 voxels of each other")
    return index[: count.value].copy()


def first_occurrences(key: NDArray[np.int64]) -> NDArray[np.int64]:
    """Index of the first occurrence of each distinct integer key (ordered by key).

    Same as ``np.unique(key, return_index=True)[1]``: NumPy's default (unstable, fastest) sort
    groups equal keys, and each group's smallest index is its first occurrence.
    """
    if len(key) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(key)
    ordered = key[order]
    start = np.ones(len(key), dtype=bool)
    start[1:] = ordered[1:] != ordered[:-1]
    return np.asarray(np.minimum.reduceat(order, np.flatnonzero(start)), dtype=np.int64)


def invariant_representatives(points: FloatArray, voxel_mm: float) -> NDArray[np.int64]:
    """Index of one input point per occupied voxel of a grid fixed to the points themselves.

    The grid is centred on the centroid and aligned with the principal axes (their
    signs set by the third moment, the third axis completing a right-handed frame),
    and each voxel keeps the point nearest its centre: the same surface points are
    kept whatever the file's pose and whatever the order of its vertices, so a
    registration built on them does not depend on either.

    Parameters
    ----------
    points : (n, 3) float, millimetres
    voxel_mm : float

    Returns
    -------
    index : (k,) int, increasing
    """
    centre = points.mean(axis=0)
    local = points - centre
    _, vectors = np.linalg.eigh(local.T @ local)
    axes = np.array(vectors[:, ::-1])
    for i in range(2):
        if float(np.sum((local @ axes[:, i]) ** 3)) < 0:
            axes[:, i] = -axes[:, i]
    axes[:, 2] = np.cross(axes[:, 0], axes[:, 1])
    scaled = local @ axes / voxel_mm
    cell = np.floor(scaled).astype(np.int64)
    offset = np.einsum("ij,ij->i", scaled - cell - 0.5, scaled - cell - 0.5)
    cell -= cell.min(axis=0)
    dims = cell.max(axis=0) + 1
    flat = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    return key_least(flat, offset)


def key_least(flat: NDArray[np.int64], offset: FloatArray) -> NDArray[np.int64]:
    """Of the points sharing a key ``flat (n,)``, the index of the one of the least ``offset (n,)`` (finite;
    the smaller index among equal offsets), increasing: ``np.sort`` of each key's first in
    ``np.lexsort((offset, flat))``. Compiled (``_prep.c``: one pass through a hash table of the keys)."""
    from mesial.aligner._meshquery import _load

    keys = np.ascontiguousarray(flat, dtype=np.int64)
    values = np.ascontiguousarray(offset, dtype=np.float64)
    if keys.ndim != 1 or values.shape != keys.shape:
        raise ValueError(f"flat and offset must be (n,) alike, got {keys.shape} and {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("offsets must be finite")
    index = np.empty(len(keys), dtype=np.int64)
    count = ctypes.c_int64()
    status = _load().pp_key_least(
        keys.ctypes.data, values.ctypes.data, len(keys), index.ctypes.data, ctypes.byref(count)
    )
    if status != 0:
        raise MemoryError("out of memory choosing a point per key")
    return index[: count.value].copy()


def spread_points(points: FloatArray, count: int) -> NDArray[np.int64]:
    """Indices of ``count`` points spread evenly over the cloud (farthest-point sampling).

    Starts from the point farthest from the centroid, so the choice depends
    neither on the cloud's pose nor (but for exact ties) on the order of its points.

    Parameters
    ----------
    points : (n, 3) float, millimetres
    count : int

    Returns
    -------
    index : (min(count, n),) int
    """
    if len(points) <= count:
        return np.arange(len(points), dtype=np.int64)
    from mesial.aligner._meshquery import _load

    rows = np.ascontiguousarray(points, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 3:
        raise ValueError(f"points must be (n, 3), got shape {rows.shape}")
    if not np.isfinite(rows).all():
        raise ValueError("points must be finite (NaN or infinite values given)")
    centre = np.ascontiguousarray(np.asarray(points).mean(axis=0), dtype=np.float64)
    chosen = np.zeros(count, dtype=np.int64)
    # compiled (_nearest.c): each point's distance to the centre, then count times the first farthest
    # point chosen and every distance lowered to it, with np.linalg.norm's sums (the same choice)
    status = _load().nn_spread(rows.ctypes.data, len(rows), centre.ctypes.data, count, chosen.ctypes.data)
    if status == -1:
        raise MemoryError("out of memory spreading points")
    if status != 0:
        raise ValueError(f"cannot spread {count} points over {len(rows)} (error {status})")
    return chosen
