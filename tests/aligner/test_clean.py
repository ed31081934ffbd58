"""Validation's compiled cleaning (``_clean.c``) gives the values of the NumPy code it stands for."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from mesial.aligner._clean import corner_sums, cross_products, merge_corners
from mesial.aligner._meshquery import _load
from mesial.aligner.io import read_mesh, write_stl
from mesial.aligner.samples import SampleCase
from mesial.common.meshformat import STL_DTYPE, merge_triangle_corners, read_mesh_bytes


def _same_merge(corners: np.ndarray) -> None:
    vertices, faces = merge_corners(corners)
    expected_vertices, expected_faces = merge_triangle_corners(corners)
    assert vertices.dtype == np.float64 and faces.dtype == np.int64
    assert vertices.shape == expected_vertices.shape and faces.shape == expected_faces.shape
    assert np.array_equal(vertices.view(np.uint64), expected_vertices.view(np.uint64))  # bit for bit, in order
    assert np.array_equal(faces, expected_faces)


def _records(corners: np.ndarray) -> np.ndarray:
    """The corners as a view into binary STL records (50 bytes a triangle, not 4-byte aligned)."""
    records = np.zeros(len(corners), dtype=STL_DTYPE)
    records["corners"] = corners
    return records["corners"]


def test_corners_merge_as_merge_identical_points_does() -> None:
    rng = np.random.default_rng(7)
    special = np.array([0.0, -0.0, 1.0, 2.5, np.nan, np.inf, -np.inf, 1e-40], dtype=np.float32)
    for trial in range(60):
        count = int(rng.integers(1, 4000))
        if trial % 3 == 0:  # few distinct values: most corners repeat, signed zeros and NaNs among them
            corners = rng.choice(special, size=(count, 3, 3))
        else:  # a mesh's corners: each point the corner of several triangles
            points = rng.normal(size=(count, 3)).astype(np.float32)
            corners = points[rng.integers(0, count, size=(count, 3))]
        _same_merge(corners)
        _same_merge(_records(corners))
    payload = np.array([0x7FC00001, 0x7FC00002], dtype=np.uint32).view(np.float32)  # two NaNs, other bits
    corners = np.zeros((2, 3, 3), dtype=np.float32)
    corners[0, 0, 0], corners[1, 0, 0] = payload
    _same_merge(corners)
    assert len(merge_corners(corners)[0]) == 3  # (0, 0, 0) once, the NaNs apart
    _same_merge(np.zeros((0, 3, 3), dtype=np.float32))


def test_corners_of_another_layout_take_the_numpy_path() -> None:
    corners = np.random.default_rng(1).normal(size=(50, 3, 3))
    _same_merge(corners)  # float64
    _same_merge(corners.astype(np.float32)[::-1])  # a negative stride
    _same_merge(np.asfortranarray(corners.astype(np.float32)))


def test_corners_sharing_the_hash_bits_are_left_to_the_exact_path() -> None:
    # with 60 of the hash's 64 bits shifted out, different corners share the 4 left: the kernel says so
    library = _load()
    points = np.random.default_rng(2).normal(size=(100, 3, 3)).astype(np.float32)
    vertices, inverse, unique = np.empty((300, 3)), np.empty(300, dtype=np.int64), ctypes.c_int64()
    arguments = (vertices.ctypes.data, inverse.ctypes.data, ctypes.byref(unique))
    assert library.mc_merge_corners(points.ctypes.data, 100, 3, 36, 60, *arguments) == 1
    same = np.ascontiguousarray(np.broadcast_to(points[0, 0], (100, 3, 3)))  # one point 300 times: no collision
    assert library.mc_merge_corners(same.ctypes.data, 100, 3, 36, 60, *arguments) == 0
    assert unique.value == 1 and np.array_equal(vertices[0], points[0, 0].astype(np.float64))
    assert not inverse.any()


@pytest.mark.parametrize("role", ["upper", "bite"])
def test_a_binary_stl_reads_the_same_with_the_compiled_merge(tmp_path, small_case: SampleCase, role: str) -> None:
    mesh = small_case.upper if role == "upper" else small_case.bites[0]
    write_stl(tmp_path / "scan.stl", mesh.vertices, mesh.faces)
    data = (tmp_path / "scan.stl").read_bytes()
    raw = read_mesh(tmp_path / "scan.stl", max_bytes=1 << 30, max_triangles=10**6, role=role, arch=role == "upper")
    expected = read_mesh_bytes(data, max_triangles=10**6, role=role, arch=role == "upper")  # NumPy's merge
    assert np.array_equal(raw.vertices.view(np.uint64), expected.vertices.view(np.uint64))
    assert np.array_equal(raw.faces, expected.faces)


def _mesh(rng: np.random.Generator, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    vertices = rng.normal(size=(n, 3)) * rng.choice([1e-3, 1.0, 40.0], size=(n, 1))
    faces = rng.integers(0, n, size=(m, 3))
    faces[: m // 10, 1] = faces[: m // 10, 0]  # some with a repeated corner: zero cross products
    return vertices, faces


def test_cross_products_are_the_numpy_columns_arithmetic() -> None:
    rng = np.random.default_rng(3)
    for n, m in ((3, 1), (50, 200), (3000, 20_000)):
        vertices, faces = _mesh(rng, n, m)
        columns = np.ascontiguousarray(vertices.T)  # validate.face_cross_products' NumPy code
        a = [column[faces[:, 1]] - column[faces[:, 0]] for column in columns]
        b = [column[faces[:, 2]] - column[faces[:, 0]] for column in columns]
        expected = np.stack([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]], 1)
        cross = cross_products(vertices, faces)
        assert cross is not None and np.array_equal(cross.view(np.uint64), expected.view(np.uint64))
    assert cross_products(vertices, np.array([[0, 1, n]])) is None  # out of range: NumPy's code answers
    assert cross_products(vertices, np.array([[0, -1, 2]])) is None


def test_corner_sums_are_the_sum_of_numpys_bincounts() -> None:
    rng = np.random.default_rng(5)
    for n, m in ((3, 1), (40, 300), (3000, 20_000)):
        _, faces = _mesh(rng, n, m)
        weights = rng.normal(size=(m, 3)) * 10.0 ** rng.integers(-8, 8, size=(m, 1))
        weights[::7] = -0.0  # signed zeros, and sums that cancel
        weights[1::7] = -weights[2::7][: len(weights[1::7])]
        expected = np.stack(
            [
                sum(np.bincount(faces[:, corner], weights=weights[:, axis], minlength=n) for corner in range(3))
                for axis in range(3)
            ],
            1,
        )
        sums = corner_sums(faces, weights, n)
        assert sums is not None and np.array_equal(sums.view(np.uint64), expected.view(np.uint64))
    assert corner_sums(np.array([[0, 1, 3]]), np.ones((1, 3)), 3) is None
    empty = corner_sums(np.zeros((0, 3), dtype=np.int64), np.zeros((0, 3)), 2)
    assert empty is not None and empty.tolist() == [[0.0] * 3] * 2


def test_the_arch_sample_picks_the_same_points_from_the_records() -> None:
    from mesial.common.meshformat import _Sample

    rng = np.random.default_rng(11)
    for count, target in ((1, 5), (7, 2), (1000, 50), (30_000, 20_000), (40_000, 1000)):
        corners = rng.normal(size=(count, 3, 3)).astype(np.float32)
        pieces = np.array_split(np.arange(count), 3)
        for whole in (True, False):  # one piece, or three after a flat piece (the step grows between them)
            flat, records = _Sample(target), _Sample(target)
            if not whole:
                extra = rng.normal(size=(count // 2 + 1, 3))
                flat.add(extra)
                records.add(extra)
            for piece in [np.arange(count)] if whole else pieces:
                flat.add(corners[piece].reshape(-1, 3))
                records.add(_records(corners[piece]))
            assert flat.step == records.step and flat.seen == records.seen
            assert np.array_equal(flat.points(), records.points())


def _cleaned(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, ...]:
    from mesial.aligner.io import RawMesh
    from mesial.aligner.validate import clean_mesh

    scan = clean_mesh(RawMesh(vertices, faces, "arrays", "", 0), "bite", orient=False)
    report = np.array(list(scan.cleaning.as_dict().values()), dtype=np.float64)
    return scan.vertices, scan.faces, scan.vertex_normals, report


def _dirty_mesh(vertex_count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(9)
    faces = rng.integers(0, 400, size=(3000, 3))  # vertex 400 and those past 403 unreferenced
    vertices = np.zeros((vertex_count, 3))
    vertices[:500] = rng.normal(size=(500, 3)) * 10.0
    faces[:100, 2] = faces[:100, 0]  # a repeated corner
    vertices[401:404] = np.array([[0, 0, 0], [1e-4, 0, 0], [0, 1e-4, 0]])  # a triangle of 5e-9 mm2
    faces[100] = [401, 402, 403]
    faces[200:400] = faces[1000:1200][:, [2, 0, 1]]  # duplicates, turned
    faces[400:500] = faces[1200:1300][:, ::-1]  # duplicates, flipped
    return vertices, faces


def test_cleaning_with_the_census_is_cleaning_with_numpy(monkeypatch) -> None:
    import mesial.aligner.validate as validate

    vertices, faces = _dirty_mesh(500)
    compiled = _cleaned(vertices, faces)
    monkeypatch.setattr(validate, "face_census", lambda *arguments: None)
    expected = _cleaned(vertices, faces)
    assert compiled[3][2:5].tolist() == expected[3][2:5].tolist() and expected[3][2:5].min() > 0
    for mine, theirs in zip(compiled, expected, strict=True):
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs)
    # from 2 000 000 vertices the keys would not fit: np.unique on the sorted rows finds the same duplicates
    many = _cleaned(*_dirty_mesh(2_000_001))
    assert all(np.array_equal(mine, theirs) for mine, theirs in zip(many[:3], compiled[:3], strict=True))
    assert many[3][2:4].tolist() == compiled[3][2:4].tolist()


def test_the_census_of_clean_triangles() -> None:
    from mesial.aligner._clean import face_census

    faces = np.array([[0, 1, 2], [2, 1, 3], [3, 1, 0]])
    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 1]])
    cross = cross_products(vertices, faces)
    assert cross is not None
    census = face_census(faces, 4, cross, 1e-6)
    assert census is not None
    degenerate, keys, every_vertex_used = census
    assert not degenerate.any() and every_vertex_used
    assert keys.tolist() == [(0 * 4 + 1) * 4 + 2, (1 * 4 + 2) * 4 + 3, (0 * 4 + 1) * 4 + 3]
    assert face_census(faces, 5, cross, 1e-6)[2] is False  # type: ignore[index]  # vertex 4 unused
    assert face_census(faces, 3, cross, 1e-6) is None  # an index out of range: NumPy's code answers
