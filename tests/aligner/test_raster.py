"""The views' z-buffer (``_raster.c``) sees what a ray cast along the view sees."""

from __future__ import annotations

import numpy as np
import pytest

from mesial.aligner._meshquery import MeshQuery
from mesial.aligner._raster import rasterise
from mesial.aligner.render import render_orthographic
from mesial.aligner.samples import build_arches
from mesial.aligner.transforms import transform_points


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_a_real_sized_view_is_what_the_ray_cast_sees() -> None:
    """A 130 000-vertex arch in a random pose, seen obliquely: each pixel sees the triangle the
    kernel's ray cast from its centre along the view hits (but, at most, a few pixels exactly on a
    shared edge, where either triangle is right), with the same values and shading."""
    upper, _, _ = build_arches(4, vertices=130_000)
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = _rotation(8), [12.0, -40.0, 7.0]
    vertices, faces = transform_points(upper.vertices, pose), upper.faces
    assert len(vertices) > 120_000
    values = np.random.default_rng(3).uniform(-1.0, 2.0, len(vertices))
    look, up = pose[:3, :3] @ np.array([0.2, -0.3, 1.0]), pose[:3, :3] @ np.array([0.0, 1.0, 0.0])
    view = render_orthographic(vertices, faces, values, look, up)

    # the reference: a ray from every pixel's centre along the view
    forward = look / np.linalg.norm(look)
    upward = up - forward * (up @ forward)
    upward /= np.linalg.norm(upward)
    right = np.cross(forward, upward)
    left, right_edge, _, top = view.extent
    rows, cols = view.image.shape
    pixel = (right_edge - left) / cols
    row, col = np.divmod(np.arange(rows * cols), cols)
    origins = (
        (left + (col + 0.5) * pixel)[:, None] * right
        + (top - (row + 0.5) * pixel)[:, None] * upward
        + (float((vertices @ forward).min()) - 5.0) * forward
    )
    hit = MeshQuery(vertices, faces).cast(origins, np.broadcast_to(forward, origins.shape))
    points = vertices @ np.column_stack([right, upward, forward])
    raster = rasterise(points, faces, left=left, top=top, pixel_mm=pixel, rows=rows, cols=cols)

    seen = hit.triangles >= 0
    assert 0.2 < seen.mean() < 0.8  # a U: many pixels see nothing
    other = raster.triangles != hit.triangles
    assert other.mean() < 1e-3  # only centres exactly on an edge (the same point of either triangle)
    both = seen & (raster.triangles >= 0)
    assert (seen != (raster.triangles >= 0)).mean() < 1e-3
    at = ~other & both
    assert at.sum() > 0.99 * seen.sum()
    assert np.allclose(raster.uv[at], hit.uv[at], rtol=0, atol=1e-9)
    start = float((vertices @ forward).min()) - 5.0
    assert np.allclose(raster.depth[at] - start, hit.t[at], rtol=0, atol=1e-9)
    corners = np.take(values, np.take(faces, hit.triangles[both], axis=0))
    uv = hit.uv[both]
    expected = corners[:, 0] * (1 - uv[:, 0] - uv[:, 1]) + corners[:, 1] * uv[:, 0] + corners[:, 2] * uv[:, 1]
    image = view.image.ravel()
    assert np.array_equal(~np.isnan(image), raster.triangles >= 0)
    # on a shared edge both triangles give the same point, so the same value
    assert np.allclose(image[both], expected, rtol=0, atol=1e-9)
    light = -forward + 0.5 * upward
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.abs(hit.normals[at] @ light)
    assert np.allclose(view.shade.ravel()[at], shade, rtol=0, atol=1e-9)


