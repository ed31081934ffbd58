from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mesial.aligner._icp import SurfaceTarget
from mesial.aligner.occlusion import arch_contacts, area_below, count_patches, optimise_bite
from mesial.aligner.params import OcclusionParams
from mesial.aligner.transforms import transform_points
from mesial.aligner.validate import Scan

from .conftest import grid_plane, uv_sphere


@pytest.mark.parametrize("gap", [0.05, 0.3, -0.04])
def test_plane_against_plane_at_known_gap(gap):
    lower_v, lower_f = grid_plane(10.0, 0.25, z=0.0, up=True)
    upper_v, upper_f = grid_plane(8.0, 0.25, z=gap, up=False)
    result = arch_contacts(upper_v, upper_f, SurfaceTarget(lower_v, lower_f), threshold_mm=0.1)
    assert np.allclose(result.distance, gap, atol=1e-5)
    expected = 64.0 if gap < 0.1 else 0.0
    assert result.contact_area_mm2 == pytest.approx(expected, abs=1e-6)
    assert result.max_penetration_mm == pytest.approx(max(0.0, -gap), abs=1e-5)
    assert result.patches == (1 if gap < 0.1 else 0)


def test_sphere_on_plane_contact_area():
    radius, threshold = 5.0, 0.1
    sphere_v, sphere_f = uv_sphere(radius, (0, 0, radius))
    plane_v, plane_f = grid_plane(16.0, 0.05, up=True)
    on_sphere = arch_contacts(sphere_v, sphere_f, SurfaceTarget(plane_v, plane_f), threshold)
    # spherical cap of height t: 2 pi R t
    assert on_sphere.contact_area_mm2 == pytest.approx(2 * np.pi * radius * threshold, rel=0.03)
    on_plane = arch_contacts(plane_v, plane_f, SurfaceTarget(sphere_v, sphere_f), threshold)
    # disc where sqrt(r^2 + R^2) - R < t: pi (2 R t + t^2)
    assert on_plane.contact_area_mm2 == pytest.approx(np.pi * (2 * radius * threshold + threshold**2), rel=0.03)
    assert on_plane.patches == 1
    assert on_plane.max_penetration_mm == pytest.approx(0.0, abs=1e-4)


def test_area_below_is_exact_for_linear_fields():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=float)
    faces = np.array([[0, 1, 2]])
    values = vertices[:, 0]  # f = x over the unit right triangle
    assert area_below(vertices, faces, values, 0.5)[0] == pytest.approx(0.5 - 0.5 * 0.5**2)
    assert area_below(vertices, faces, -values, -0.5)[0] == pytest.approx(0.5 * 0.5**2)


def test_patches_counted_separately():
    vertices, faces = grid_plane(10.0, 0.5)
    mask = (np.abs(vertices[:, 0] + 3) < 1) | (np.abs(vertices[:, 0] - 3) < 1)
    assert count_patches(faces, mask) == 2


def test_bite_optimisation_removes_penetration():
    upper_v, upper_f = grid_plane(10.0, 0.25, z=0.0, up=False)  # occlusal surface facing down
    sphere_v, sphere_f = uv_sphere(4.0, (0, 0, -4.0 + 0.08))  # 0.08 mm bite-through
    upper = SurfaceTarget(upper_v, upper_f)
    params = OcclusionParams()
    before = arch_contacts(sphere_v, sphere_f, upper, params.contact_threshold_mm)
    assert before.max_penetration_mm == pytest.approx(0.08, abs=2e-3)
    correction = optimise_bite(upper, sphere_v, params)
    after = arch_contacts(transform_points(sphere_v, correction), sphere_f, upper, params.contact_threshold_mm)
    assert after.max_penetration_mm <= params.penetration_tolerance_mm + 2e-3
    assert after.contact_area_mm2 > 0.5  # still in contact
    assert np.linalg.norm(correction[:3, 3]) < 0.15


