"""``_meshquery``: the compiled BVH kernel against brute force over every triangle.

The reference is plain NumPy with a different method: for closest points, the projection onto
each triangle's plane when it falls inside, else the nearest of its three edges (Ericson's
Voronoi regions in the kernel); for rays, the plane's intersection and its barycentric
coordinates (Moller-Trumbore in the kernel).
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from mesial.aligner._meshquery import MeshQuery, default_threads

from .conftest import uv_sphere

FloatArray = NDArray[np.float64]


def bumpy_sheet(n: int = 12, seed: int = 0) -> tuple[FloatArray, NDArray[np.int64]]:
    """An uneven open sheet (jittered grid with relief) plus flat triangles: a zero-area one with
    three distinct collinear corners, one with a repeated corner, one with a single corner, and a sliver."""
    rng = np.random.default_rng(seed)
    line = np.linspace(0.0, 6.0, n)
    x, y = np.meshgrid(line, line, indexing="ij")
    x = x + rng.uniform(-0.15, 0.15, x.shape)
    y = y + rng.uniform(-0.15, 0.15, y.shape)
    z = 0.8 * np.sin(x) * np.cos(0.7 * y) + rng.uniform(-0.1, 0.1, x.shape)
    vertices = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    i, j = np.meshgrid(np.arange(n - 1), np.arange(n - 1), indexing="ij")
    a = (i * n + j).ravel()
    faces = np.concatenate([np.stack([a, a + n, a + 1], 1), np.stack([a + 1, a + n, a + n + 1], 1)])
    extra = np.array(
        [[1.0, 1.0, 3.0], [2.0, 1.5, 3.5], [3.0, 2.0, 4.0], [4.0, 4.0, -2.0], [5.0, 4.0, -2.0], [4.5, 4.0, -2.0 + 1e-9]]
    )
    base = len(vertices)
    vertices = np.vstack([vertices, extra])
    flat = np.array(
        [
            [base, base + 1, base + 2],  # collinear, distinct corners
            [base, base, base + 2],  # a repeated corner
            [base + 1, base + 1, base + 1],  # a single point
            [base + 3, base + 4, base + 5],  # a sliver 1e-9 mm high
        ]
    )
    return vertices, np.vstack([faces, flat]).astype(np.int64)


def _segment_closest(p: FloatArray, a: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Closest points of segments ``a b`` (m, 3) to points ``p`` (q, 1, 3): points (q, m, 3), parameters (q, m)."""
    d = b - a
    dd = np.einsum("ij,ij->i", d, d)
    s = np.einsum("qmk,mk->qm", p - a, d) / np.where(dd > 0, dd, 1.0)
    s = np.clip(np.where(dd > 0, s, 0.0), 0.0, 1.0)
    return a + s[..., None] * d, s


def brute_closest(vertices: FloatArray, faces: NDArray[np.int64], points: FloatArray) -> FloatArray:
    """Distance from each point to the nearest triangle, every triangle tried ``(q,)``."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    p = points[:, None, :]
    normal = np.cross(b - a, c - a)
    area2 = np.einsum("ij,ij->i", normal, normal)
    ok = area2 > 1e-18
    unit = normal / np.sqrt(np.where(ok, area2, 1.0))[:, None]
    height = np.einsum("qmk,mk->qm", p - a, unit)
    projected = p - height[..., None] * unit
    # barycentric coordinates of the projection from signed sub-areas
    inside = np.broadcast_to(ok[None, :], height.shape).copy()
    for start, end in ((a, b), (b, c), (c, a)):
        sub = np.einsum("qmk,mk->qm", np.cross(end - start, projected - start), unit)
        inside &= sub >= 0
    best = np.where(inside, np.abs(height), np.inf)
    for start, end in ((a, b), (b, c), (c, a)):
        on_edge, _ = _segment_closest(p, start, end)
        best = np.minimum(best, np.linalg.norm(p - on_edge, axis=2))
    return np.asarray(best.min(axis=1), dtype=np.float64)


def brute_cast(
    vertices: FloatArray, faces: NDArray[np.int64], origins: FloatArray, directions: FloatArray
) -> FloatArray:
    """Parameter of each ray's first hit (inf on a miss), every triangle tried; edges count."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    normal = np.cross(b - a, c - a)
    across = directions @ normal.T  # (r, m)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.einsum("mk,rmk->rm", normal, a[None] - origins[:, None]) / across
        hit = origins[:, None] + t[..., None] * directions[:, None]
        area2 = np.einsum("ij,ij->i", normal, normal)
        inside = np.ones_like(t, dtype=bool)
        for start, end in ((a, b), (b, c), (c, a)):
            sub = np.einsum("rmk,mk->rm", np.cross(end - start, hit - start), normal) / area2
            inside &= sub >= -1e-9
    good = inside & np.isfinite(t) & (t >= 0) & (np.abs(across) > 0) & (area2 > 0)
    return np.asarray(np.where(good, t, np.inf).min(axis=1), dtype=np.float64)


