"""Ray-cast images of a mesh coloured by a per-vertex scalar (no screen, no GPU)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class View:
    """An orthographic view.

    Attributes
    ----------
    image : (h, w) float
        Interpolated scalar per pixel (NaN where the ray misses).
    shade : (h, w) float
        Lambert shading in [0, 1] (NaN where the ray misses).
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
    scene: Any = None,
    pose: FloatArray | None = None,
    reach_mm: float | None = None,
) -> View:
    """Ray-cast an orthographic image of a mesh looking along ``view_dir``.

    Only the pixels a triangle can cover are cast: those within ``reach_mm`` of a vertex's
    pixel (about 40 % of an occlusal view's box; the others are misses all the same).

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
    scene : MeshQuery, optional
        Of these triangles in their own frame, when the caller has one (its BVH is reused).
    pose : (4, 4) float, optional
        Places the scene's triangles at ``vertices`` (``vertices = pose @ own``).
    reach_mm : float, optional
        The farthest a point of a triangle lies from its nearest corner (at most the longest
        edge / sqrt 3), when the caller knows it; computed from the edges otherwise.

    Returns
    -------
    view : View
    """
    forward = np.asarray(view_dir, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    up = np.asarray(up_dir, dtype=np.float64) - forward * float(np.dot(up_dir, forward))
    up /= np.linalg.norm(up)
    right = np.cross(forward, up)
    u, w, depth = vertices @ right, vertices @ up, vertices @ forward
    margin = 1.0
    left, top = u.min() - margin, w.max() + margin
    width_mm, height_mm = np.ptp(u) + 2 * margin, np.ptp(w) + 2 * margin
    pixel_mm = max(pixel_mm, max(width_mm, height_mm) / max_pixels)
    cols, rows = int(np.ceil(width_mm / pixel_mm)), int(np.ceil(height_mm / pixel_mm))
    light = -forward + 0.5 * up
    light /= np.linalg.norm(light)
    # pixel (row i, column j) looks along forward from corner + i * step_down + j * step_right
    corner = (left + 0.5 * pixel_mm) * right + (top - 0.5 * pixel_mm) * up + (depth.min() - 5.0) * forward
    step_right, step_down = pixel_mm * right, -pixel_mm * up
    rotation = np.eye(3)
    if scene is None:
        from mesial.aligner._meshquery import MeshQuery

        scene = MeshQuery(vertices, faces)
    elif pose is not None:  # the rays into the scene's own frame: three vectors and a point, not every ray
        rotation = np.asarray(pose, dtype=np.float64)[:3, :3]
        corner = (corner - pose[:3, 3]) @ rotation
        step_right, step_down, forward = step_right @ rotation, step_down @ rotation, forward @ rotation
    if reach_mm is None:
        reach_mm = _longest_edge(vertices, faces) / float(np.sqrt(3.0))
    # a ray hits a triangle inside its projection, within reach_mm of a corner's projection, so within
    # reach_mm / pixel_mm + 1 pixels (a pixel's centre and the corner's half a pixel each) of that corner's pixel
    pixels = np.flatnonzero(_near_vertices(left, top, pixel_mm, rows, cols, u, w, reach_mm / pixel_mm + 1.0))
    row, col = np.divmod(pixels, cols)
    origins = corner + row[:, None].astype(np.float64) * step_down + col[:, None].astype(np.float64) * step_right
    hit = scene.cast(origins, np.broadcast_to(forward, (len(pixels), 3)))
    found = np.isfinite(hit.t)
    ok = pixels[found]
    tri = hit.triangles[found]
    uv = hit.uv[found]
    at = np.take(values, np.take(faces, tri, axis=0))  # the scalar at the corners of each triangle hit
    interpolated = at[:, 0] * (1 - uv[:, 0] - uv[:, 1]) + at[:, 1] * uv[:, 0] + at[:, 2] * uv[:, 1]
    # the normals stay in the scene's frame: the light goes there instead
    normals = hit.normals[found]
    image = np.full(rows * cols, np.nan)
    shade = np.full(rows * cols, np.nan)
    image[ok] = interpolated
    shade[ok] = 0.35 + 0.65 * np.abs(normals @ (light @ rotation))
    extent = (float(left), float(left + cols * pixel_mm), float(top - rows * pixel_mm), float(top))
    return View(image.reshape(rows, cols), shade.reshape(rows, cols), extent)


def _longest_edge(vertices: FloatArray, faces: NDArray[np.int64]) -> float:
    """The longest edge (mm) of the triangles."""
    columns = np.ascontiguousarray(np.asarray(vertices, dtype=np.float64).T)  # a coordinate at a time
    longest = 0.0
    for i in range(3):
        start, end = faces[:, i], faces[:, (i + 1) % 3]
        squared = sum((column.take(start) - column.take(end)) ** 2 for column in columns)
        longest = max(longest, float(np.max(squared, initial=0.0)))
    return float(np.sqrt(longest))


def _near_vertices(
    left: float, top: float, pixel_mm: float, rows: int, cols: int, u: FloatArray, w: FloatArray, radius: float
) -> NDArray[np.bool_]:
    """``(rows * cols,)``: the pixels within ``radius`` pixels (along each axis) of a pixel holding a vertex
    at image-plane coordinates ``(u, w)`` (mm; column ``(u - left) / pixel_mm``, row ``(top - w) / pixel_mm``)."""
    col = np.clip(np.floor((u - left) / pixel_mm), 0, cols - 1).astype(np.int64)
    row = np.clip(np.floor((top - w) / pixel_mm), 0, rows - 1).astype(np.int64)
    marked = np.zeros((rows, cols), dtype=bool)
    marked[row, col] = True
    reach = int(np.ceil(radius))
    for axis in (0, 1):  # a square of side 2 reach + 1 around every marked pixel: a window sum along each axis
        size = marked.shape[axis]
        counts = np.cumsum(marked, axis=axis, dtype=np.int32)
        total = np.take(counts, np.minimum(np.arange(size) + reach, size - 1), axis=axis)
        below = np.arange(size) - reach - 1
        before = np.take(counts, np.maximum(below, 0), axis=axis)
        shape = [1, 1]
        shape[axis] = size
        before = np.where((below >= 0).reshape(shape), before, 0)
        marked = (total - before) > 0
    return marked.ravel()