@pytest.mark.parametrize("depth", [0.3, 0.7, 1.2])
def test_deep_bite_through_is_measured_not_read_as_a_gap(depth):
    # a misregistered bite often sinks a cusp 0.5-1 mm into the antagonist: the map must show it red
    plane_v, plane_f = grid_plane(16.0, 0.2, up=True)
    sphere_v, sphere_f = uv_sphere(5.0, (0, 0, 5.0 - depth))
    result = arch_contacts(sphere_v, sphere_f, SurfaceTarget(plane_v, plane_f), threshold_mm=0.1)
    assert result.max_penetration_mm == pytest.approx(depth, abs=2e-3)
    # every vertex below the plane is reported as a penetration of its own depth
    below = sphere_v[:, 2] < 0
    assert np.allclose(result.distance[below], sphere_v[below, 2], atol=2e-3)
    # spherical cap below the plane: 2 pi R h
    assert result.penetration_area_mm2 == pytest.approx(2 * np.pi * 5.0 * depth, rel=0.03)


@pytest.mark.parametrize("gap", [0.6, 0.9, 1.3])
def test_distances_across_the_colour_scale_are_close_to_exact(gap):
    # vertices off the antagonist's grid (half a step across): the nearest vertex is never straight below
    lower_v, lower_f = grid_plane(10.0, 0.3, z=0.0, up=True)
    upper_v, upper_f = grid_plane(8.0, 0.3, z=gap, up=False)
    upper_v[:, :2] += 0.15
    result = arch_contacts(upper_v, upper_f, SurfaceTarget(lower_v, lower_f), threshold_mm=0.1)
    assert result.contact_area_mm2 == 0.0
    assert np.all(result.distance >= gap - 1e-6)  # an upper bound: never a false contact
    assert np.all(result.distance < gap + 0.04)


