"""A second bite-scan simulator: range images from a virtual scanner swept along the buccal side.

``samples.scan_bite`` casts parallel horizontal rays at a regular grid and adds noise
along the surface normal, cut to a rectangle. A real intraoral scanner differs in
every one of these: it is a camera a dozen millimetres from the teeth, tilted and
swept by hand, its depth noise lies along the ray, it returns nothing at grazing
incidence or from surfaces facing away, and the operator stops where they like
(an irregular border) and leaves holes. :func:`range_image_bite` makes bite scans
that way, so that the aligner is not tuned to one generator's cut.

:class:`ArchPath` gives any arch (generated or real) the buccal path the scanner
follows: the outline of the arches near the occlusal plane, by angle around a point
inside the U.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._anatomy import outline_polyline

FloatArray = NDArray[np.float64]
# A scanner returns nothing where the ray meets the surface more obliquely than this.
GRAZING_DEG = 78.0


class BuccalPath(Protocol):
    """A curve along the arch in the occlusion frame (z superior), by arc length ``s`` in mm."""

    @property
    def length(self) -> float:
        """Arc length of the whole curve, mm."""
        ...

    def frame(self, s: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Curve points ``(k, 3)`` (``z = 0``) and unit buccal directions ``(k, 3)`` at arc lengths ``s``."""
        ...


@dataclass(frozen=True)
class ArchPath:
    """The buccal outline of arches in the occlusion frame, as a smooth curve.

    Attributes
    ----------
    points : (k, 2) float
        Curve samples (x, y), from the left posterior end to the right (``x``
        to the patient's right, ``y`` anterior), on the buccal surface.
    arc : (k,) float
        Arc length at each sample, mm.
    """

    points: FloatArray
    arc: FloatArray

    @property
    def length(self) -> float:
        return float(self.arc[-1])

    @classmethod
    def from_points(cls, points: FloatArray, *, band_mm: float = 3.0, step_deg: float = 2.0) -> ArchPath:
        """The outline of the points within ``band_mm`` of ``z = 0``.

        :func:`mesial.aligner._anatomy.outline_polyline`: the curve the global step
        searches along.
        """
        xy = outline_polyline(points, band_mm=band_mm, bin_deg=step_deg)
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
        return cls(np.asarray(xy, dtype=np.float64), np.asarray(arc, dtype=np.float64))

    def frame(self, s: FloatArray) -> tuple[FloatArray, FloatArray]:
        s = np.asarray(s, dtype=np.float64)
        x = np.interp(s, self.arc, self.points[:, 0])
        y = np.interp(s, self.arc, self.points[:, 1])
        tangent = np.stack(
            [np.interp(s, self.arc, np.gradient(self.points[:, 0], self.arc)),
             np.interp(s, self.arc, np.gradient(self.points[:, 1], self.arc))], axis=-1
        )  # fmt: skip
        # left to right along a U opening backwards: the buccal side is to the left of the tangent
        buccal = np.stack([-tangent[:, 1], tangent[:, 0], np.zeros(len(s))], axis=-1)
        buccal /= np.linalg.norm(buccal, axis=-1, keepdims=True)
        return np.stack([x, y, np.zeros(len(s))], axis=-1), buccal

    def arc_at_x(self, x: float, side: float) -> float:
        """Arc length where the curve crosses ``x`` on the given side (``+1`` right, ``-1`` left)."""
        half = self.points[:, 0] > 0 if side > 0 else self.points[:, 0] < 0
        index = np.flatnonzero(half)
        nearest = index[int(np.argmin(np.abs(self.points[index, 0] - x)))]
        return float(self.arc[nearest])


def _smooth_noise(
    rng: np.random.Generator, t: FloatArray, amplitude: float, wavelengths: tuple[float, ...]
) -> FloatArray:
    """A smooth random function of ``t``: a few sines with random phases."""
    out = np.zeros_like(t)
    for wavelength in wavelengths:
        out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * t / wavelength + rng.uniform(0, 2 * np.pi))
    return np.asarray(amplitude * out / len(wavelengths), dtype=np.float64)


