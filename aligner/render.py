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
    scene : open3d RaycastingScene, optional
        Of these triangles in their own frame, when the caller has one (its BVH is reused).
    pose : (4, 4) float, optional
        Places the scene's triangles at ``vertices`` (``vertices = pose @ own``).

    Returns
    -------
    view : View
    """
    from mesial.aligner._o3d import open3d

    o3d = open3d()

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
    jj, ii = np.meshgrid(np.arange(cols), np.arange(rows))
    origin = (
        (left + (jj.ravel() + 0.5) * pixel_mm)[:, None] * right
        + (top - (ii.ravel() + 0.5) * pixel_mm)[:, None] * up
        + (depth.min() - 5.0) * forward
    )
    direction = np.broadcast_to(forward, origin.shape)
    rotation = np.eye(3)
    if scene is None:
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(vertices.astype(np.float32), faces.astype(np.uint32))
    elif pose is not None:  # the rays into the scene's own frame
        rotation = np.asarray(pose, dtype=np.float64)[:3, :3]
        origin = (origin - pose[:3, 3]) @ rotation
        direction = direction @ rotation
    rays = np.hstack([origin, direction]).astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t_hit = hit["t_hit"].numpy()
    ok = np.isfinite(t_hit)
    tri = hit["primitive_ids"].numpy().astype(np.int64)[ok]
    uv = hit["primitive_uvs"].numpy().astype(np.float64)[ok]
    corner = values[faces[tri]]
    interpolated = corner[:, 0] * (1 - uv[:, 0] - uv[:, 1]) + corner[:, 1] * uv[:, 0] + corner[:, 2] * uv[:, 1]
    normals = hit["primitive_normals"].numpy().astype(np.float64)[ok] @ rotation.T
    light = -forward + 0.5 * up
    light /= np.linalg.norm(light)
    image = np.full(rows * cols, np.nan)
    shade = np.full(rows * cols, np.nan)
    image[ok] = interpolated
    shade[ok] = 0.35 + 0.65 * np.abs(normals @ light)
    extent = (float(left), float(left + cols * pixel_mm), float(top - rows * pixel_mm), float(top))
    return View(image.reshape(rows, cols), shade.reshape(rows, cols), extent)