def _ridge(half_angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """A roof-shaped surface whose ridge (along y, at z = 0) has the given half opening angle; normals up."""
    slope = 1.0 / np.tan(np.radians(half_angle_deg))
    x = np.linspace(-2.0, 2.0, 41)
    y = np.linspace(-3.0, 3.0, 61)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    vertices = np.stack([xx.ravel(), yy.ravel(), -slope * np.abs(xx.ravel())], axis=1)
    n = len(y)
    i, j = np.meshgrid(np.arange(len(x) - 1), np.arange(n - 1), indexing="ij")
    a = (i * n + j).ravel()
    faces = np.concatenate([np.stack([a, a + n, a + 1], 1), np.stack([a + 1, a + n, a + n + 1], 1)])
    return vertices, faces.astype(np.int64)


@pytest.mark.parametrize("half_angle_deg", [15.0, 30.0, 60.0])
def test_side_at_a_sharp_ridge_follows_the_pseudonormal(half_angle_deg):
    # a cusp tip: the points whose closest point is the ridge line lie anywhere between the two faces'
    # normals; the normal of whichever face the query returns would put some of them inside
    vertices, faces = _ridge(half_angle_deg)
    surface = SurfaceTarget(vertices, faces)
    face_normal = np.radians(90.0 - half_angle_deg)  # each face's normal, from the vertical
    sweep = np.linspace(-face_normal, face_normal, 25)
    outside = np.stack([0.3 * np.sin(sweep), np.zeros_like(sweep), 0.3 * np.cos(sweep)], axis=1)
    distance, _, _ = surface.exact_signed(outside)
    assert np.allclose(distance, 0.3, atol=1e-5)
    # below each face, straight in along its normal: inside, as deep as placed
    depth = 0.05
    sides = np.array([[1.0, 0, 0], [-1.0, 0, 0]])
    on_face = sides * 0.5 + np.array([[0, 0, -0.5 / np.tan(np.radians(half_angle_deg))]] * 2)
    normals = np.stack([sides[:, 0] * np.cos(np.radians(half_angle_deg)), [0, 0],
                        [np.sin(np.radians(half_angle_deg))] * 2], axis=1)  # fmt: skip
    distance, _, _ = surface.exact_signed(on_face - depth * normals)
    assert np.allclose(distance, -depth, atol=1e-5)


def test_past_an_open_border_is_outside():
    plane_v, plane_f = grid_plane(4.0, 0.25, up=True)
    surface = SurfaceTarget(plane_v, plane_f)
    beyond = np.array([[2.5, 0.0, -0.2], [0.0, -2.4, -0.05], [2.3, 2.3, -0.3]])
    distance, _, _ = surface.exact_signed(beyond)
    assert np.all(distance > 0)
    behind = np.array([[1.0, 1.0, -0.2], [-1.9, 0.0, -0.05]])
    distance, _, _ = surface.exact_signed(behind)
    assert np.allclose(distance, [-0.2, -0.05], atol=1e-6)


def test_bite_optimisation_stays_within_its_limits():
    # a 1 mm bite-through needs more than the allowed correction: the result keeps to the bounds
    upper_v, upper_f = grid_plane(10.0, 0.25, z=0.0, up=False)
    sphere_v, _ = uv_sphere(4.0, (0, 0, -4.0 + 1.0))
    params = OcclusionParams(max_correction_mm=0.3)
    correction = optimise_bite(SurfaceTarget(upper_v, upper_f), sphere_v, params)
    assert np.linalg.norm(correction[:3, 3]) <= params.max_correction_mm + 1e-9


@pytest.mark.parametrize("shape", ["box", "icosahedron"])
def test_side_is_right_around_every_face_edge_and_corner(shape):
    # coarse closed convex solids: most closest points near them fall on an edge or a corner
    import trimesh

    solid = trimesh.creation.box(extents=(4.0, 3.0, 2.0)) if shape == "box" else trimesh.creation.icosahedron()
    vertices, faces = np.asarray(solid.vertices, dtype=float) * 2.0, np.asarray(solid.faces, dtype=np.int64)
    surface = SurfaceTarget(vertices, faces)
    normals = np.asarray(solid.face_normals, dtype=float)
    offsets = np.einsum("ij,ij->i", normals, vertices[faces[:, 0]])
    rng = np.random.default_rng(5)
    points = rng.uniform(-5.0, 5.0, (20_000, 3))
    # convex: inside exactly when behind every face plane, and then as deep as the nearest plane
    planes = points @ normals.T - offsets
    inside = (planes < 0).all(axis=1)
    distance, closest, _ = surface.exact_signed(points)
    gap = np.linalg.norm(points - closest, axis=1)
    counted = ~inside | (gap < SurfaceTarget.max_penetration_mm)
    assert counted.sum() > 15_000
    assert np.array_equal(distance[counted] < 0, inside[counted])
    assert np.allclose(distance[inside & counted], planes[inside & counted].max(axis=1), atol=1e-4)


def test_triangles_with_a_corner_and_lengths_are_numpys_answers():
    from mesial.aligner.occlusion import with_a_corner
    from mesial.aligner.transforms import cross_rows, lengths

    rng = np.random.default_rng(2)
    faces = rng.integers(0, 1000, size=(5000, 3))
    mask = rng.random(1000) < 0.1
    assert np.array_equal(with_a_corner(mask, faces), mask[faces].any(axis=1))
    vectors = rng.normal(size=(5000, 3)) * 7.0
    assert np.array_equal(lengths(vectors), np.linalg.norm(vectors, axis=1))  # bit for bit
    others = rng.normal(size=(5000, 3))
    assert np.array_equal(cross_rows(vectors, others), np.cross(vectors, others))


def _exact_distances(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance of each point to the nearest triangle, every triangle tested (Ericson's closest point on
    a triangle, float64): the reference the fast path is held to."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    ab, ac = b - a, c - a
    out = np.empty(len(points))
    for i, p in enumerate(points):
        ap, bp, cp = p - a, p - b, p - c
        d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
        d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
        d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
        va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
        with np.errstate(divide="ignore", invalid="ignore"):
            regions = [
                (d1 <= 0) & (d2 <= 0),
                (d3 >= 0) & (d4 <= d3),
                (vc <= 0) & (d1 >= 0) & (d3 <= 0),
                (d6 >= 0) & (d5 <= d6),
                (vb <= 0) & (d2 >= 0) & (d6 <= 0),
                (va <= 0) & (d4 >= d3) & (d5 >= d6),
            ]
            on_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
            s = np.select(regions, [0, 1, d1 / (d1 - d3), 0, 0, 1 - on_bc], vb / (va + vb + vc))
            t = np.select(regions, [0, 0, 0, 1, d2 / (d2 - d6), on_bc], vc / (va + vb + vc))
        closest = a + s[:, None] * ab + t[:, None] * ac
        out[i] = np.sqrt(((p - closest) ** 2).sum(1).min())
    return out


def test_signed_distances_of_a_placed_arch_match_the_exact_reference(small_case):
    """The occlusal analysis' distances (a surface placed by a pose, the points taken into its frame once)
    against every triangle tested: exact within the exact band and behind the surface, the nearest vertex's
    distance (an upper bound) up to the near band, at least the near band beyond; the same in the mesh's
    own frame."""
    rng = np.random.default_rng(7)
    arch = small_case.lower
    own = SurfaceTarget(arch.vertices, arch.faces)
    pick = rng.choice(len(arch.vertices), 400, replace=False)
    normals = own._index.normals[pick]
    points_own = arch.vertices[pick] + rng.uniform(-1.2, 2.0, (400, 1)) * normals + rng.normal(0, 0.05, (400, 3))
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    pose = np.eye(4)
    pose[:3, :3] = rotation * np.sign(np.linalg.det(rotation))  # a proper rotation
    pose[:3, 3] = rng.normal(0, 40.0, 3)
    placed = own.placed(pose)
    distance, _ = placed.signed_distance(transform_points(points_own, pose))
    same, _ = own.signed_distance(points_own)
    assert np.allclose(distance, same, atol=1e-9)
    exact = _exact_distances(arch.vertices, arch.faces, points_own)
    band = (exact < SurfaceTarget.exact_band_mm) | (distance < 0)
    assert band.sum() > 100 and (~band).sum() > 100
    assert np.allclose(np.abs(distance[band]), exact[band], atol=1e-5)  # Open3D's float32 queries, re-projected
    near = ~band & (exact < SurfaceTarget.near_band_mm)
    spread = own.longest_edge / np.sqrt(3.0)  # a vertex is within hypot(d, spread) of a point at d
    assert np.all(distance[near] >= exact[near] - 1e-5)
    assert np.all(distance[near] <= np.hypot(exact[near], spread) + 1e-9)
    assert np.all(distance[exact >= SurfaceTarget.near_band_mm] >= SurfaceTarget.near_band_mm - 1e-9)


def test_points_known_within_the_band_get_the_answers_the_filter_would_give(small_case):
    """``within_band``: points the caller knows to lie within the exact band skip the k-d tree's filter and get
    the same distances and closest points, alone or with a subset; the others are untouched."""
    rng = np.random.default_rng(8)
    arch = small_case.upper
    own = SurfaceTarget(arch.vertices, arch.faces)
    pick = rng.choice(len(arch.vertices), 600, replace=False)
    points = arch.vertices[pick] + rng.uniform(-0.8, 1.6, (600, 1)) * own._index.normals[pick]
    exact = _exact_distances(arch.vertices, arch.faces, points)
    known = exact < SurfaceTarget.exact_band_mm - 1e-6
    assert 100 < known.sum() < 500
    distance, closest = own.signed_distance(points)
    with_known = own.signed_distance(points, within_band=known)
    assert np.array_equal(with_known[0], distance) and np.array_equal(with_known[1], closest)
    subset = rng.random(600) < 0.7
    previous = np.full(600, 9.0)
    expected = own.signed_distance(points, subset, previous)
    got = own.signed_distance(points, subset, previous, within_band=known)
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert np.all(got[0][~subset] == 9.0)


def test_the_local_spread_covers_every_vertex_within_its_radius(small_case):
    """The grid's value at a point is at least the corner reach of every vertex within the radius (what makes
    the nearest-vertex filter of the exact queries safe), and below the mesh's largest where triangles are small."""
    from mesial.aligner._spread import SpreadGrid, corner_reach

    arch = small_case.upper
    target = SurfaceTarget(arch.vertices, arch.faces)
    reach = corner_reach(arch.vertices, arch.faces, target._index.longest_edges)
    assert np.isclose(reach.max(), target.longest_edge / np.sqrt(3.0))
    rng = np.random.default_rng(3)
    points = arch.vertices[rng.choice(len(arch.vertices), 300, replace=False)] + rng.normal(0, 0.6, (300, 3))
    for radius in (0.75, 1.6):
        grid = SpreadGrid(arch.vertices, reach, radius)
        local = grid(points)
        apart = np.linalg.norm(points[:, None, :] - arch.vertices[None, :, :], axis=2)
        needed = np.where(apart < radius, reach[None, :], 0.0).max(axis=1)
        assert np.all(local >= needed)
        assert np.all(local <= reach.max()) and np.median(local) < reach.max()
    far = grid(arch.vertices.max(axis=0)[None, :] + 50.0)
    assert far[0] == reach.max()  # outside the grid: the mesh's largest


@pytest.mark.parametrize("optimise", [True, False])
def test_the_analysis_measures_what_the_full_exact_band_measures(small_case, optimise):
    """Before the optimisation exact queries go only where the measures read them: every number of the
    result and every distance drawn (``after``) equal those of distances exact in the whole band."""
    from mesial.aligner.occlusion import arch_contacts, arch_frame, regions_of
    from mesial.aligner.pipeline import analyse
    from mesial.aligner.validate import scan_from_arrays

    case = small_case
    upper = scan_from_arrays(case.upper.vertices, case.upper.faces, "upper")
    lower = scan_from_arrays(case.lower.vertices, case.lower.faces, "lower")
    params = OcclusionParams(optimise=optimise)
    occlusion = analyse(upper, lower, case.truth["upper"], case.truth["lower"], params)
    assert occlusion.optimised == optimise and np.allclose(occlusion.correction, np.eye(4)) != optimise
    up, low = (
        transform_points(upper.vertices, case.truth["upper"]),
        transform_points(lower.vertices, case.truth["lower"]),
    )
    frame = arch_frame(up, low)
    full = {  # the reference: every vertex through the whole exact band
        "upper": lower.surface().placed(case.truth["lower"]).signed_distance(up)[0],
        "lower": upper.surface().placed(case.truth["upper"]).signed_distance(low)[0],
    }
    for arch, points, scan in (("upper", up, upper), ("lower", low, lower)):
        region = regions_of(points, frame, params.anterior_share)
        reference = arch_contacts(points, scan.faces, None, params.contact_threshold_mm, region, full[arch])
        assert occlusion.before[arch].summary() == reference.summary()
        if not optimise:
            assert np.allclose(occlusion.after[arch].distance, full[arch], rtol=0, atol=1e-12)


def test_spatial_order_lists_the_points_cell_by_cell() -> None:
    from mesial.aligner.occlusion import spatial_order

    points = np.random.default_rng(3).uniform(-30.0, 30.0, size=(5000, 3))
    points[100] = points[7]  # the same cell: the lower index first
    order = spatial_order(points, cell_mm=2.0)
    assert np.array_equal(np.sort(order), np.arange(len(points)))  # a permutation
    cells = np.floor((points - points.min(axis=0)) / 2.0).astype(np.int64)
    listed = [tuple(c) for c in cells[order]]
    assert listed == sorted(listed)  # cell by cell, each cell's points together
    assert list(order).index(7) < list(order).index(100)
    assert len(spatial_order(np.zeros((0, 3)))) == 0


def test_stable_order_is_numpys_stable_argsort() -> None:
    """The corner lists around the vertices (:class:`MeshSides`) come from one plain sort of packed integers:
    the order of NumPy's stable argsort, equal keys in their positions' order."""
    from mesial.aligner._sides import MeshSides, stable_order

    rng = np.random.default_rng(11)
    for keys in (rng.integers(0, 50, 20_000), rng.integers(0, 1 << 40, 3_000), np.array([5]), np.array([3, 3, 3, 0])):
        assert np.array_equal(stable_order(keys), np.argsort(keys, kind="stable"))
    huge = np.array([1 << 61, 0, 1 << 61, 7], dtype=np.int64)  # beyond the packed range: NumPy's sort
    assert np.array_equal(stable_order(huge), [1, 3, 0, 2])
    assert len(stable_order(np.zeros(0, dtype=np.int64))) == 0
    with pytest.raises(ValueError, match="non-negative"):
        stable_order(np.array([2, -1]))
    vertices, faces = uv_sphere(5.0, (0, 0, 0), rings=20, segments=30)
    sides = MeshSides(vertices, faces)
    assert np.array_equal(sides._order, np.argsort(faces.ravel(), kind="stable"))


def test_longest_edges_are_each_triangles_longest(small_case) -> None:
    """Each triangle's longest edge, bit for bit the largest of its three edges' lengths."""
    arch = small_case.upper
    longest = SurfaceTarget(arch.vertices, arch.faces)._index.longest_edges
    corners = arch.vertices[arch.faces]
    edges = corners - np.roll(corners, -1, axis=1)  # a->b, b->c, c->a
    squared = (edges[..., 0] ** 2 + edges[..., 1] ** 2) + edges[..., 2] ** 2
    assert np.array_equal(longest, np.sqrt(squared.max(axis=1)))
    assert np.allclose(longest, np.linalg.norm(edges, axis=2).max(axis=1), rtol=1e-15, atol=0)


def test_the_analysis_on_two_threads_measures_what_one_after_the_other_does(small_case, monkeypatch) -> None:
    """The two arches measured beside each other (and the frame and the first contacts beside the rest)
    give the same distances, bit for bit, as every task run in turn on one thread; an error in either
    thread reaches the caller."""
    from concurrent.futures import Executor, Future

    from mesial.aligner import pipeline
    from mesial.aligner.validate import scan_from_arrays

    class InTurn(Executor):
        """Runs each task when it is submitted, on the caller's thread."""

        def submit(self, fn, /, *args, **kwargs):
            future: Future[object] = Future()
            try:
                future.set_result(fn(*args, **kwargs))
            except Exception as error:
                future.set_exception(error)
            return future

    def analysed() -> pipeline.Occlusion:
        upper = scan_from_arrays(small_case.upper.vertices, small_case.upper.faces, "upper")
        lower = scan_from_arrays(small_case.lower.vertices, small_case.lower.faces, "lower")
        return pipeline.analyse(upper, lower, small_case.truth["upper"], small_case.truth["lower"], OcclusionParams())

    together = analysed()
    monkeypatch.setattr(pipeline, "_helper", InTurn)
    alone = analysed()
    assert not np.allclose(together.correction, np.eye(4))  # both passes ran
    assert np.array_equal(together.correction, alone.correction)
    for stage in ("before", "after"):
        for arch in ("upper", "lower"):
            assert np.array_equal(getattr(together, stage)[arch].distance, getattr(alone, stage)[arch].distance)
            assert getattr(together, stage)[arch].summary() == getattr(alone, stage)[arch].summary()
    monkeypatch.undo()

    def fails(arch: str) -> None:
        if arch == "upper":
            raise RuntimeError("upper failed")

    with pipeline._helper() as beside, pytest.raises(RuntimeError, match="upper failed"):
        pipeline._per_arch(fails, beside)


def test_prepared_structures_are_the_ones_the_queries_use(small_case) -> None:
    """``prepare_analysis`` builds what the first signed distances would (the field, the pseudonormals'
    corner lists, the local spread at the radius the queries ask for): the analysis then builds nothing
    more and measures the same distances."""
    from mesial.aligner.pipeline import analyse, prepare_analysis
    from mesial.aligner.validate import scan_from_arrays

    def scans() -> tuple[Scan, Scan]:
        return (
            scan_from_arrays(small_case.upper.vertices, small_case.upper.faces, "upper"),
            scan_from_arrays(small_case.lower.vertices, small_case.lower.faces, "lower"),
        )

    upper, lower = scans()
    prepare_analysis(upper, lower)
    built = {}
    for scan in (upper, lower):
        index = scan.surface()._index
        assert index._field is not None and index._sides is not None and len(index._spreads) == 1
        built[scan.role] = (index._field, index._sides, dict(index._spreads))
    prepared = analyse(upper, lower, small_case.truth["upper"], small_case.truth["lower"], OcclusionParams())
    for scan in (upper, lower):
        index = scan.surface()._index
        assert (index._field, index._sides, index._spreads) == built[scan.role]  # the same objects, no others
    fresh = analyse(*scans(), small_case.truth["upper"], small_case.truth["lower"], OcclusionParams())
    for stage in ("before", "after"):
        for arch in ("upper", "lower"):
            assert np.array_equal(getattr(prepared, stage)[arch].distance, getattr(fresh, stage)[arch].distance)


def test_a_whole_case_prepares_the_analysis_during_the_registration(small_case, monkeypatch) -> None:
    """``align_scans`` builds the arches' analysis structures while the registration runs (from its global
    step): they are there when the analysis starts, and the result is the one analysed without them."""
    from mesial.aligner import pipeline
    from mesial.aligner.validate import scan_from_arrays

    def scans() -> tuple[Scan, Scan, list[Scan]]:
        upper = scan_from_arrays(small_case.upper.vertices, small_case.upper.faces, "upper")
        lower = scan_from_arrays(small_case.lower.vertices, small_case.lower.faces, "lower")
        bites = [scan_from_arrays(b.vertices, b.faces, "bite", orient=False) for b in small_case.bites]
        return upper, lower, bites

    seen: list[tuple[str, bool]] = []
    analyse = pipeline.analyse

    def watched(upper: Scan, lower: Scan, *rest: Any) -> pipeline.Occlusion:
        for scan in (upper, lower):
            index = scan.surface()._index
            seen.append((scan.role, index._sides is not None and index._field is not None and len(index._spreads) == 1))
        return analyse(upper, lower, *rest)

    monkeypatch.setattr(pipeline, "analyse", watched)
    stages: list[str] = []
    result = pipeline.align_scans(*scans(), progress=lambda stage, fraction: stages.append(stage))
    assert result.status == "ok" and result.occlusion is not None
    assert result.upper_to_bite is not None and result.registration is not None
    assert seen == [("upper", True), ("lower", True)]
    assert "global" in stages and stages[-1] == "occlusion"  # the caller's progress still reported
    again = analyse(*scans()[:2], result.upper_to_bite, result.registration.lower_to_bite, OcclusionParams())
    for arch in ("upper", "lower"):
        assert np.array_equal(again.after[arch].distance, result.occlusion.after[arch].distance)


def test_edge_pseudonormals_add_the_sharing_faces_normals() -> None:
    """At an edge the pseudonormal sums the unit normals of the faces that share it (only those are
    computed): the sum over every face around its first end times whether it shares the edge, as before,
    on a closed sphere, an open grid (border edges) and an edge shared by three faces."""
    from mesial.aligner._sides import MeshSides
    from mesial.aligner.transforms import unit

    def reference(sides: MeshSides, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        faces, _, real = sides._around(a)
        shares = real & (sides.faces[faces] == b[:, None, None]).any(axis=2)
        corners = sides.vertices[sides.faces[faces]]
        cross = np.cross(corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :])
        return unit((unit(cross) * shares[..., None]).sum(axis=1)), shares.sum(axis=1) < 2

    sphere = uv_sphere(5.0, (0, 0, 0), rings=12, segments=18)
    grid = grid_plane(4.0, 0.5)
    # a third face on the interior edge (9, 1) of the grid
    fin = (np.vstack([grid[0], [[0.25, 0.0, 1.0]]]), np.vstack([grid[1], [[9, 1, len(grid[0])]]]))
    for vertices, faces in (sphere, grid, fin):
        sides = MeshSides(vertices, faces)
        a = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
        b = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
        normals, border = sides._edges(a, b)
        expected = reference(sides, a, b)
        assert np.array_equal(normals, expected[0]) and np.array_equal(border, expected[1])
        assert np.allclose(np.linalg.norm(normals, axis=1), 1.0)
    assert not border.all() and border.any()  # the grid's and the fin's borders are there
    edges = np.sort(np.stack([a, b], axis=1), axis=1)
    assert np.unique(edges, axis=0, return_counts=True)[1].max() == 3


def test_face_normals_of_the_pseudonormals_are_numpys_cross_products() -> None:
    """The unit normals the pseudonormals sum (``MeshSides._unit_normals``, rows gathered by ``np.take`` and
    crossed a coordinate at a time) are those of ``np.cross`` on the fancy-indexed corners, bit for bit, for
    index arrays of any shape."""
    from mesial.aligner._sides import MeshSides
    from mesial.aligner.transforms import unit

    rng = np.random.default_rng(3)
    for vertices, faces in (uv_sphere(5.0, (0, 0, 0), rings=12, segments=18), grid_plane(4.0, 0.5)):
        sides = MeshSides(vertices + rng.normal(0.0, 1e-3, vertices.shape), faces)
        for shape in ((0,), (7,), (len(faces),), (40, 9)):
            index = rng.integers(0, len(faces), shape)
            corners = sides.vertices[sides.faces[index]]
            expected = unit(np.cross(corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :]))
            assert sides._unit_normals(index).tobytes() == expected.tobytes()