def _on_triangle(
    vertices: FloatArray, faces: NDArray[np.int64], triangles: NDArray[np.int64], uv: FloatArray
) -> FloatArray:
    a, b, c = (vertices[faces[triangles, k]] for k in range(3))
    return np.asarray(a + uv[:, :1] * (b - a) + uv[:, 1:] * (c - a), dtype=np.float64)


def _queries(vertices: FloatArray, faces: NDArray[np.int64], rng: np.random.Generator) -> FloatArray:
    """Points on corners, on edges, on faces, near the surface and far from it."""
    corners = vertices[rng.integers(0, len(vertices), 60)]
    tri = faces[rng.integers(0, len(faces), 60)]
    s = rng.uniform(0, 1, (60, 1))
    on_edges = vertices[tri[:, 0]] * s + vertices[tri[:, 1]] * (1 - s)
    w = rng.dirichlet([1, 1, 1], 60)
    on_faces = np.einsum("qk,qkd->qd", w, vertices[tri])
    near = on_faces + rng.normal(scale=0.05, size=on_faces.shape)
    off = on_faces + rng.normal(scale=1.0, size=on_faces.shape)
    far = rng.uniform(-30, 30, (40, 3))
    return np.vstack([corners, on_edges, on_faces, near, off, far])


def test_closest_points_match_brute_force_on_an_uneven_sheet_with_flat_triangles() -> None:
    vertices, faces = bumpy_sheet()
    rng = np.random.default_rng(1)
    points = np.vstack([_queries(vertices, faces, rng), vertices[-6:] + rng.normal(scale=0.3, size=(6, 3))])
    answer = MeshQuery(vertices, faces).closest(points)
    expected = brute_closest(vertices, faces, points)
    np.testing.assert_allclose(answer.distances, expected, rtol=0, atol=1e-9)
    # the point is where the triangle and (u, v) say, at the distance given
    assert ((answer.uv >= -1e-12) & (answer.uv.sum(axis=1, keepdims=True) <= 1 + 1e-12)).all()
    np.testing.assert_allclose(_on_triangle(vertices, faces, answer.triangles, answer.uv), answer.points, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(points - answer.points, axis=1), answer.distances, atol=1e-9)
    np.testing.assert_allclose(answer.weights.sum(axis=1), 1.0)
    # a point of the surface is its own closest point
    on = points[60:180]
    np.testing.assert_allclose(answer.points[60:180], on, atol=1e-9)


def test_a_bounded_search_answers_as_the_full_one_within_the_bound_and_nothing_beyond() -> None:
    vertices, faces = uv_sphere(5.0, np.zeros(3), rings=24, segments=48)
    rng = np.random.default_rng(4)
    directions = rng.normal(size=(3000, 3))
    points = directions / np.linalg.norm(directions, axis=1, keepdims=True) * rng.uniform(3.0, 8.0, (3000, 1))
    mesh = MeshQuery(vertices, faces)
    full = mesh.closest(points)
    for within in (0.05, 0.5, 1.5, 10.0):
        bounded = mesh.closest(points, within=within, threads=2)
        inside = full.distances < within
        assert 0 < inside.sum() and (within > 3 or inside.sum() < len(points))
        # within the bound the same triangle, point and distance, bit for bit
        np.testing.assert_array_equal(bounded.triangles[inside], full.triangles[inside])
        np.testing.assert_array_equal(bounded.points[inside], full.points[inside])
        np.testing.assert_array_equal(bounded.distances[inside], full.distances[inside])
        np.testing.assert_array_equal(bounded.normals[inside], full.normals[inside])
        # beyond it nothing: triangle -1, distance inf, NaN point, zero normal
        assert (bounded.triangles[~inside] == -1).all() and np.isinf(bounded.distances[~inside]).all()
        assert np.isnan(bounded.points[~inside]).all() and (bounded.normals[~inside] == 0).all()
    for within in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="within must be a positive distance"):
            mesh.closest(points[:3], within=within)


