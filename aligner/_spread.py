"""How far a point of the triangles near a place can be from their nearest corner, on a coarse grid.

A point at distance ``d`` from a triangle mesh has a vertex within ``sqrt(d² + r²)``, ``r``
the farthest a point of its nearest triangle can be from that triangle's corners (at most
the triangle's longest edge / sqrt 3). So the nearest-vertex distance ``v`` bounds ``d``
from below: ``d >= sqrt(v² - r²)``. With the mesh's longest edge for ``r`` the bound is
loose wherever the triangles are small; :class:`SpreadGrid` gives a local ``r`` instead:
the largest over the triangles around every vertex within a given radius of the point.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
SQRT3 = math.sqrt(3.0)


def corner_reach(vertices: FloatArray, faces: NDArray[np.int64], longest: FloatArray) -> FloatArray:
    """Per vertex ``(n,)`` (mm): the largest longest-edge / sqrt 3 of its triangles (0 for a vertex in none).

    ``longest`` is each triangle's longest edge ``(m,)`` (mm).
    """
    reach = np.zeros(len(vertices))
    for corner in range(3):
        np.maximum.at(reach, faces[:, corner], longest / SQRT3)
    return reach


class SpreadGrid:
    """The largest corner reach of the vertices near each cell of a grid (see the module docstring).

    Parameters
    ----------
    vertices : (n, 3) float, millimetres
    reach : (n,) float, millimetres
        Per vertex, from :func:`corner_reach`.
    radius_mm : float
        A point's value covers every vertex within this distance of it.
    voxel_mm : float
        Grid cell size.
    """

    def __init__(self, vertices: FloatArray, reach: FloatArray, radius_mm: float, voxel_mm: float = 1.0) -> None:
        self.voxel = float(voxel_mm)
        self.largest = float(reach.max(initial=0.0))
        # a vertex within radius_mm of a point is at most this many cells away along each axis
        grow = math.ceil(radius_mm / self.voxel)
        self.origin = vertices.min(axis=0) - (grow + 1) * self.voxel
        cells = np.floor((vertices - self.origin) / self.voxel).astype(np.int64)
        self.shape = cells.max(axis=0) + grow + 2
        grid = np.zeros(tuple(int(s) for s in self.shape))
        np.maximum.at(grid, (cells[:, 0], cells[:, 1], cells[:, 2]), reach)
        for axis in range(3):  # the largest within ``grow`` cells along each axis in turn: a cube
            source = grid.copy()
            for step in range(1, grow + 1):
                ahead, behind = [slice(None)] * 3, [slice(None)] * 3
                ahead[axis], behind[axis] = slice(0, -step), slice(step, None)
                np.maximum(grid[tuple(ahead)], source[tuple(behind)], out=grid[tuple(ahead)])
                np.maximum(grid[tuple(behind)], source[tuple(ahead)], out=grid[tuple(behind)])
        self.grid = grid

    def __call__(self, points: FloatArray) -> FloatArray:
        """Local reach (mm) at ``points (h, 3)``: the mesh's largest outside the grid."""
        cells = np.floor((points - self.origin) / self.voxel).astype(np.int64)
        inside = np.all((cells >= 0) & (cells < self.shape), axis=1)
        out = np.full(len(points), self.largest)
        kept = cells[inside]
        out[inside] = self.grid[kept[:, 0], kept[:, 1], kept[:, 2]]
        return out
