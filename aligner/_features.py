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
    _, first = np.unique(flat, return_index=True)
    return np.sort(first).astype(np.int64)
