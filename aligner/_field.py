"""Truncated distance fields on a regular grid: constant-time distance look-ups.

The global step scores tens of thousands of candidate poses; a k-d tree query
per point and pose would dominate the run time. A distance field is computed
once per target (Euclidean distance transform of the occupied voxels) and every
look-up is then one gather.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


class DistanceField:
    """Distance (mm) from any point to the nearest target point, within one voxel.

    Parameters
    ----------
    points : (n, d) float, millimetres (d = 2 or 3)
    voxel_mm : float
    margin_mm : float
        The grid extends this far beyond the points; farther away a look-up
        returns ``margin_mm``.
    """

    def __init__(self, points: FloatArray, voxel_mm: float, margin_mm: float) -> None:
        from scipy.ndimage import distance_transform_edt

        self.voxel = float(voxel_mm)
        self.cap = float(margin_mm)
        self.origin = points.min(axis=0) - margin_mm
        shape = np.ceil((points.max(axis=0) + margin_mm - self.origin) / voxel_mm).astype(np.int64) + 1
        self.shape = shape
        cells = np.floor((points - self.origin) / voxel_mm + 0.5).astype(np.int64)
        empty = np.ones(tuple(int(s) for s in shape), dtype=bool)
        empty[tuple(cells.T)] = False
        distance = np.minimum(np.asarray(distance_transform_edt(empty, sampling=voxel_mm)), margin_mm)
        # the outermost cells hold the cap: clipped look-ups from outside land there
        border = np.zeros_like(empty)
        border[tuple(slice(1, -1) for _ in shape)] = True
        distance[~border] = margin_mm
        self.grid = np.asarray(distance, dtype=np.float32).ravel()
        self.limit = (shape - 1).astype(np.float64)
        self.strides = [int(np.prod(shape[i + 1 :])) for i in range(len(shape))]

    def __call__(self, points: FloatArray) -> FloatArray:
        """Distances ``(...)`` for points ``(..., d)``; ``margin_mm`` outside the grid."""
        cells = (points - self.origin) / self.voxel + 0.5
        np.clip(cells, 0.0, self.limit, out=cells)
        index = cells.astype(np.int32)
        flat = index[..., 0] * np.int32(self.strides[0])
        for axis in range(1, len(self.strides)):
            flat += index[..., axis] * np.int32(self.strides[axis])
        return np.asarray(self.grid[flat], dtype=np.float64)