def range_image_bite(
    meshes: list[tuple[FloatArray, NDArray[np.int64]]],
    path: BuccalPath,
    s_range: tuple[float, float],
    rng: np.random.Generator,
    *,
    noise_mm: float = 0.02,
    spacing_mm: float = 0.15,
    standoff_mm: tuple[float, float] = (11.0, 17.0),
    fan_deg: float = 50.0,
    holes: int = 6,
    depth_mm: float = 8.0,
) -> tuple[FloatArray, NDArray[np.int64]]:
    """A buccal bite scan as a swept range image of the arches in occlusion.

    The scanner moves along ``path`` from ``s_range[0]`` to ``s_range[1]``, a
    varying distance (``standoff_mm``) outside the buccal surface, at a height
    and tilt that drift by hand (up to ±2 mm, ±20° up or down, ±10° along the
    arch); at each step it casts a vertical fan of rays (``fan_deg``) from one
    point. A ray keeps its hit only if the surface faces the scanner and the
    incidence is below ``GRAZING_DEG``; depth noise (``noise_mm``, growing with
    obliquity) lies along the ray. The covered band has a wandering top and
    bottom and ragged ends; ``holes`` elliptic holes are cut. The image is
    triangulated as a grid; triangles across depth jumps are dropped.

    Parameters
    ----------
    meshes : list of (vertices (n, 3), faces (m, 3))
        The arches in the occlusion frame (z superior), outward normals.
    path : BuccalPath
    s_range : (2,) float
        Arc lengths where the sweep starts and ends (mm).
    rng : numpy Generator
    depth_mm : float
        Depth of field beyond the farthest standoff: no hit is returned past it.

    Returns
    -------
    vertices (n, 3) float, faces (m, 3) int
        Normals facing the scanner.
    """
    from mesial.aligner._o3d import open3d

    o3d = open3d()
    scene = o3d.t.geometry.RaycastingScene()
    for vertices, faces in meshes:
        scene.add_triangles(vertices.astype(np.float32), faces.astype(np.uint32))
    s_line = np.arange(s_range[0], s_range[1], spacing_mm)
    point, buccal = path.frame(s_line)
    up = np.array([0.0, 0.0, 1.0])
    tangent = np.cross(up, buccal)
    standoff = np.mean(standoff_mm) + _smooth_noise(rng, s_line, np.ptp(standoff_mm) / 2, (23.0, 9.0))
    height = _smooth_noise(rng, s_line, 2.0, (31.0, 13.0))
    tilt = np.radians(_smooth_noise(rng, s_line, 20.0, (37.0, 17.0)))  # + looks down at the lower arch
    sway = np.radians(_smooth_noise(rng, s_line, 10.0, (29.0, 11.0)))
    origin = point + standoff[:, None] * buccal + height[:, None] * up
    # the fan spacing matches the sweep's at the teeth
    n_fan = round(np.radians(fan_deg) * np.mean(standoff_mm) / spacing_mm)
    elevation = np.radians(np.linspace(-fan_deg / 2, fan_deg / 2, n_fan))
    look = -buccal * np.cos(sway)[:, None] + tangent * np.sin(sway)[:, None]
    angle = tilt[:, None] - elevation[None, :]  # (s, e): positive looks down
    direction = look[:, None, :] * np.cos(angle)[..., None] - up * np.sin(angle)[..., None]
    direction += rng.normal(0.0, 0.05 * spacing_mm / np.mean(standoff_mm), direction.shape)
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    origins = np.broadcast_to(origin[:, None, :], direction.shape).reshape(-1, 3)
    rays = direction.reshape(-1, 3)
    hit = scene.cast_rays(o3d.core.Tensor(np.hstack([origins, rays]).astype(np.float32)))
    t_hit = hit["t_hit"].numpy().astype(np.float64)
    normals = hit["primitive_normals"].numpy().astype(np.float64)
    cos = -np.einsum("ij,ij->i", normals, rays)  # > 0: the surface faces the scanner
    # nothing beyond the depth of field (a ray through a gap between teeth does not see the far side)
    valid = np.isfinite(t_hit) & (cos > np.cos(np.radians(GRAZING_DEG))) & (t_hit < standoff_mm[1] + depth_mm)
    t_safe = np.where(valid, t_hit, 0.0)
    t_safe += rng.normal(0.0, 1.0, len(t_safe)) * noise_mm / np.maximum(cos, 0.3) ** 0.5
    points = origins + t_safe[:, None] * rays
    # irregular coverage: wandering top and bottom, ragged ends, elliptic holes (in the image's (s, z))
    s_grid = np.repeat(s_line, n_fan)
    z = points[:, 2]
    top = 5.5 + _smooth_noise(rng, s_grid, 2.0, (19.0, 7.0, 3.0))
    bottom = -5.5 + _smooth_noise(rng, s_grid, 2.0, (17.0, 6.0, 2.5))
    valid &= (z < top) & (z > bottom)
    start = s_range[0] + 1.5 + _smooth_noise(rng, z, 1.5, (5.0, 2.0))
    end = s_range[1] - 1.5 + _smooth_noise(rng, z, 1.5, (5.0, 2.0))
    valid &= (s_grid > start) & (s_grid < end)
    for _ in range(holes):
        s0, z0 = rng.uniform(*s_range), rng.uniform(-5.0, 5.0)
        a, b, phi = rng.uniform(0.5, 2.5), rng.uniform(0.3, 1.5), rng.uniform(0, np.pi)
        ds, dz = s_grid - s0, z - z0
        u, v = ds * np.cos(phi) + dz * np.sin(phi), -ds * np.sin(phi) + dz * np.cos(phi)
        valid &= (u / a) ** 2 + (v / b) ** 2 > 1.0
    i, j = np.meshgrid(np.arange(len(s_line) - 1), np.arange(n_fan - 1), indexing="ij")
    a0 = (i * n_fan + j).ravel()
    faces = np.concatenate([np.stack([a0, a0 + n_fan, a0 + 1], 1), np.stack([a0 + 1, a0 + n_fan, a0 + n_fan + 1], 1)])
    corners = points[faces]
    edge = np.max(np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=2), axis=1)
    faces = faces[valid[faces].all(axis=1) & (edge < 4 * spacing_mm)]
    used = np.zeros(len(points), dtype=bool)
    used[faces] = True
    remap = np.cumsum(used) - 1
    vertices, faces = points[used], remap[faces].astype(np.int64)
    # wind the triangles so that their normals face the scanner
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    mid = path.frame(np.array([float(np.mean(s_range))]))[1][0]
    if float((face_normals @ mid).sum()) < 0:
        faces = faces[:, ::-1].copy()
    return np.asarray(vertices, dtype=np.float64), faces
