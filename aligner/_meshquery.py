"""Exact closest points and ray casts on a triangle mesh: the aligner's own compiled kernel.

A bounding volume hierarchy over the triangles (binned surface-area heuristic, at most eight
triangles a leaf), built and queried in float64 by ``_meshquery.c``, a plain C99 library
that setuptools compiles with the package. It is loaded with :mod:`ctypes`, which releases
the GIL for the length of each call, and each call splits its queries over ``threads``
POSIX threads: two Python threads querying two arches run on both cores.

It replaces Open3D's ``RaycastingScene`` in ``mesial align`` (the fine step, the occlusal
analysis, validation's orientation check; the rendered views were ray-cast too before ``_raster``): loading Open3D's compiled
core cost 0.4-0.6 s of every process, and its closest-point queries (float32, about 3 µs
a point) hold the GIL. docs/aligner.md ("Mesh queries") has the measurements.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

# The library's error codes (``MQ_E*`` in _meshquery.c).
_ERRORS = {
    -1: (MemoryError, "out of memory"),
    -2: (ValueError, "a face refers to a vertex that does not exist"),
    -3: (ValueError, "a vertex coordinate is NaN or infinite"),
    -4: (ValueError, "a mesh needs at least one triangle (and fewer than 2**30)"),
    -5: (RuntimeError, "a query thread could not be started"),
}

_library: Any = None
_loading = threading.Lock()


def default_threads() -> int:
    """Query threads when none are given: 2, or fewer when the process may use fewer CPUs."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(2, available))


def _load() -> Any:
    global _library
    if _library is None:
        with _loading:
            if _library is None:
                _library = _open()
    return _library


def _open() -> Any:
    folder = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / f"_meshquery_lib{suffix}"
        if path.is_file():
            break
    else:
        raise ImportError(
            f"the aligner's compiled mesh-query kernel is not built (no _meshquery_lib*.so in {folder}): "
            "install the package (`make install`, `pip install .`), which compiles aligner/_meshquery.c"
        )
    library = ctypes.CDLL(str(path))  # CDLL: the GIL is released during every call
    pointer, i64, c_int, real = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    library.mq_build.argtypes = [pointer, i64, pointer, i64, ctypes.POINTER(ctypes.c_void_p)]
    library.mq_build.restype = c_int
    library.mq_free.argtypes = [pointer]
    library.mq_free.restype = None
    library.mq_node_count.argtypes = [pointer]
    library.mq_node_count.restype = i64
    library.mq_depth.argtypes = [pointer]
    library.mq_depth.restype = i64
    library.mq_closest.argtypes = [pointer, pointer, i64, c_int, real, *[pointer] * 7]
    library.mq_closest.restype = c_int
    library.mq_cast.argtypes = [pointer, pointer, pointer, i64, c_int, pointer, pointer, pointer, pointer]
    library.mq_cast.restype = c_int
    library.mq_raster.argtypes = [pointer, i64, pointer, i64, real, real, real, i64, i64, *[pointer] * 4]
    library.mq_raster.restype = c_int
    library.nn_build.argtypes = [pointer, i64, ctypes.POINTER(ctypes.c_void_p)]
    library.nn_build.restype = c_int
    library.nn_free.argtypes = [pointer]
    library.nn_free.restype = None
    library.nn_query.argtypes = [pointer, pointer, i64, real, pointer, pointer]
    library.nn_query.restype = c_int
    library.nn_scalar_leaves.argtypes = [c_int]
    library.nn_scalar_leaves.restype = None
    library.nn_plane_rows.argtypes = [pointer, pointer, i64, real, *[pointer] * 6]
    library.nn_plane_rows.restype = c_int
    library.nn_planes.argtypes = [pointer, pointer, i64, real, i64, *[pointer] * 8]
    library.nn_planes.restype = c_int
    library.nn_on_plane.argtypes = [pointer, pointer, i64, real, real, *[pointer] * 3]
    library.nn_on_plane.restype = c_int
    library.nn_spread.argtypes = [pointer, i64, pointer, i64, pointer]
    library.nn_spread.restype = c_int
    library.mc_merge_corners.argtypes = [pointer, i64, i64, i64, c_int, pointer, pointer, pointer]
    library.mc_merge_corners.restype = c_int
    library.mc_cross_products.argtypes = [pointer, i64, pointer, i64, pointer]
    library.mc_cross_products.restype = c_int
    library.mc_corner_sums.argtypes = [pointer, i64, pointer, i64, pointer]
    library.mc_corner_sums.restype = c_int
    library.mc_face_census.argtypes = [pointer, i64, i64, pointer, real, pointer, pointer, pointer]
    library.mc_face_census.restype = c_int
    library.fs_mean_axes.argtypes = [pointer, pointer, real, pointer, pointer, pointer, i64, i64, i64, *[pointer] * 3]
    library.fs_mean_axes.argtypes += [i64, i64, pointer]
    library.fs_mean_axes.restype = c_int
    library.fs_mean.argtypes = [pointer, pointer, real, pointer, pointer, pointer, i64, pointer, pointer, i64, pointer]
    library.fs_mean.restype = c_int
    library.pp_voxel_first.argtypes = [pointer, i64, real, pointer, pointer]
    library.pp_voxel_first.restype = c_int
    library.pp_key_least.argtypes = [pointer, pointer, i64, pointer, pointer]
    library.pp_key_least.restype = c_int
    library.pp_mirror_costs.argtypes = [pointer, pointer, pointer, i64, i64, pointer, pointer, real, pointer, pointer]
    library.pp_mirror_costs.argtypes += [pointer]
    library.pp_mirror_costs.restype = c_int
    library.pp_border_edges.argtypes = [pointer, i64, i64, pointer, pointer]
    library.pp_border_edges.restype = c_int
    library.pp_row_mean.argtypes = [pointer, i64, pointer]
    library.pp_row_mean.restype = c_int
    return library