def test_normals_are_the_unit_face_normals_and_zero_on_flat_triangles() -> None:
    vertices, faces = bumpy_sheet()
    mesh = MeshQuery(vertices, faces)
    centres = vertices[faces].mean(axis=1)
    answer = mesh.closest(centres)
    a, b, c = (vertices[faces[answer.triangles, k]] for k in range(3))
    cross = np.cross(b - a, c - a)
    length = np.linalg.norm(cross, axis=1)
    flat = length == 0  # the sliver 1e-9 mm high has a plane, so a normal
    np.testing.assert_allclose(answer.normals[~flat], cross[~flat] / length[~flat, None], atol=1e-12)
    assert (np.linalg.norm(answer.normals[flat], axis=1) == 0).all()


def test_closest_points_on_a_sphere_match_brute_force_and_see_outward_normals() -> None:
    vertices, faces = uv_sphere(10.0, (1.0, 2.0, 3.0), rings=20, segments=40)
    rng = np.random.default_rng(2)
    directions = rng.normal(size=(400, 3))
    directions /= np.linalg.norm(directions, axis=1)[:, None]
    points = np.array([1.0, 2.0, 3.0]) + directions * rng.uniform(8.0, 12.0, (400, 1))
    answer = MeshQuery(vertices, faces).closest(points)
    np.testing.assert_allclose(answer.distances, brute_closest(vertices, faces, points), atol=1e-9)
    # outward normals: the winding is kept (a point outside sees the normal pointing at it)
    outside = np.linalg.norm(points - [1.0, 2.0, 3.0], axis=1) > 10.5
    facing = np.einsum("ij,ij->i", points - answer.points, answer.normals)
    assert (facing[outside] > 0).all()


def test_rays_match_brute_force() -> None:
    sphere_v, sphere_f = uv_sphere(10.0, (0.0, 0.0, 0.0), rings=20, segments=40)
    sheet_v, sheet_f = bumpy_sheet()
    vertices = np.vstack([sphere_v, sheet_v + np.array([-3.0, -3.0, 12.0])])
    faces = np.vstack([sphere_f, sheet_f + len(sphere_v)])  # the sheet over the sphere, its flat triangles last
    rng = np.random.default_rng(3)
    origins = rng.uniform(-25, 25, (500, 3))
    # half aimed at points inside triangles (hits), half anywhere (many misses)
    tri = faces[rng.integers(0, len(faces) - 4, 250)]  # not the four flat ones (a line: no ray hits it)
    targets = np.einsum("qk,qkd->qd", rng.dirichlet([2, 2, 2], 250), vertices[tri])
    directions = np.vstack([targets - origins[:250], rng.normal(size=(250, 3))])
    scale = rng.uniform(0.5, 2.0, 500)
    directions *= scale[:, None]  # t is in lengths of the direction
    hits = MeshQuery(vertices, faces).cast(origins, directions)
    expected = brute_cast(vertices, faces, origins, directions)
    assert np.array_equal(np.isfinite(hits.t), np.isfinite(expected))
    assert np.isfinite(hits.t[:250]).all() and (hits.t[:250] * scale[:250] <= 1 + 1e-9).all()  # at the target or before
    np.testing.assert_allclose(hits.t[np.isfinite(expected)], expected[np.isfinite(expected)], rtol=1e-9, atol=1e-9)
    hit = np.isfinite(hits.t)
    at = origins[hit] + hits.t[hit, None] * directions[hit]
    np.testing.assert_allclose(_on_triangle(vertices, faces, hits.triangles[hit], hits.uv[hit]), at, atol=1e-9)
    assert (hits.triangles[~hit] == -1).all() and (hits.normals[~hit] == 0).all() and (hits.uv[~hit] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(hits.normals[hit], axis=1), 1.0)


