from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from mesial.aligner.errors import (
    CorruptScan,
    EmptyScan,
    ImplausibleScale,
    ScanTooLarge,
    UnsupportedScanFormat,
)
from mesial.aligner.io import write_ply, write_stl
from mesial.aligner.validate import load_scan
from mesial.common.errors import InputError

from .conftest import grid_plane

LIMITS: dict[str, Any] = {"max_bytes": 50 << 20, "max_triangles": 1_000_000}


@pytest.fixture
def plane():
    return grid_plane(20.0, 1.0)


def test_binary_stl_roundtrip_merges_vertices(tmp_path, plane):
    vertices, faces = plane
    write_stl(tmp_path / "p.stl", vertices, faces)
    scan = load_scan(tmp_path / "p.stl", "upper", **LIMITS)
    assert scan.file_format == "stl-binary"
    assert len(scan.vertices) == len(vertices) and len(scan.faces) == len(faces)
    assert len(scan.sha256) == 64
    assert np.allclose(scan.vertex_normals.mean(axis=0), [0, 0, 1], atol=1e-6)


def test_ascii_stl_ply_and_obj(tmp_path, plane):
    vertices, faces = plane
    lines = ["solid p"]
    for f in faces:
        lines += ["facet normal 0 0 1", "outer loop"]
        lines += [f"vertex {x} {y} {z}" for x, y, z in vertices[f]]
        lines += ["endloop", "endfacet"]
    (tmp_path / "a.stl").write_text("\n".join([*lines, "endsolid p"]))
    write_ply(tmp_path / "p.ply", vertices, faces)
    obj = [f"v {x} {y} {z}" for x, y, z in vertices] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    (tmp_path / "p.obj").write_text("\n".join(obj) + "\n")
    for name, fmt in (("a.stl", "stl-ascii"), ("p.ply", "ply"), ("p.obj", "obj")):
        scan = load_scan(tmp_path / name, "lower", **LIMITS)
        assert scan.file_format == fmt
        assert len(scan.faces) == len(faces)


def test_empty_file(tmp_path):
    (tmp_path / "e.stl").write_bytes(b"")
    with pytest.raises(CorruptScan, match="empty"):
        load_scan(tmp_path / "e.stl", "upper", **LIMITS)


def test_truncated_binary_stl(tmp_path, plane):
    write_stl(tmp_path / "t.stl", *plane)
    data = (tmp_path / "t.stl").read_bytes()
    (tmp_path / "t.stl").write_bytes(data[:-20])
    with pytest.raises(CorruptScan, match="truncated"):
        load_scan(tmp_path / "t.stl", "upper", **LIMITS)


def test_wrong_triangle_count(tmp_path, plane):
    write_stl(tmp_path / "w.stl", *plane)
    data = bytearray((tmp_path / "w.stl").read_bytes())
    data[80:84] = struct.pack("<I", len(plane[1]) - 3)
    (tmp_path / "w.stl").write_bytes(bytes(data))
    with pytest.raises(CorruptScan, match="header claims"):
        load_scan(tmp_path / "w.stl", "upper", **LIMITS)


def test_claimed_two_gigabyte_stl_refused_from_header(tmp_path):
    # 43 million triangles = 2.15 GB claimed by a 134-byte file
    header = b"x" * 80 + struct.pack("<I", 43_000_000) + b"\0" * 50
    (tmp_path / "huge.stl").write_bytes(header)
    with pytest.raises(ScanTooLarge, match="claims 43,000,000 triangles"):
        load_scan(tmp_path / "huge.stl", "bite", max_bytes=50 << 20, max_triangles=5_000_000)


def test_file_size_limit(tmp_path, plane):
    write_stl(tmp_path / "p.stl", *plane)
    with pytest.raises(ScanTooLarge):
        load_scan(tmp_path / "p.stl", "upper", max_bytes=1000, max_triangles=10)


def test_nan_coordinates(tmp_path, plane):
    vertices, faces = plane
    vertices = vertices.copy()
    vertices[5] = np.nan
    write_stl(tmp_path / "n.stl", vertices, faces)
    with pytest.raises(CorruptScan, match="NaN"):
        load_scan(tmp_path / "n.stl", "upper", **LIMITS)


