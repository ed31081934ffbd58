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
) -> View:
    """Ray-cast an orthographic image of a mesh looking along ``view_dir``.

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
    origins = np.empty((rows, cols, 3))
    down = corner + np.arange(rows, dtype=np.float64)[:, None, None] * step_down
    origins[...] = down + np.arange(cols, dtype=np.float64)[None, :, None] * step_right
    hit = scene.cast(origins.reshape(-1, 3), np.broadcast_to(forward, (rows * cols, 3)))
    ok = np.isfinite(hit.t)
    tri = hit.triangles[ok]
    uv = hit.uv[ok]
    at = np.take(values, np.take(faces, tri, axis=0))  # the scalar at the corners of each triangle hit
    interpolated = at[:, 0] * (1 - uv[:, 0] - uv[:, 1]) + at[:, 1] * uv[:, 0] + at[:, 2] * uv[:, 1]
    # the normals stay in the scene's frame: the light goes there instead
    normals = hit.normals[ok]
    image = np.full(rows * cols, np.nan)
    shade = np.full(rows * cols, np.nan)
    image[ok] = interpolated
    shade[ok] = 0.35 + 0.65 * np.abs(normals @ (light @ rotation))
    extent = (float(left), float(left + cols * pixel_mm), float(top - rows * pixel_mm), float(top))
    return View(image.reshape(rows, cols), shade.reshape(rows, cols), extent)