def _check(status: int) -> None:
    if status != 0:
        kind, message = _ERRORS.get(status, (RuntimeError, f"mesh-query kernel error {status}"))
        raise kind(message)


def _rows(array: Any, name: str, width: int = 3) -> FloatArray:
    """``array`` as C-ordered float64 rows ``(n, width)``, finite, or a ValueError naming it."""
    rows = np.ascontiguousarray(array, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != width:
        raise ValueError(f"{name} must be (n, {width}), got shape {rows.shape}")
    if not np.isfinite(rows).all():
        raise ValueError(f"{name} must be finite (NaN or infinite values given)")
    return rows


def _faces(faces: Any) -> NDArray[np.int64]:
    """``faces`` as C-ordered int64 rows ``(m, 3)`` of an integer array, or a ValueError (indices are checked in C)."""
    faces_array = np.asarray(faces)
    if faces_array.ndim != 2 or faces_array.shape[1] != 3:
        raise ValueError(f"faces must be (m, 3), got shape {faces_array.shape}")
    if faces_array.size and not np.issubdtype(faces_array.dtype, np.integer):
        raise ValueError(f"faces must hold integer vertex indices, got {faces_array.dtype}")
    return np.ascontiguousarray(faces_array, dtype=np.int64)


def _address(array: NDArray[Any]) -> int:
    return int(array.ctypes.data)


@dataclass(frozen=True)
class ClosestPoints:
    """Closest points on a mesh, one per query point.

    Attributes
    ----------
    points : (n, 3) float, millimetres
        The closest point of the mesh.
    triangles : (n,) int
        The triangle it lies on (a row of ``faces``).
    uv : (n, 2) float
        Its barycentric ``(u, v)``: ``point = a + u (b - a) + v (c - a)`` for the triangle's
        corners ``a, b, c`` (weights ``1 - u - v, u, v``).
    normals : (n, 3) float
        The triangle's unit normal ``(b - a) x (c - a)`` normalised (zeros on a degenerate triangle).
    distances : (n,) float, millimetres
    """

    points: FloatArray
    triangles: NDArray[np.int64]
    uv: FloatArray
    normals: FloatArray
    distances: FloatArray

    @property
    def weights(self) -> FloatArray:
        """Barycentric weights ``(n, 3)`` of the corners ``a, b, c``."""
        return np.column_stack([1.0 - (self.uv[:, 0] + self.uv[:, 1]), self.uv])


@dataclass(frozen=True)
class RayHits:
    """First hits of rays ``origin + t direction``, ``t >= 0``, one per ray.

    Attributes
    ----------
    t : (n,) float
        Ray parameter of the hit, in lengths of the ray's direction (millimetres for a unit
        direction); inf where the ray misses.
    triangles : (n,) int
        The triangle hit (-1 on a miss).
    uv : (n, 2) float
        Barycentric ``(u, v)`` of the hit on it (as :attr:`ClosestPoints.uv`; zeros on a miss).
    normals : (n, 3) float
        The triangle's unit normal, whichever side the ray came from (zeros on a miss).
    """

    t: FloatArray
    triangles: NDArray[np.int64]
    uv: FloatArray
    normals: FloatArray


class MeshQuery:
    """A bounding volume hierarchy over one triangle mesh's triangles, in its own frame.

    Parameters
    ----------
    vertices : (n, 3) float, millimetres
    faces : (m, 3) int
        Rows of vertex indices, ``m >= 1``; every index in ``[0, n)``.
    threads : int, optional
        Default query threads (default :func:`default_threads`).

    Raises
    ------
    ValueError
        Wrong shapes, no triangle, an index out of range, a non-finite coordinate.
    ImportError
        The compiled kernel is not built.
    """

    def __init__(self, vertices: Any, faces: Any, *, threads: int | None = None) -> None:
        library = _load()
        points = _rows(vertices, "vertices")
        triangles = _faces(faces)
        if len(triangles) == 0:
            raise ValueError("a mesh needs at least one triangle (faces is empty)")
        handle = ctypes.c_void_p()
        _check(
            library.mq_build(_address(points), len(points), _address(triangles), len(triangles), ctypes.byref(handle))
        )
        self._library = library
        self._handle = handle.value
        self.vertex_count = len(points)
        self.triangle_count = len(triangles)
        self.threads = default_threads() if threads is None else _thread_count(threads)

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self._library.mq_free(handle)
            self._handle = None

    @property
    def nodes(self) -> int:
        """Nodes of the hierarchy."""
        return int(self._library.mq_node_count(self._handle))

    @property
    def depth(self) -> int:
        """Depth of the hierarchy (the root is depth 0)."""
        return int(self._library.mq_depth(self._handle))

    def closest(
        self,
        points: Any,
        *,
        threads: int | None = None,
        within: float = np.inf,
        bounds: Any = None,
        hints: Any = None,
    ) -> ClosestPoints:
        """The exact closest point of the mesh to each point.

        Parameters
        ----------
        points : (n, 3) float, millimetres
            Finite, in the mesh's frame.
        threads : int, optional
            Threads to split the points over (default :attr:`threads`); the answers do not depend on it.
        within : float, millimetres, optional
            Only triangles nearer than this are searched (the search skips the hierarchy's farther
            boxes: far points cost little). A point with none gets NaN, triangle -1, (0, 0), a zero
            normal and distance inf; the others the same answer as without a bound.
        bounds : (n,) float, millimetres, optional
            A bound of each point's own (positive, inf allowed), as ``within`` for that point: the
            smaller of the two counts. A point with a triangle nearer than its bound gets the same
            answer as without one (a caller that knows a distance no nearer triangle can beat, say
            another surface's, saves the search beyond it).
        hints : (n,) int, optional
            A triangle near each point (-1: none), say its closest one for a point moved a little since:
            the search looks only just beyond that triangle's distance. The answers are those without
            hints.

        Returns
        -------
        closest : ClosestPoints
            Of two triangles equally near, the one found first.
        """
        if not within > 0:  # (also NaN)
            raise ValueError(f"within must be a positive distance, got {within!r}")
        query = _rows(points, "points")
        n = len(query)
        closest, uv, normals = np.zeros((n, 3)), np.zeros((n, 2)), np.zeros((n, 3))
        triangles, distances = np.zeros(n, dtype=np.int64), np.zeros(n)
        own = None if bounds is None else np.ascontiguousarray(bounds, dtype=np.float64)
        if own is not None and own.shape != (n,):
            raise ValueError(f"bounds must have shape ({n},), got {own.shape}")
        if own is not None and not (own > 0).all():  # (also NaN)
            raise ValueError("bounds must be positive distances")
        near = None if hints is None else np.ascontiguousarray(hints, dtype=np.int64)
        if near is not None and near.shape != (n,):
            raise ValueError(f"hints must have shape ({n},), got {near.shape}")
        if near is not None and len(near) and not (near.max() < self.triangle_count):
            raise ValueError(f"hints must be triangle indices below {self.triangle_count} (or negative: none)")
        _check(
            self._library.mq_closest(
                self._handle,
                _address(query),
                n,
                self._threads(threads),
                float(within),
                None if own is None else _address(own),
                None if near is None else _address(near),
                _address(closest),
                _address(triangles),
                _address(uv),
                _address(normals),
                _address(distances),
            )
        )
        return ClosestPoints(closest, triangles, uv, normals, distances)

    def cast(self, origins: Any, directions: Any, *, threads: int | None = None) -> RayHits:
        """The first triangle each ray ``origin + t direction`` (``t >= 0``) hits.

        A ray through an edge or a corner shared by triangles hits one of them (a tolerance of
        1e-12 in barycentric units); a ray in a triangle's plane does not hit it.

        Parameters
        ----------
        origins : (n, 3) float, millimetres
        directions : (n, 3) float
            Need not be unit vectors (``t`` is in their lengths); a zero direction hits nothing.
        threads : int, optional
            As in :meth:`closest`.

        Returns
        -------
        hits : RayHits
        """
        starts = _rows(origins, "origins")
        ways = _rows(directions, "directions")
        if len(starts) != len(ways):
            raise ValueError(f"{len(starts)} origins and {len(ways)} directions")
        n = len(starts)
        t, uv, normals = np.zeros(n), np.zeros((n, 2)), np.zeros((n, 3))
        triangles = np.zeros(n, dtype=np.int64)
        _check(
            self._library.mq_cast(
                self._handle,
                _address(starts),
                _address(ways),
                n,
                self._threads(threads),
                _address(t),
                _address(triangles),
                _address(uv),
                _address(normals),
            )
        )
        return RayHits(t, triangles, uv, normals)

    def _threads(self, threads: int | None) -> int:
        return self.threads if threads is None else _thread_count(threads)


def _thread_count(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return min(int(threads), 64)