def test_rays_through_shared_edges_and_corners_hit_and_rays_beside_the_mesh_miss() -> None:
    vertices, faces = uv_sphere(10.0, (0.0, 0.0, 0.0), rings=20, segments=40)
    mesh = MeshQuery(vertices, faces)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    midpoints = vertices[edges].mean(axis=1)
    # from the centre out through every edge's midpoint and every corner: the closed sphere has no gap
    for through in (midpoints, vertices):
        hits = mesh.cast(np.zeros_like(through), through)
        assert np.isfinite(hits.t).all()
        np.testing.assert_allclose(hits.t, 1.0, atol=1e-9)
    # from outside along the axes through the poles and beside the sphere
    origins = np.array([[0, 0, 30.0], [0, 0, -30.0], [10.5, 0, 30.0], [0, 0, 30.0], [0, 0, 30.0]])
    directions = np.array([[0, 0, -1.0], [0, 0, 1.0], [0, 0, -1.0], [0, 0, 1.0], [0, 0, 0.0]])
    hits = mesh.cast(origins, directions)
    np.testing.assert_allclose(hits.t[:2], 20.0, atol=1e-9)
    assert np.isinf(hits.t[2:]).all() and (hits.triangles[2:] == -1).all()  # beside, away, no direction


def test_answers_do_not_depend_on_the_thread_count_or_the_query_order() -> None:
    vertices, faces = uv_sphere(10.0, (0.0, 0.0, 0.0), rings=60, segments=120)
    rng = np.random.default_rng(4)
    points = rng.normal(size=(9000, 3)) * 7.0  # more than the kernel's sorting threshold
    directions = rng.normal(size=(9000, 3))
    mesh = MeshQuery(vertices, faces)
    reference = mesh.closest(points, threads=1)
    rays = mesh.cast(points, directions, threads=1)
    for threads in (2, 3, 8):
        other = mesh.closest(points, threads=threads)
        for name in ("points", "triangles", "uv", "normals", "distances"):
            assert np.array_equal(getattr(other, name), getattr(reference, name)), (threads, name)
        other_rays = mesh.cast(points, directions, threads=threads)
        for name in ("t", "triangles", "uv", "normals"):
            assert np.array_equal(getattr(other_rays, name), getattr(rays, name)), (threads, name)
    shuffle = rng.permutation(len(points))
    again = mesh.closest(points[shuffle], threads=2)
    assert np.array_equal(again.points, reference.points[shuffle])
    assert np.array_equal(again.triangles, reference.triangles[shuffle])
    few = mesh.closest(points[:5])  # below the sorting threshold, one thread
    assert np.array_equal(few.points, reference.points[:5])
    assert MeshQuery(vertices, faces).closest(np.zeros((0, 3))).points.shape == (0, 3)
    assert 1 <= default_threads() <= 2


def test_a_mesh_the_surface_area_heuristic_splits_one_triangle_at_a_time_stays_shallow() -> None:
    # triangles of geometrically growing size and position: splits cut off a few of the largest at a time
    count = 1000
    x = 1.2 ** np.arange(count)
    vertices = np.concatenate(
        [np.stack([x, 0 * x, 0 * x], 1), np.stack([2 * x, 0 * x, 0 * x], 1), np.stack([x, x, 1 + 0 * x], 1)]
    )
    faces = np.stack([np.arange(count), count + np.arange(count), 2 * count + np.arange(count)], 1)
    mesh = MeshQuery(vertices, faces)
    assert mesh.depth <= 48 + int(np.ceil(np.log2(count)))  # halving past depth 48 (without: 89)
    # near the first 300 (the brute force squares coordinates: the largest triangles would overflow it;
    # those past the 400th are farther than 1e30 mm from these points)
    points = np.stack([x[:300:15] * 1.3, x[:300:15] * 0.2, x[:300:15] * 0.1 - 2], 1)
    near = faces[:400]
    answer = mesh.closest(points)
    np.testing.assert_allclose(answer.distances, brute_closest(vertices, near, points), rtol=1e-12)
    assert (answer.triangles < 400).all()


