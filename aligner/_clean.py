"""Validation's cleaning, compiled (``_clean.c``): the same values as the NumPy code it stands for.

A binary STL repeats each vertex as a corner of every triangle around it (about six times);
:func:`merge_corners` merges them into vertices in one pass with a hash table, in the order
:func:`mesial.common.meshformat.merge_identical_points` gives (its hash's high bits; the slower
exact path of that function answers when two different corners share those bits).
:func:`cross_products`, :func:`corner_sums` and :func:`face_census` are the arithmetic of
:func:`.validate.face_cross_products`, :func:`.validate.vertex_normals` and
:func:`.validate.clean_mesh`'s checks in one pass over the triangles each (the same operations in
the same order: the same bits). They live in the aligner's
compiled library (``setup.py``), loaded with :mod:`ctypes`, which releases the GIL during each
call: the two threads that read an upper and a lower arch both run.
"""

from __future__ import annotations

import ctypes

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._meshquery import _load
from mesial.common.meshformat import merge_triangle_corners

_OK, _NO_MEMORY, _FALLBACK = 0, -1, 1


def merge_corners(corners: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Merge an STL's bit-identical triangle corners into vertices.

    Parameters
    ----------
    corners : (k, 3, 3) float32
        Three corners a triangle; the rows of a triangle may be a view into the STL's 50-byte
        records (any stride between triangles).

    Returns
    -------
    vertices : (n, 3) float64
        The distinct corners, in the order of :func:`mesial.common.meshformat.merge_identical_points`.
    faces : (k, 3) int64
        Each triangle's vertices: ``vertices[faces] == corners``.
    """
    if (
        corners.dtype != np.float32
        or corners.ndim != 3
        or corners.shape[1:] != (3, 3)
        or corners.strides[1:] != (12, 4)
        or corners.strides[0] < 36
    ):
        return merge_triangle_corners(corners)
    count = 3 * len(corners)
    vertices = np.empty((count, 3))
    inverse = np.empty(count, dtype=np.int64)
    unique = ctypes.c_int64()
    status = _load().mc_merge_corners(
        corners.ctypes.data,
        len(corners),
        3,
        corners.strides[0],
        max(1, (count - 1).bit_length()),  # merge_identical_points' shift: the hash's bits above an index
        vertices.ctypes.data,
        inverse.ctypes.data,
        ctypes.byref(unique),
    )
    if status == _NO_MEMORY:
        raise MemoryError("out of memory merging the corners of an STL")
    if status != _OK:  # two different corners share the hash's high bits: the exact path
        return merge_triangle_corners(corners)
    return vertices[: unique.value].copy(), inverse.reshape(-1, 3)  # (the room for every corner let go)


def cross_products(vertices: NDArray[np.float64], faces: NDArray[np.int64]) -> NDArray[np.float64] | None:
    """``(v1 - v0) x (v2 - v0)`` per triangle ``(m, 3)`` (see :func:`.validate.face_cross_products`), or
    None when an index is outside the vertices (the caller's NumPy code then says what it says)."""
    points = np.ascontiguousarray(vertices, dtype=np.float64)
    triangles = np.ascontiguousarray(faces, dtype=np.int64)
    cross = np.empty((len(triangles), 3))
    status = _load().mc_cross_products(
        points.ctypes.data, len(points), triangles.ctypes.data, len(triangles), cross.ctypes.data
    )
    return cross if status == _OK else None


def corner_sums(faces: NDArray[np.int64], weights: NDArray[np.float64], n: int) -> NDArray[np.float64] | None:
    """At each of ``n`` vertices, the sum of the ``weights (m, 3)`` of the triangles around it ``(n, 3)``: the sum
    over the three corners of ``np.bincount(faces[:, corner], weights[:, axis], minlength=n)`` per axis, bit for
    bit. None when an index is outside ``[0, n)`` (the caller's NumPy code then says what it says)."""
    triangles = np.ascontiguousarray(faces, dtype=np.int64)
    values = np.ascontiguousarray(weights, dtype=np.float64)
    sums = np.empty((n, 3))
    status = _load().mc_corner_sums(triangles.ctypes.data, len(triangles), values.ctypes.data, n, sums.ctypes.data)
    if status == _NO_MEMORY:
        raise MemoryError("out of memory summing the triangles' normals at the vertices")
    return sums if status == _OK else None


def face_census(
    faces: NDArray[np.int64], n: int, cross: NDArray[np.float64], min_double_area: float
) -> tuple[NDArray[np.bool_], NDArray[np.int64], bool] | None:
    """:func:`.validate.clean_mesh`'s checks of the triangles ``faces (m, 3)`` over ``n`` vertices.

    Parameters
    ----------
    faces : (m, 3) int
    n : int
        Vertices, below 2 000 000 (the keys fit in 63 bits).
    cross : (m, 3) float
        The triangles' cross products (:func:`cross_products`).
    min_double_area : float
        A triangle whose cross product is shorter is degenerate.

    Returns
    -------
    degenerate : (m,) bool
        Two corners one vertex, or the cross product shorter than ``min_double_area``.
    keys : (k,) int64
        Of the other triangles, in order: ``(low n + middle) n + high`` of their sorted vertices.
    every_vertex_used : bool
        Each vertex a corner of a triangle that is not degenerate.

    None when ``n`` or an index is out of range (the caller's NumPy code then answers).
    """
    triangles = np.ascontiguousarray(faces, dtype=np.int64)
    products = np.ascontiguousarray(cross, dtype=np.float64)
    if products.shape != triangles.shape:
        return None
    degenerate = np.empty(len(triangles), dtype=np.bool_)
    keys = np.empty(len(triangles), dtype=np.int64)
    counts = np.zeros(2, dtype=np.int64)
    status = _load().mc_face_census(
        triangles.ctypes.data,
        len(triangles),
        n,
        products.ctypes.data,
        min_double_area,
        degenerate.ctypes.data,
        keys.ctypes.data,
        counts.ctypes.data,
    )
    if status == _NO_MEMORY:
        raise MemoryError("out of memory checking the triangles")
    if status != _OK:
        return None
    return degenerate, keys[: len(triangles) - int(counts[0])], bool(counts[1])
