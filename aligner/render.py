"""Orthographic images of a mesh coloured by a per-vertex scalar (no screen, no GPU)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._raster import rasterise

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class View:
    """An orthographic view.

    Attributes
    ----------
    image : (h, w) float
        Interpolated scalar per pixel (NaN where no surface is seen).
    shade : (h, w) float
        Lambert shading in [0, 1] (NaN where no surface is seen).
    extent : (4,) float
        ``(left, right, bottom, top)`` in millimetres in the image plane.
    """

    image: FloatArray
    shade: FloatArray
    extent: tuple[float, float, float, float]


def render_orthographic(
    vertices: FloatArray,
    faces: NDArray[np.int64],
    values: FloatArray,
    view_dir: FloatArray,
    up_dir: FloatArray,
    *,
    pixel_mm: float = 0.1,
    max_pixels: int = 900,
) -> View:
    """An orthographic image of a mesh looking along ``view_dir``.

    Each pixel sees what a ray from its centre along ``view_dir`` would hit first: the nearest
    triangle whose projection holds the centre, found by the aligner's z-buffer
    (:func:`~mesial.aligner._raster.rasterise`, each triangle visiting only the pixels of its box).

    Parameters
    ----------
    vertices : (n, 3) float, millimetres
    faces : (m, 3) int
    values : (n,) float
        Per-vertex scalar (e.g. signed distance in mm), interpolated inside triangles.
    view_dir : (3,) float
        Direction the camera looks along.
    up_dir : (3,) float
        Direction that appears upwards in the image.
    pixel_mm : float
        Pixel size, mm (raised if the image would exceed ``max_pixels``).
    max_pixels : int
        Largest width or height.

    Returns
    -------
    view : View
    """
    forward = np.asarray(view_dir, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    up = np.asarray(up_dir, dtype=np.float64) - forward * float(np.dot(up_dir, forward))
    up /= np.linalg.norm(up)
    right = np.cross(forward, up)
    seen_from = np.asarray(vertices, dtype=np.float64) @ np.column_stack([right, up, forward])  # (u, w, depth)
    u, w = seen_from[:, 0], seen_from[:, 1]
    margin = 1.0
    left, top = u.min() - margin, w.max() + margin
    width_mm, height_mm = np.ptp(u) + 2 * margin, np.ptp(w) + 2 * margin
    pixel_mm = max(pixel_mm, max(width_mm, height_mm) / max_pixels)
    cols, rows = int(np.ceil(width_mm / pixel_mm)), int(np.ceil(height_mm / pixel_mm))
    # pixel (row i, column j) sees along forward from (left + (j + 0.5) pixel_mm, top - (i + 0.5) pixel_mm)
    hit = rasterise(seen_from, faces, left=float(left), top=float(top), pixel_mm=pixel_mm, rows=rows, cols=cols)
    ok = np.flatnonzero(hit.triangles >= 0)
    tri = hit.triangles[ok]
    uv = hit.uv[ok]
    at = np.take(values, np.take(faces, tri, axis=0))  # the scalar at the corners of each triangle seen
    interpolated = at[:, 0] * (1 - uv[:, 0] - uv[:, 1]) + at[:, 1] * uv[:, 0] + at[:, 2] * uv[:, 1]
    light = np.array([0.0, 0.5, -1.0]) / np.sqrt(1.25)  # -forward + 0.5 up, in the view's frame as the normals
    image = np.full(rows * cols, np.nan)
    shade = np.full(rows * cols, np.nan)
    image[ok] = interpolated
    shade[ok] = 0.35 + 0.65 * np.abs(hit.normals[ok] @ light)
    extent = (float(left), float(left + cols * pixel_mm), float(top - rows * pixel_mm), float(top))
    return View(image.reshape(rows, cols), shade.reshape(rows, cols), extent)