def test_not_a_mesh(tmp_path):
    (tmp_path / "x.stl").write_bytes(bytes(range(256))[:60])
    with pytest.raises(UnsupportedScanFormat):
        load_scan(tmp_path / "x.stl", "upper", **LIMITS)
    (tmp_path / "notes.obj").write_text("hello, this is a letter\n")
    with pytest.raises(InputError):
        load_scan(tmp_path / "notes.obj", "upper", **LIMITS)


def test_all_degenerate_is_empty(tmp_path):
    vertices = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], dtype=float)
    write_stl(tmp_path / "d.stl", vertices, np.array([[0, 1, 2]]))
    with pytest.raises(EmptyScan):
        load_scan(tmp_path / "d.stl", "upper", **LIMITS)


def test_cleaning_counts(tmp_path, plane):
    vertices, faces = plane
    vertices = np.vstack([vertices, [[100.0, 0, 0]]])  # unreferenced
    faces = np.vstack([faces, faces[:3], faces[:2, ::-1], [[0, 0, 1]]])
    write_ply(tmp_path / "c.ply", vertices, faces)
    scan = load_scan(tmp_path / "c.ply", "upper", **LIMITS)
    report = scan.cleaning
    assert report.duplicate_triangles == 5
    assert report.degenerate_triangles == 1
    assert report.unreferenced_vertices == 1
    assert len(scan.faces) == len(plane[1])


def test_metres_refused_then_rescaled(tmp_path, plane):
    vertices, faces = plane
    write_stl(tmp_path / "m.stl", vertices / 1000.0, faces)
    with pytest.raises(ImplausibleScale, match="looks like m") as info:
        load_scan(tmp_path / "m.stl", "upper", **LIMITS)
    assert info.value.suggested_unit == "m"
    scan = load_scan(tmp_path / "m.stl", "upper", unit="m", **LIMITS)
    assert np.isclose(scan.extent_mm, np.linalg.norm(np.ptp(vertices, axis=0)), rtol=1e-5)


def test_inward_winding_is_flipped(tmp_path):
    from .conftest import uv_sphere

    vertices, faces = uv_sphere(5.0, (0, 0, 0), rings=30, segments=60)
    write_ply(tmp_path / "s.ply", vertices, faces[:, ::-1])
    scan = load_scan(tmp_path / "s.ply", "upper", **LIMITS)
    assert scan.cleaning.normals_flipped
    assert np.all(np.einsum("ij,ij->i", scan.vertex_normals, scan.vertices) > 0)


def test_binary_ply_fast_reader_matches_the_general_one(tmp_path, plane):
    """The vectorised binary PLY reader gives trimesh's result, with extra properties too; polygons fall back."""
    from mesial.aligner.io import _parse_simple_binary_ply, _parse_with_trimesh

    vertices, faces = plane
    rng = np.random.default_rng(0)
    colors = rng.integers(0, 255, (len(vertices), 3), dtype=np.uint8)
    write_ply(tmp_path / "c.ply", vertices, faces, colors=colors, scalars={"distance": rng.normal(size=len(vertices))})
    data = (tmp_path / "c.ply").read_bytes()
    fast = _parse_simple_binary_ply(data)
    assert fast is not None
    general = _parse_with_trimesh(data, "ply")
    assert np.array_equal(fast[0], general[0]) and np.array_equal(fast[1], general[1])
    # a quad face: not the simple layout, the general reader decides
    header = b"ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
    header += b"property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
    quad = header + np.zeros((4, 3), "<f4").tobytes() + bytes([4]) + np.arange(4, dtype="<i4").tobytes()
    assert _parse_simple_binary_ply(quad) is None
    # a truncated payload is not read past its end
    assert _parse_simple_binary_ply(data[:-5]) is None


def test_duplicate_faces_in_any_order_are_removed(plane):
    from mesial.aligner.validate import scan_from_arrays

    vertices, faces = plane
    doubled = np.vstack([faces, faces[:10, ::-1], np.roll(faces[10:20], 1, axis=1)])
    scan = scan_from_arrays(vertices, doubled, "upper")
    assert len(scan.faces) == len(faces)
    assert scan.cleaning.duplicate_triangles == 20