@pytest.mark.parametrize(
    ("vertices", "faces", "message"),
    [
        (np.zeros((4, 2)), [[0, 1, 2]], r"vertices must be \(n, 3\)"),
        (np.zeros(12), [[0, 1, 2]], r"vertices must be \(n, 3\)"),
        (np.zeros((4, 3)), [[0, 1, 2, 3]], r"faces must be \(m, 3\)"),
        (np.zeros((4, 3)), [0, 1, 2], r"faces must be \(m, 3\)"),
        (np.zeros((4, 3)), np.zeros((0, 3), dtype=np.int64), "at least one triangle"),
        (np.zeros((4, 3)), [[0, 1, 4]], "a face refers to a vertex that does not exist"),
        (np.zeros((4, 3)), [[0, -1, 2]], "a face refers to a vertex that does not exist"),
        (np.zeros((4, 3)), [[0.0, 1.0, 2.0]], "integer vertex indices"),
        (np.array([[0, 0, 0], [1, 0, 0], [0, np.nan, 0]]), [[0, 1, 2]], "must be finite"),
    ],
)
def test_a_bad_mesh_is_a_value_error(vertices: object, faces: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MeshQuery(vertices, faces)


def test_bad_queries_are_value_errors() -> None:
    mesh = MeshQuery(np.eye(3), [[0, 1, 2]])
    with pytest.raises(ValueError, match=r"points must be \(n, 3\)"):
        mesh.closest(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="points must be finite"):
        mesh.closest([[0.0, np.inf, 0.0]])
    with pytest.raises(ValueError, match="2 origins and 3 directions"):
        mesh.cast(np.zeros((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="directions must be finite"):
        mesh.cast(np.zeros((1, 3)), [[np.nan, 0.0, 1.0]])
    for threads in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            mesh.closest(np.zeros((1, 3)), threads=threads)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        MeshQuery(np.eye(3), [[0, 1, 2]], threads=0)
    # the mesh is still usable
    assert mesh.closest([[0.0, 0.0, 0.0]]).distances[0] == pytest.approx(1 / np.sqrt(3))


def test_surface_near_finds_every_point_within_the_gate_even_far_from_any_vertex() -> None:
    """``SurfaceTarget.near`` (the exact matching of the fine step) on a placed surface: exact closest points
    for every point within the gate, inf beyond it. The sheet has two large triangles beside fine ones, so a
    point over their middle is within the gate of the surface but several typical edges from every vertex."""
    from mesial.aligner._icp import SurfaceTarget
    from mesial.aligner.transforms import invert, transform_points

    vertices, faces = bumpy_sheet(n=40)
    base = len(vertices)
    big = np.array([[10.0, 0.0, 0.0], [30.0, 0.0, 0.0], [10.0, 20.0, 0.0], [30.0, 20.0, 0.0]])
    vertices = np.vstack([vertices, big])
    faces = np.vstack([faces, [[base, base + 1, base + 2], [base + 1, base + 3, base + 2]]])
    rng = np.random.default_rng(7)
    pose = np.eye(4)
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    pose[:3, :3] = rotation * np.sign(np.linalg.det(rotation))  # a proper rotation
    pose[:3, 3] = [3.0, -2.0, 5.0]
    surface = SurfaceTarget(vertices, faces).placed(pose)
    local = np.vstack([_queries(vertices, faces, rng), [[20.0, 7.0, 0.3], [18.0, 9.0, -0.45], [20.0, 7.0, 0.7]]])
    points = transform_points(local, pose)
    gate = 0.5
    closest, normals, distance = surface.near(points, gate)
    expected = brute_closest(vertices, faces, local)
    within = expected <= gate
    assert within[-3:].tolist() == [True, True, False]
    np.testing.assert_array_equal(np.isfinite(distance), within)
    np.testing.assert_allclose(distance[within], expected[within], rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(points - closest, axis=1)[within], expected[within], atol=1e-9)
    # the closest points lie on the surface as placed, their normals are unit; nothing is set beyond the gate
    back = transform_points(closest[within], invert(pose))
    np.testing.assert_allclose(brute_closest(vertices, faces, back), 0.0, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(normals[within], axis=1)[expected[within] > 1e-6], 1.0)
    assert (closest[~within] == 0).all() and (normals[~within] == 0).all()


def _same_answers(a: object, b: object, rows: NDArray[np.bool_] | slice = slice(None)) -> None:
    for name in ("points", "triangles", "uv", "normals", "distances"):
        np.testing.assert_array_equal(getattr(a, name)[rows], getattr(b, name)[rows])


def test_hints_and_bounds_of_each_point_narrow_the_search_not_the_answers() -> None:
    """A triangle per point as a hint (any triangle: near it, far from it, the answer itself, none) never
    changes an answer, bit for bit, ties between triangles at the same distance included (points on shared
    corners and edges); a bound per point answers as ``within`` does, point by point."""
    vertices, faces = bumpy_sheet(n=30)
    rng = np.random.default_rng(11)
    points = np.vstack([_queries(vertices, faces, rng), vertices[:200]])  # corners: many triangles tie
    mesh = MeshQuery(vertices, faces)
    full = mesh.closest(points, within=2.0)
    for hints in (
        full.triangles,  # the answer itself (distance exactly the bound's: still found)
        rng.integers(-1, len(faces), len(points)),  # anywhere, or none
        np.full(len(points), len(faces) - 1),  # a flat triangle
        np.roll(np.where(full.triangles >= 0, full.triangles, 0), 1),  # a neighbour's
    ):
        _same_answers(mesh.closest(points, within=2.0, hints=hints, threads=2), full)
    bounds = rng.uniform(0.01, 1.5, len(points))
    bounds[:10] = np.inf
    bounded = mesh.closest(points, within=2.0, bounds=bounds, hints=full.triangles)
    inside = full.distances < np.minimum(bounds, 2.0)
    assert inside.any() and not inside.all()
    _same_answers(bounded, full, inside)
    assert (bounded.triangles[~inside] == -1).all() and np.isinf(bounded.distances[~inside]).all()
    for bad, message in (
        ({"bounds": np.zeros(len(points))}, "bounds must be positive"),
        ({"bounds": np.full(len(points), np.nan)}, "bounds must be positive"),
        ({"bounds": np.ones(3)}, "bounds must have shape"),
        ({"hints": np.full(len(points), len(faces))}, "hints must be triangle indices"),
        ({"hints": np.zeros((len(points), 2), dtype=np.int64)}, "hints must have shape"),
    ):
        with pytest.raises(ValueError, match=message):
            mesh.closest(points, **bad)


def test_the_fine_steps_matching_with_hints_is_the_plain_matching() -> None:
    """``_icp._match`` with a memo (each point's triangles of the call before as hints, the lower arch
    searched only as far as the upper's match) gives the plain matching's closest points, normals,
    distances and arch bit for bit, call after call as the poses move."""
    from mesial.aligner._icp import SurfaceTarget, _match
    from mesial.aligner.transforms import exp_se3

    vertices, faces = bumpy_sheet(n=40)
    upper = SurfaceTarget(vertices, faces)
    # the lower arch: the same sheet turned over and 0.4 mm below, so both are near many points
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    flip[:3, 3] = [0.0, 6.0, -0.4]
    lower = SurfaceTarget(vertices, faces)
    rng = np.random.default_rng(5)
    source = _queries(vertices, faces, rng)[:300] + rng.normal(scale=0.1, size=(300, 3))
    memo: dict[str, NDArray[np.int64]] = {}
    pose, lower_pose = np.eye(4), flip
    for _ in range(4):
        for gate in (0.5, 0.15):
            plain = _match(source, pose, upper, lower, lower_pose, gate)
            hinted = _match(source, pose, upper, lower, lower_pose, gate, memo)
            for a, b in zip(plain, hinted, strict=True):
                np.testing.assert_array_equal(a, b)
            assert 0 < plain[5].sum() < len(source)  # both arches match some points
        pose = exp_se3(rng.normal(scale=0.01, size=6)) @ pose
        lower_pose = exp_se3(rng.normal(scale=0.01, size=6)) @ lower_pose
    assert set(memo) == {"upper", "lower"}
