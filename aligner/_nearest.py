"""Nearest sample within a bound: the global step's k-d tree, compiled (``_nearest.c``).

The short ICPs of the global step match about a million bite points a case to the nearest
sample of a thinned arch (:class:`._icp.PlaneTarget`). SciPy's ``cKDTree.query`` takes about
0.7 µs a point there (its general k-nearest search keeps a heap per point); this tree answers
the one question asked, the nearest point strictly within a bound, with a depth-first descent
(32 points a leaf, scanned four at a time where the processor has AVX2, with the same sums; a
large call's points taken in the order of a coarse grid's cells, so that
neighbouring queries walk the same part of the tree), and the same answers: the distance
computed as SciPy computes it, infinity and the index ``n`` when nothing is within the bound.
(Between points at exactly the same distance the smallest index wins, where SciPy's choice
follows its tree.) It lives in the aligner's compiled library (``setup.py``), loaded with
:mod:`ctypes`, which releases the GIL during each call.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._meshquery import _load

FloatArray = NDArray[np.float64]


class NearestTree:
    """Points ``(n, 3)`` (mm, finite, at least one) for nearest-point queries within a bound.

    Raises
    ------
    ValueError
        Wrong shape, no point, a non-finite coordinate.
    MemoryError
    """

    def __init__(self, points: Any) -> None:
        library = _load()
        rows = np.ascontiguousarray(points, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != 3 or len(rows) == 0:
            raise ValueError(f"points must be (n, 3) with n >= 1, got shape {rows.shape}")
        if not np.isfinite(rows).all():
            raise ValueError("points must be finite (NaN or infinite values given)")
        handle = ctypes.c_void_p()
        status = library.nn_build(rows.ctypes.data, len(rows), ctypes.byref(handle))
        if status == -1:
            raise MemoryError("out of memory building the nearest-point tree")
        if status != 0:
            raise ValueError(f"cannot build a nearest-point tree of {len(rows)} points")
        self._library = library
        self._handle = handle.value
        self.n = len(rows)

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self._library.nn_free(handle)
            self._handle = None

    def query(self, points: Any, bound: float, threads: int = 1) -> tuple[FloatArray, NDArray[np.int64]]:
        """Distance (mm) to the nearest point strictly within ``bound`` (inf beyond) and its index
        (``n`` there), for each of ``points (m, 3)``: ``cKDTree.query(points, distance_upper_bound=bound)``.

        ``threads`` > 1 splits a large query (``THREADS_FROM`` points or more) into that many parts,
        each on a thread (the answers do not depend on the split).
        """
        rows = np.ascontiguousarray(points, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != 3:
            raise ValueError(f"points must be (m, 3), got shape {rows.shape}")
        if not (bound >= 0.0):
            raise ValueError(f"bound must be a distance >= 0, got {bound}")
        distance = np.empty(len(rows))
        index = np.empty(len(rows), dtype=np.int64)
        if not len(rows):
            return distance, index
        if not np.isfinite(rows).all():
            raise ValueError("points must be finite (NaN or infinite values given)")

        def part(start: int, stop: int) -> None:
            self._library.nn_query(
                self._handle, rows[start:].ctypes.data, stop - start, float(bound),
                distance[start:].ctypes.data, index[start:].ctypes.data,
            )  # fmt: skip

        parts = max(1, min(int(threads), len(rows) // THREADS_FROM))
        edges = [len(rows) * k // parts for k in range(parts + 1)]
        helpers = [threading.Thread(target=part, args=(edges[k], edges[k + 1])) for k in range(1, parts)]
        for helper in helpers:
            helper.start()
        part(edges[0], edges[1])
        for helper in helpers:
            helper.join()
        return distance, index

    def plane_rows(
        self, points: Any, gate: float, samples: FloatArray, normals: FloatArray
    ) -> tuple[NDArray[np.bool_], FloatArray, FloatArray, FloatArray]:
        """One iteration's point-to-plane terms of the global step's short ICP for ``points (..., 3)``.

        Each point is matched to its nearest tree point strictly within ``gate`` (``query``'s
        answer), that sample's position and unit normal being ``samples[i]`` and ``normals[i]``
        (``(n, 3)``, the tree's order); an unmatched point takes sample 0 with zero weight. Returns
        ``use (...)`` (matched), ``rows (..., 6)`` (``x × normal``, ``normal``), ``weighted`` (the
        rows times the weight) and ``wr (...)`` (weight times residual), with the residual
        ``(x - sample) . normal`` and the weight ``max(0, 1 - (residual / gate)²)²``: bit for bit what
        :func:`._coarse.icp_many` computed with NumPy from ``query``'s answer (its einsum's order of
        the three products included).
        """
        if not (gate > 0.0):
            raise ValueError(f"gate must be a distance > 0, got {gate}")
        rows, samples, normals = self._checked(points, samples, normals)
        shape = rows.shape[:-1]
        use = np.empty(shape, dtype=np.uint8)
        out = np.empty((*shape, 6))
        weighted = np.empty((*shape, 6))
        wr = np.empty(shape)
        self._library.nn_plane_rows(
            self._handle, rows.ctypes.data, rows.size // 3, float(gate), samples.ctypes.data, normals.ctypes.data,
            use.ctypes.data, out.ctypes.data, weighted.ctypes.data, wr.ctypes.data,
        )  # fmt: skip
        return use.view(np.bool_), out, weighted, wr

    def planes(
        self,
        points: Any,
        bound: float,
        samples: FloatArray,
        normals: FloatArray,
        row_bounds: FloatArray | None = None,
        within: FloatArray | None = None,
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """The nearest sample's position and unit normal (zeros where none), the distance (inf there) and
        its square as summed (inf there) for each of ``points (..., 3)``: ``query(points, bound)`` with
        ``samples[index]`` and ``normals[index]`` gathered (``(n, 3)``, the tree's order).

        ``row_bounds (a,)``: ``points`` are ``(a, k, 3)`` and a match of row ``r`` farther than
        ``row_bounds[r]`` counts as none. ``within`` (shaped as the points, squared mm): a point's match
        is looked for only strictly within it (a match at that squared distance or beyond counts as none).
        """
        if not (bound >= 0.0):
            raise ValueError(f"bound must be a distance >= 0, got {bound}")
        rows, samples, normals = self._checked(points, samples, normals)
        shape = rows.shape[:-1]
        limits = None
        if row_bounds is not None:
            limits = np.ascontiguousarray(row_bounds, dtype=np.float64)
            if rows.ndim != 3 or limits.shape != (len(rows),) or rows.shape[1] == 0:
                raise ValueError(f"row_bounds (a,) need points (a, k, 3), k >= 1, got {limits.shape} and {rows.shape}")
        squared_within = None
        if within is not None:
            squared_within = np.ascontiguousarray(within, dtype=np.float64)
            if squared_within.shape != shape:
                raise ValueError(f"within must be shaped as the points {shape}, got {squared_within.shape}")
        closest, normal, distance, squared = (
            np.empty((*shape, 3)),
            np.empty((*shape, 3)),
            np.empty(shape),
            np.empty(shape),
        )
        status = self._library.nn_planes(
            self._handle, rows.ctypes.data, rows.size // 3, float(bound), rows.shape[1] if limits is not None else 0,
            None if limits is None else limits.ctypes.data,
            None if squared_within is None else squared_within.ctypes.data, samples.ctypes.data, normals.ctypes.data,
            closest.ctypes.data, normal.ctypes.data, distance.ctypes.data, squared.ctypes.data,
        )  # fmt: skip
        if status != 0:
            raise ValueError(f"the nearest-sample kernel refused the rows (error {status})")
        return closest, normal, distance, squared

    def on_plane(
        self, points: Any, bound: float, tau: float, samples: FloatArray, normals: FloatArray
    ) -> NDArray[np.bool_]:
        """Which of ``points (..., 3)`` have a nearest sample strictly within ``bound`` whose tangent plane
        (``samples[index]``, ``normals[index]``) they are within ``tau`` of: ``|(x - sample) . normal| <
        tau``, the products summed as NumPy's einsum sums them (bit for bit the NumPy test from
        ``query``'s answer)."""
        if not (bound >= 0.0):
            raise ValueError(f"bound must be a distance >= 0, got {bound}")
        rows, samples, normals = self._checked(points, samples, normals)
        hit = np.empty(rows.shape[:-1], dtype=np.uint8)
        self._library.nn_on_plane(
            self._handle, rows.ctypes.data, rows.size // 3, float(bound), float(tau), samples.ctypes.data,
            normals.ctypes.data, hit.ctypes.data,
        )  # fmt: skip
        return hit.view(np.bool_)

    def _checked(self, points: Any, samples: Any, normals: Any) -> tuple[FloatArray, FloatArray, FloatArray]:
        """``points (..., 3)`` (finite), ``samples`` and ``normals`` ``(n, 3)``, contiguous float64."""
        rows = np.ascontiguousarray(points, dtype=np.float64)
        if rows.ndim < 1 or rows.shape[-1] != 3:
            raise ValueError(f"points must be (..., 3), got shape {rows.shape}")
        samples = np.ascontiguousarray(samples, dtype=np.float64)
        normals = np.ascontiguousarray(normals, dtype=np.float64)
        if samples.shape != (self.n, 3) or normals.shape != (self.n, 3):
            raise ValueError(f"samples and normals must be ({self.n}, 3), got {samples.shape} and {normals.shape}")
        if not np.isfinite(rows).all():
            raise ValueError("points must be finite (NaN or infinite values given)")
        return rows, samples, normals


# A query is split over threads only from this many points per thread (a thread costs more than it
# saves below).
THREADS_FROM = 20_000


@contextlib.contextmanager
def scalar_leaves() -> Iterator[None]:
    """Within it, every query scans its k-d leaves as processors without AVX2 do (for tests: on a
    processor with AVX2 that scan would otherwise never run); the processor's own choice after.

    Process-wide: not for use while another thread queries.
    """
    library = _load()
    library.nn_scalar_leaves(1)
    try:
        yield
    finally:
        library.nn_scalar_leaves(0)
