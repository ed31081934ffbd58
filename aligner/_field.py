"""Truncated distance fields on a regular grid: constant-time distance look-ups.

The global step scores tens of thousands of candidate poses; a k-d tree query
per point and pose would dominate the run time. A distance field is computed
once per target and every look-up is then one gather.

The fields are truncated a few voxels from the points, so the exact Euclidean
distance transform needs no general algorithm: per axis in turn, each cell takes
the smallest ``g[i + k] + k²`` over ``|k| <= R`` (``R`` the truncation in voxels).
The squared distance of the nearest occupied cell is found exactly whenever it is
within the truncation (each of its offsets is then at most ``R``); beyond it the
value only grows and is capped. The same values as SciPy's
``distance_transform_edt`` within the cap, without importing ``scipy.ndimage``
(about 0.3 s of a ``mesial align`` process).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def _check(status: int) -> None:
    if status == -1:
        raise MemoryError("out of memory scoring poses")
    if status != 0:
        raise ValueError(f"the compiled mean scores refused their input (error {status})")


def truncated_squared_distances(occupied: NDArray[np.bool_], reach: int) -> NDArray[np.signedinteger[Any]]:
    """Squared distance (in voxels²) of every cell to the nearest occupied cell, exact up to ``reach`` voxels.

    Parameters
    ----------
    occupied : (...) bool
        The grid (any number of axes).
    reach : int
        Truncation in voxels: a value is exact when it is below ``reach²``; the others are
        ``reach²`` or more, at most ``(reach + 1)²`` (what a cell with nothing within its
        reach along every axis holds).

    Returns
    -------
    squared : (...) int16 (int32 for a reach beyond 126 voxels)
    """
    # every value stays at or below the start value of an empty cell (each pass keeps k = 0), and
    # a pass adds at most reach² to it before taking the minimum: int16 holds that up to reach 126
    far = (reach + 1) ** 2
    dtype = np.dtype(np.int16) if far + reach**2 <= np.iinfo(np.int16).max else np.dtype(np.int32)
    squared: NDArray[np.signedinteger[Any]] = np.where(occupied, 0, far).astype(dtype)
    for axis in range(squared.ndim):
        source = squared
        squared = source.copy()
        size = source.shape[axis]
        for k in range(1, min(reach, size - 1) + 1):
            cost = k * k  # a Python int: added in the grid's own integer type
            ahead = [slice(None)] * source.ndim
            behind = [slice(None)] * source.ndim
            ahead[axis], behind[axis] = slice(0, size - k), slice(k, size)
            # a cell looks k cells ahead and k cells behind along this axis
            np.minimum(squared[tuple(ahead)], source[tuple(behind)] + cost, out=squared[tuple(ahead)])
            np.minimum(squared[tuple(behind)], source[tuple(ahead)] + cost, out=squared[tuple(behind)])
    return squared


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
        self.voxel = float(voxel_mm)
        self.cap = float(margin_mm)
        # the box a column at a time (a reduction across the rows of (n, d) is several times slower)
        low, high = (np.array([extreme(column) for column in points.T]) for extreme in (np.min, np.max))
        self.origin = low - margin_mm
        shape = np.ceil((high + margin_mm - self.origin) / voxel_mm).astype(np.int64) + 1
        self.shape = shape
        cells = np.floor((points - self.origin) / voxel_mm + 0.5).astype(np.int64)
        occupied = np.zeros(tuple(int(s) for s in shape), dtype=bool)
        occupied[tuple(cells.T)] = True
        # every distance up to the cap is exact (one voxel more for the rounding of the cap)
        squared = truncated_squared_distances(occupied, math.ceil(margin_mm / voxel_mm) + 1)
        # the squared distances are small integers: one table of their capped distances, one gather
        values = np.arange(int(squared.max()) + 1, dtype=np.float64)
        table = np.minimum(np.sqrt(values) * voxel_mm, margin_mm).astype(np.float32)
        distance = table[squared]
        # the outermost cells hold the cap: clipped look-ups from outside land there
        for axis in range(distance.ndim):
            face: list[slice | int] = [slice(None)] * distance.ndim
            for end in (0, -1):
                face[axis] = end
                distance[tuple(face)] = margin_mm
        self.grid = distance.ravel()
        self.limit = (shape - 1).astype(np.float64)
        self.strides = [int(np.prod(shape[i + 1 :])) for i in range(len(shape))]
        self._scores: dict[float, FloatArray] = {}

    def __call__(self, points: FloatArray, offset: FloatArray | None = None) -> FloatArray:
        """Distances (mm) at ``points (..., d)`` (plus ``offset``, broadcast); ``margin_mm`` outside the grid.

        ``field(points, offset)`` is ``field(points + offset)`` without building the sum's
        ``(..., d)`` array (each coordinate is summed as it is looked up; a coordinate within
        rounding of a cell border, about 1e-13 mm, may fall in the neighbouring cell).
        """
        flat, shape = self._cells(points, offset)
        return np.asarray(self.grid.take(flat), dtype=np.float64).reshape(shape)

    def score(self, points: FloatArray, tau_mm: float, offset: FloatArray | None = None) -> FloatArray:
        """``max(0, 1 - distance / tau_mm)`` at ``points (..., d)`` (plus ``offset``): one gather from a
        table of the grid's scores, built on the first call for each ``tau_mm`` (the same values as
        computing them from :meth:`__call__`)."""
        flat, shape = self._cells(points, offset)
        return np.asarray(self._score_table(tau_mm).take(flat), dtype=np.float64).reshape(shape)

    def score_axes(self, points: FloatArray, offsets: tuple[FloatArray, ...], tau_mm: float) -> FloatArray:
        """:meth:`score` at ``points (..., d)`` plus an offset given a coordinate at a time, ``offsets[axis]``
        (each broadcast with ``points[..., axis]`` on its own).

        The same values as ``score(points, tau_mm, offset)`` with ``offset[..., axis] = offsets[axis]``
        broadcast to the common shape: each axis's cells are computed on its own (smaller) broadcast
        shape and only the integer indices are summed over the full one. The global step's poses are
        a grid of translations whose components vary along different axes of the grid (heights only
        in ``z``, offsets along a horizontal direction), so this is several times cheaper there.
        """
        flat: NDArray[np.int32] | None = None
        for axis in range(len(self.strides)):
            index = self._axis_cells(points[..., axis], offsets[axis], axis)
            flat = index if flat is None else flat + index
        assert flat is not None
        table = self._score_table(tau_mm)
        return np.asarray(table.take(flat), dtype=np.float64)

    def mean_score_axes(
        self, points: FloatArray, count: int, x: FloatArray, y: FloatArray, z: FloatArray, tau_mm: float
    ) -> FloatArray:
        """Mean :meth:`score` of poses on a grid of translations, compiled (``_field.c``), 3-D fields only.

        ``out[i, j, k]`` is the mean score of the first ``count`` of ``points[i]`` (``points (s, n, 3)``)
        moved by ``(x[i, k], y[i, k], z[i, j])`` (``x, y (s, o)``, ``z (s, h)``): bit for bit
        ``score_axes(points[:, None, None, :count], (x[:, None, :, None], y[:, None, :, None],
        z[:, :, None, None]), tau_mm).mean(axis=3)`` (the same cells, NumPy's pairwise sum), without
        its ``(s, h, o, count)`` arrays.
        """
        rows = self._kernel_points(points)
        sets, n = rows.shape[:2]
        if not 1 <= count <= n:
            raise ValueError(f"count must be 1 to {n}, got {count}")
        x, y, z = (np.ascontiguousarray(v, dtype=np.float64) for v in (x, y, z))
        if x.shape != y.shape or x.ndim != 2 or z.ndim != 2 or len(x) != sets or len(z) != sets:
            raise ValueError(f"x, y (s, o) and z (s, h) for {sets} sets, got {x.shape}, {y.shape}, {z.shape}")
        out = np.empty((sets, z.shape[1], x.shape[1]))
        table, origin, limit, strides = self._kernel_field(tau_mm)
        status = self._kernel().fs_mean_axes(
            table.ctypes.data, origin.ctypes.data, self.voxel, limit.ctypes.data, strides.ctypes.data,
            rows.ctypes.data, sets, n, int(count), x.ctypes.data, y.ctypes.data, z.ctypes.data,
            z.shape[1], x.shape[1], out.ctypes.data,
        )  # fmt: skip
        _check(status)
        return out

    def mean_score(
        self, points: FloatArray, which: NDArray[np.integer[Any]], offset: FloatArray, tau_mm: float
    ) -> FloatArray:
        """Mean :meth:`score` of poses one by one, compiled (``_field.c``), 3-D fields only.

        ``out[r]`` is the mean score of ``points[which[r]]`` (``points (s, n, 3)``) moved by
        ``offset[r]`` (``offset (m, 3)``): bit for bit ``score(points[which], tau_mm,
        offset[:, None, :]).mean(axis=1)``, without its ``(m, n, 3)`` and ``(m, n)`` arrays.
        """
        rows = self._kernel_points(points)
        index = np.ascontiguousarray(which, dtype=np.int64)
        shifts = np.ascontiguousarray(offset, dtype=np.float64)
        if index.ndim != 1 or shifts.shape != (len(index), 3):
            raise ValueError(f"which (m,) and offset (m, 3), got {index.shape} and {shifts.shape}")
        if len(index) and not (0 <= index.min() and index.max() < len(rows)):
            raise ValueError(f"which must index the {len(rows)} point sets")
        if rows.shape[1] == 0:
            raise ValueError("no points to score")
        out = np.empty(len(index))
        table, origin, limit, strides = self._kernel_field(tau_mm)
        status = self._kernel().fs_mean(
            table.ctypes.data, origin.ctypes.data, self.voxel, limit.ctypes.data, strides.ctypes.data,
            rows.ctypes.data, rows.shape[1], index.ctypes.data, shifts.ctypes.data, len(index), out.ctypes.data,
        )  # fmt: skip
        _check(status)
        return out

    def _kernel_points(self, points: FloatArray) -> FloatArray:
        if len(self.strides) != 3:
            raise ValueError("the compiled mean scores take a 3-D field")
        rows = np.ascontiguousarray(points, dtype=np.float64)
        if rows.ndim != 3 or rows.shape[2] != 3:
            raise ValueError(f"points must be (s, n, 3), got shape {rows.shape}")
        return rows

    def _kernel_field(self, tau_mm: float) -> tuple[FloatArray, FloatArray, FloatArray, NDArray[np.int64]]:
        """The score table and the grid's geometry as the kernel takes them."""
        # the flat indices stay int32 in NumPy's path: the same values only while the grid is smaller
        if len(self.grid) >= 2**31:
            raise ValueError("the field's grid is too large for the compiled mean scores")
        origin = np.ascontiguousarray(self.origin, dtype=np.float64)
        return self._score_table(tau_mm), origin, self.limit, np.asarray(self.strides, dtype=np.int64)

    @staticmethod
    def _kernel() -> Any:
        from mesial.aligner._meshquery import _load

        return _load()

    def _score_table(self, tau_mm: float) -> FloatArray:
        table = self._scores.get(tau_mm)
        if table is None:
            table = np.maximum(0.0, 1.0 - self.grid.astype(np.float64) / tau_mm)
            self._scores[tau_mm] = table
        return table

    def _axis_cells(self, coordinate: FloatArray, offset: FloatArray | None, axis: int) -> NDArray[np.int32]:
        """One axis's part of the flat grid index of ``coordinate (+ offset)`` (broadcast): the nearest cell
        along that axis, clipped to the grid, times its stride."""
        # in voxels from the grid's origin, +0.5 to round; with an offset each part is scaled on its
        # own (small) array and the sum is the one pass over the broadcast shape
        scaled = (coordinate - self.origin[axis]) / self.voxel
        if offset is None:
            cell = scaled + 0.5
        else:
            cell = np.add(scaled, offset / self.voxel + 0.5, dtype=np.float64)
        np.clip(cell, 0.0, self.limit[axis], out=cell)
        index: NDArray[np.int32] = cell.astype(np.int32)
        index *= np.int32(self.strides[axis])
        return index

    def _cells(self, points: FloatArray, offset: FloatArray | None) -> tuple[NDArray[np.int32], tuple[int, ...]]:
        """Flat grid index of each point (nearest cell, clipped to the grid) and the points' broadcast shape.

        One axis at a time: a coordinate's cell is clipped to the grid with scalar bounds and
        added to the flat index (the same cells as clipping the ``(n, d)`` array against its
        ``(d,)`` limits, twice as fast: no ``(n, d)`` temporary, no broadcast over an axis of d).
        """
        points = np.asarray(points)
        shape = points.shape[:-1] if offset is None else np.broadcast_shapes(points.shape, offset.shape)[:-1]
        flat = np.zeros(shape, dtype=np.int32)
        for axis in range(len(self.strides)):
            flat += self._axis_cells(points[..., axis], None if offset is None else offset[..., axis], axis)
        return flat.reshape(-1), tuple(shape)
