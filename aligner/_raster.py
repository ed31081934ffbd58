"""Orthographic z-buffer: per pixel, the nearest triangle along the view (``_raster.c``).

What a ray cast along the view direction from each pixel's centre finds
(:meth:`._meshquery.MeshQuery.cast`): the nearest triangle whose projection holds the centre
(inside or on an edge), the barycentric ``(u, v)`` there and the triangle's unit normal, but
each triangle visits only the pixels of its own box instead of each pixel descending a
hierarchy. Between two triangles at one depth (a centre exactly on a shared edge) the first in
``faces`` wins, where the ray cast takes the first its hierarchy reaches. It lives in the
aligner's compiled library (``setup.py``), loaded with :mod:`ctypes` (the GIL is released
during the call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._meshquery import _check, _faces, _load, _rows

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Raster:
    """The nearest triangle at each pixel of a ``rows x cols`` image (row-major, ``rows * cols`` entries).

    Attributes
    ----------
    depth : (p,) float, millimetres
        Along the view, of the triangle's point at the pixel's centre; inf where none is there.
    triangles : (p,) int
        The triangle (a row of ``faces``), -1 where none.
    uv : (p, 2) float
        Barycentric ``(u, v)`` of the centre on it: ``a + u (b - a) + v (c - a)`` (zeros where none).
    normals : (p, 3) float
        The triangle's unit normal ``(b - a) x (c - a)`` normalised, in the view's frame
        ``(right, up, along the view)`` (zeros where none).
    """

    depth: FloatArray
    triangles: NDArray[np.int64]
    uv: FloatArray
    normals: FloatArray


def rasterise(points: Any, faces: Any, *, left: float, top: float, pixel_mm: float, rows: int, cols: int) -> Raster:
    """The nearest triangle along the view at each pixel centre of an orthographic image.

    Parameters
    ----------
    points : (n, 3) float, millimetres
        The vertices in the view's frame: ``(right, up, depth along the view)``.
    faces : (m, 3) int
        Rows of vertex indices in ``[0, n)``.
    left, top : float, millimetres
        The image's left and top edges: pixel ``(i, j)`` has its centre at
        ``(left + (j + 0.5) pixel_mm, top - (i + 0.5) pixel_mm)``.
    pixel_mm : float
        Positive.
    rows, cols : int
        The image's size, not negative.

    Returns
    -------
    raster : Raster
        A centre inside or on the edge of a triangle's projection (within 1e-12 in barycentric
        units, as the ray cast) sees it; a triangle seen edge-on or flat is seen nowhere.

    Raises
    ------
    ValueError
        Wrong shapes, a non-finite coordinate, an index out of range, a bad pixel size or image size.
    """
    library = _load()
    vertices = _rows(points, "points")
    triangles = _faces(faces)
    if not (np.isfinite(pixel_mm) and pixel_mm > 0):
        raise ValueError(f"pixel_mm must be positive and finite, got {pixel_mm!r}")
    if not (np.isfinite(left) and np.isfinite(top)):
        raise ValueError(f"left and top must be finite, got {left!r}, {top!r}")
    if rows < 0 or cols < 0:
        raise ValueError(f"rows and cols must not be negative, got {rows}, {cols}")
    size = int(rows) * int(cols)
    depth, uv, normals = np.empty(size), np.empty((size, 2)), np.empty((size, 3))
    hit = np.empty(size, dtype=np.int64)
    _check(
        library.mq_raster(
            vertices.ctypes.data,
            len(vertices),
            triangles.ctypes.data,
            len(triangles),
            float(left),
            float(top),
            float(pixel_mm),
            int(rows),
            int(cols),
            depth.ctypes.data,
            hit.ctypes.data,
            uv.ctypes.data,
            normals.ctypes.data,
        )
    )
    return Raster(depth, hit, uv, normals)