def test_a_near_triangle_hides_a_far_one_whatever_their_order() -> None:
    near = [[0.0, 0.0, 1.0], [4.0, 0.0, 1.0], [0.0, 4.0, 1.0]]
    far = [[-1.0, -1.0, 3.0], [6.0, -1.0, 3.0], [-1.0, 6.0, 3.0]]
    points = np.array(near + far)
    for faces in (np.array([[0, 1, 2], [3, 4, 5]]), np.array([[3, 4, 5], [0, 1, 2]])):
        raster = rasterise(points, faces, left=-2.0, top=8.0, pixel_mm=0.5, rows=20, cols=20)
        seen = raster.triangles.reshape(20, 20)
        near_index = int(np.flatnonzero((faces == 0).any(axis=1))[0])
        # pixel (row 14, column 5) has its centre at (0.75, 0.75): inside both, the near one wins
        assert seen[14, 5] == near_index and raster.depth[14 * 20 + 5] == pytest.approx(1.0)
        assert np.allclose(raster.normals[14 * 20 + 5], [0.0, 0.0, 1.0])
        # (row 14, column 17): centre (6.75, 0.75), outside both; (row 15, column 12): (4.25, 0.25), only the far one
        assert seen[14, 17] == -1 and np.isinf(raster.depth[14 * 20 + 17])
        assert seen[15, 12] == 1 - near_index and raster.depth[15 * 20 + 12] == pytest.approx(3.0)
    values = np.array([1.0, 1.0, 1.0, 5.0, 5.0, 5.0])
    view = render_orthographic(
        points, np.array([[3, 4, 5], [0, 1, 2]]), values, np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])
    )
    seen_values = view.image[~np.isnan(view.image)]
    assert set(np.unique(np.round(seen_values, 9))) == {1.0, 5.0}  # the far one shows only outside the near one
    assert (seen_values == 1.0).sum() > 0.3 * seen_values.size


def test_a_pixel_centre_on_an_edge_or_a_corner_is_seen() -> None:
    points = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    # centres at x, y in {0, 1, 2, 3}: (0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2) lie on the triangle
    raster = rasterise(points, [[0, 1, 2]], left=-0.5, top=3.5, pixel_mm=1.0, rows=4, cols=4)
    seen = (raster.triangles.reshape(4, 4) == 0)[::-1]  # rows from y = 0 upwards
    assert seen.tolist() == [
        [True, True, True, False],
        [True, True, False, False],
        [True, False, False, False],
        [False, False, False, False],
    ]


def test_edge_on_and_flat_triangles_are_not_seen() -> None:
    points = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 2.0], [1.0, 1.0, 0.0], [3.0, 3.0, 0.0]])
    raster = rasterise(points, [[0, 1, 2], [0, 3, 4]], left=-0.5, top=3.5, pixel_mm=0.25, rows=16, cols=16)
    assert (raster.triangles == -1).all()


def test_bad_input_is_refused() -> None:
    points = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    faces = np.array([[0, 1, 2]])
    grid = {"left": 0.0, "top": 1.0, "pixel_mm": 0.1, "rows": 10, "cols": 10}
    with pytest.raises(ValueError, match="vertex that does not exist"):
        rasterise(points, [[0, 1, 3]], **grid)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vertex that does not exist"):
        rasterise(points, [[0, -1, 2]], **grid)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        rasterise(np.array([[0.0, 0.0, np.nan], [1, 0, 0], [0, 1, 0]]), faces, **grid)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        rasterise(points[:, :2], faces, **grid)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(m, 3\)"):
        rasterise(points, [0, 1, 2], **grid)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integer"):
        rasterise(points, [[0.0, 1.0, 2.0]], **grid)  # type: ignore[arg-type]
    for bad in (0.0, -0.1, np.inf, np.nan):
        with pytest.raises(ValueError, match="pixel_mm"):
            rasterise(points, faces, **{**grid, "pixel_mm": bad})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="left and top"):
        rasterise(points, faces, **{**grid, "left": np.nan})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not be negative"):
        rasterise(points, faces, **{**grid, "rows": -1})  # type: ignore[arg-type]
    empty = rasterise(points, faces, **{**grid, "rows": 0})  # type: ignore[arg-type]
    assert empty.triangles.shape == (0,) and empty.uv.shape == (0, 2)
