"""Voxel thinning: one real sample per occupied voxel."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def voxel_representatives(points: FloatArray, voxel_mm: float) -> NDArray[np.int64]:
    """Index of one input point per occupied voxel (the first in input order).

    Unlike averaging, this keeps real samples (no shrinkage on curved surfaces).

    Parameters
    ----------
    points : (n, 3) float, millimetres
    voxel_mm : float

    Returns
    -------
    index : (k,) int
    """
    keys = np.floor((points - points.min(axis=0)) / voxel_mm).astype(np.int64)
    dims = keys.max(axis=0) + 1
    flat = (keys[:, 0] * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2]
    return np.sort(first_occurrences(flat))


def first_occurrences(key: NDArray[np.int64]) -> NDArray[np.int64]:
    """Index of the first occurrence of each distinct integer key (ordered by key).

    Same as ``np.unique(key, return_index=True)[1]``, with a stable (radix) sort.
    """
    if len(key) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    start = np.ones(len(key), dtype=bool)
    start[1:] = ordered[1:] != ordered[:-1]
    return np.asarray(order[start], dtype=np.int64)
