from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from mesial.aligner.errors import (
    CorruptScan,
    EmptyScan,
    ImplausibleScale,
    NotADentalArch,
    ScanTooLarge,
    UnsupportedScanFormat,
)
from mesial.aligner.io import read_mesh, write_ply, write_stl
from mesial.aligner.validate import load_scan
from mesial.common.errors import InputError
from tests.hostile_meshes import hostile_corpus, valid_corpus

from .conftest import grid_plane

LIMITS: dict[str, Any] = {"max_bytes": 50 << 20, "max_triangles": 1_000_000}


@pytest.fixture
def plane():
    return grid_plane(20.0, 1.0)


def test_binary_stl_roundtrip_merges_vertices(tmp_path, plane):
    vertices, faces = plane
    write_stl(tmp_path / "p.stl", vertices, faces)
    scan = load_scan(tmp_path / "p.stl", "bite", **LIMITS)
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
        scan = load_scan(tmp_path / name, "bite", **LIMITS)
        assert scan.file_format == fmt
        assert len(scan.faces) == len(faces)


def test_empty_file(tmp_path):
    (tmp_path / "e.stl").write_bytes(b"")
    with pytest.raises(UnsupportedScanFormat, match="empty"):
        load_scan(tmp_path / "e.stl", "bite", **LIMITS)


def test_truncated_binary_stl(tmp_path, plane):
    write_stl(tmp_path / "t.stl", *plane)
    data = (tmp_path / "t.stl").read_bytes()
    (tmp_path / "t.stl").write_bytes(data[:-20])
    with pytest.raises(CorruptScan, match="truncated"):
        load_scan(tmp_path / "t.stl", "bite", **LIMITS)


def test_wrong_triangle_count(tmp_path, plane):
    write_stl(tmp_path / "w.stl", *plane)
    data = bytearray((tmp_path / "w.stl").read_bytes())
    data[80:84] = struct.pack("<I", len(plane[1]) - 3)
    (tmp_path / "w.stl").write_bytes(bytes(data))
    with pytest.raises(CorruptScan, match="longer than its header says"):
        load_scan(tmp_path / "w.stl", "bite", **LIMITS)


def test_claimed_two_gigabyte_stl_refused_from_header(tmp_path):
    # 43 million triangles = 2.15 GB claimed by a 134-byte file
    header = b"x" * 80 + struct.pack("<I", 43_000_000) + b"\0" * 50
    (tmp_path / "huge.stl").write_bytes(header)
    with pytest.raises(ScanTooLarge, match="claims 43,000,000 triangles"):
        load_scan(tmp_path / "huge.stl", "bite", max_bytes=50 << 20, max_triangles=5_000_000)


def test_file_size_limit(tmp_path, plane):
    write_stl(tmp_path / "p.stl", *plane)
    with pytest.raises(ScanTooLarge):
        load_scan(tmp_path / "p.stl", "bite", max_bytes=1000, max_triangles=10)


def test_nan_coordinates(tmp_path, plane):
    vertices, faces = plane
    vertices = vertices.copy()
    vertices[5] = np.nan
    write_stl(tmp_path / "n.stl", vertices, faces)
    with pytest.raises(CorruptScan, match="NaN"):
        load_scan(tmp_path / "n.stl", "bite", **LIMITS)


def test_not_a_mesh(tmp_path):
    (tmp_path / "x.stl").write_bytes(bytes(range(256))[:60])
    with pytest.raises(UnsupportedScanFormat):
        load_scan(tmp_path / "x.stl", "bite", **LIMITS)
    (tmp_path / "notes.obj").write_text("hello, this is a letter\n")
    with pytest.raises(InputError):
        load_scan(tmp_path / "notes.obj", "bite", **LIMITS)


def test_all_degenerate_is_empty(tmp_path):
    vertices = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], dtype=float)
    write_stl(tmp_path / "d.stl", vertices, np.array([[0, 1, 2]]))
    with pytest.raises(EmptyScan):
        load_scan(tmp_path / "d.stl", "bite", **LIMITS)


def test_cleaning_counts(tmp_path, plane):
    vertices, faces = plane
    vertices = np.vstack([vertices, [[100.0, 0, 0]]])  # unreferenced
    faces = np.vstack([faces, faces[:3], faces[:2, ::-1], [[0, 0, 1]]])
    write_ply(tmp_path / "c.ply", vertices, faces)
    scan = load_scan(tmp_path / "c.ply", "bite", **LIMITS)
    report = scan.cleaning
    assert report.duplicate_triangles == 5
    assert report.degenerate_triangles == 1
    assert report.unreferenced_vertices == 1
    assert len(scan.faces) == len(plane[1])


def test_metres_refused_then_rescaled(tmp_path, plane):
    vertices, faces = plane
    write_stl(tmp_path / "m.stl", vertices / 1000.0, faces)
    with pytest.raises(ImplausibleScale, match="looks like m") as info:
        load_scan(tmp_path / "m.stl", "bite", **LIMITS)
    assert info.value.suggested_unit == "m"
    scan = load_scan(tmp_path / "m.stl", "bite", unit="m", **LIMITS)
    assert np.isclose(scan.extent_mm, np.linalg.norm(np.ptp(vertices, axis=0)), rtol=1e-5)


def test_inward_winding_is_flipped(tmp_path):
    from .conftest import uv_sphere

    vertices, faces = uv_sphere(5.0, (0, 0, 0), rings=30, segments=60)
    write_ply(tmp_path / "s.ply", vertices, faces[:, ::-1])
    scan = load_scan(tmp_path / "s.ply", "bite", **LIMITS)
    assert scan.cleaning.normals_flipped
    assert np.all(np.einsum("ij,ij->i", scan.vertex_normals, scan.vertices) > 0)


def _open_cap(vertices: Any, faces: Any) -> tuple[Any, Any]:
    """The upper half (z > 0) of a closed mesh: an open cap, its border a circle."""
    return _piece(vertices, faces, np.all(vertices[faces][:, :, 2] > 0, axis=1))


def test_orientation_of_open_and_closed_meshes(small_case):
    """The winding is called inward exactly when it is, on whole arches and a closed sphere, as written
    and reversed; a flat sheet and an open hemisphere are left alone either way; and pieces of an arch
    (its front half, its two back halves: where a signed volume closed from the border's centre goes
    wrong) written outwards are never called inward."""
    from mesial.aligner.validate import orientation_is_inward, vertex_normals

    from .conftest import uv_sphere

    def inward(vertices: Any, faces: Any) -> bool:
        return orientation_is_inward(vertices, faces, vertex_normals(vertices, faces))

    sphere = uv_sphere(5.0, (1.0, 2.0, 3.0), rings=30, segments=60)
    cap = _open_cap(*uv_sphere(5.0, (0, 0, 0), rings=30, segments=60))
    for vertices, faces in [(m.vertices, m.faces) for m in (small_case.upper, small_case.lower)] + [sphere]:
        assert not inward(vertices, faces)
        assert inward(vertices, faces[:, ::-1])
    # a hemisphere's inward rays leave through its opening as its outward ones do: left alone either way
    assert not inward(*cap) and not inward(cap[0], cap[1][:, ::-1])
    flat = grid_plane(20.0, 1.0)
    for faces in (flat[1], flat[1][:, ::-1]):
        assert not inward(flat[0], faces)
    for arch in (small_case.upper, small_case.lower):
        centres = arch.vertices[arch.faces].mean(axis=1)
        axes = np.linalg.svd(arch.vertices - arch.vertices.mean(axis=0), full_matrices=False)[2]
        along = centres @ axes[1]  # front to back
        for keep in (along > np.median(along), along <= np.median(along)):
            assert not inward(*_piece(arch.vertices, arch.faces, keep))


def _piece(vertices: Any, faces: Any, keep: Any) -> tuple[Any, Any]:
    used = np.unique(faces[keep])
    remap = np.full(len(vertices), -1)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces[keep]]


def test_an_inward_arch_is_flipped_back(small_case):
    from mesial.aligner.validate import scan_from_arrays

    arch = small_case.lower
    scan = scan_from_arrays(arch.vertices, arch.faces[:, ::-1], "lower")
    assert scan.cleaning.normals_flipped
    assert np.array_equal(scan.faces, arch.faces)
    assert not scan_from_arrays(arch.vertices, arch.faces, "lower").cleaning.normals_flipped


@pytest.mark.parametrize("extra", [False, True])
def test_readers_match_trimesh(tmp_path, plane, extra):
    """Every format reads to trimesh's vertices and faces (binary PLY with extra properties too)."""
    import trimesh

    vertices, faces = plane
    rng = np.random.default_rng(0)
    colors = rng.integers(0, 255, (len(vertices), 3), dtype=np.uint8) if extra else None
    scalars = {"distance": rng.normal(size=len(vertices))} if extra else None
    write_ply(tmp_path / "c.ply", vertices, faces, colors=colors, scalars=scalars)
    obj = [f"v {x} {y} {z}" for x, y, z in vertices] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    (tmp_path / "c.obj").write_text("\n".join(obj) + "\n")
    for name in ("c.ply", "c.obj"):
        ours = read_mesh(tmp_path / name, **LIMITS)
        theirs = trimesh.load(tmp_path / name, process=False, force="mesh")
        assert isinstance(theirs, trimesh.Trimesh)
        assert np.allclose(ours.vertices, theirs.vertices) and np.array_equal(ours.faces, theirs.faces)
    write_stl(tmp_path / "c.stl", vertices, faces)
    ours = read_mesh(tmp_path / "c.stl", **LIMITS)
    theirs = trimesh.load(tmp_path / "c.stl", process=False, force="mesh")
    assert isinstance(theirs, trimesh.Trimesh)
    assert np.allclose(ours.vertices[ours.faces], theirs.vertices[theirs.faces])


def test_ply_polygons_are_fanned(tmp_path):
    header = b"ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
    header += b"property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
    corners = np.array([[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 10, 0]], "<f4")
    (tmp_path / "q.ply").write_bytes(header + corners.tobytes() + bytes([4]) + np.arange(4, dtype="<i4").tobytes())
    mesh = read_mesh(tmp_path / "q.ply", **LIMITS)
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3]]


def test_duplicate_faces_in_any_order_are_removed(plane):
    from mesial.aligner.validate import scan_from_arrays

    vertices, faces = plane
    doubled = np.vstack([faces, faces[:10, ::-1], np.roll(faces[10:20], 1, axis=1)])
    scan = scan_from_arrays(vertices, doubled, "bite")
    assert len(scan.faces) == len(faces)
    assert scan.cleaning.duplicate_triangles == 20


# --- strict input (issue 10, goal 6) and the corpus shared with the upload check -----------


@pytest.mark.parametrize("name", sorted(hostile_corpus()))
def test_hostile_files_are_refused_with_the_reason(tmp_path, name):
    case = hostile_corpus()[name]
    (tmp_path / "scan").write_bytes(case.data)
    with pytest.raises(case.error) as info:
        load_scan(tmp_path / "scan", "bite", **LIMITS)
    assert case.message in str(info.value) and str(info.value).startswith("bite scan: ")


@pytest.mark.parametrize("name", sorted(valid_corpus()))
def test_valid_files_of_every_format_are_read(tmp_path, name):
    case = valid_corpus()[name]
    (tmp_path / "scan").write_bytes(case.data)
    scan = load_scan(tmp_path / "scan", "bite", **LIMITS)
    assert scan.file_format == case.file_format
    assert scan.cleaning.input_triangles == case.triangles


def test_an_arch_must_look_like_one(tmp_path, small_case):
    """Upper and lower scans that are too sparse, flat, short or straight are invalid input, with the measure."""
    from mesial.aligner.validate import scan_from_arrays

    upper = scan_from_arrays(small_case.upper.vertices, small_case.upper.faces, "upper")  # a generated arch passes
    assert len(upper.vertices) > 10_000
    flat = grid_plane(40.0, 0.5)
    with pytest.raises(NotADentalArch, match=r"upper scan: 0\.00 mm thick .* flat"):
        scan_from_arrays(*flat, "upper")
    sparse = grid_plane(30.0, 2.0)  # 450 triangles
    with pytest.raises(NotADentalArch, match="lower scan: 450 triangles: a dental arch scan has at least 2,000"):
        scan_from_arrays(*sparse, "lower")
    bar_vertices, bar_faces = grid_plane(40.0, 0.5)
    bar_vertices = bar_vertices * [1.0, 0.2, 1.0] + [0, 0, 0]
    bar_vertices[:, 2] = np.sin(bar_vertices[:, 0]) * 3  # wavy, thick enough, but straight
    with pytest.raises(NotADentalArch, match="U-shaped"):
        scan_from_arrays(bar_vertices, bar_faces, "lower")
    scan_from_arrays(*flat, "bite")  # a bite scan is a patch: not held to an arch's shape
    # from a file, the same verdicts (the check is the upload's too)
    write_stl(tmp_path / "flat.stl", *flat)
    with pytest.raises(NotADentalArch, match=r"upper scan: 0\.00 mm thick"):
        load_scan(tmp_path / "flat.stl", "upper", **LIMITS)
    write_ply(tmp_path / "arch.ply", small_case.lower.vertices, small_case.lower.faces)
    assert load_scan(tmp_path / "arch.ply", "lower", **LIMITS).file_format == "ply"


def test_a_small_object_is_invalid_input_not_unconfident(tmp_path, small_case):
    """A 50-triangle, 3 mm object given as the upper arch stops the case as invalid input, with the reason."""
    from mesial.aligner.pipeline import align_scans

    vertices, faces = grid_plane(2.0, 0.4)
    write_stl(tmp_path / "tiny.stl", vertices, faces[:50])
    write_stl(tmp_path / "lower.stl", small_case.lower.vertices, small_case.lower.faces)
    write_stl(tmp_path / "bite.stl", small_case.bites[0].vertices, small_case.bites[0].faces)
    result = align_scans(tmp_path / "tiny.stl", tmp_path / "lower.stl", [tmp_path / "bite.stl"])
    assert result.status == "invalid_input"
    assert "upper scan: bounding box diagonal is 2.8" in result.reasons[0]


def test_face_cross_products_are_numpys_cross_products():
    from mesial.aligner.validate import face_cross_products

    rng = np.random.default_rng(5)
    vertices = rng.normal(size=(500, 3)) * 30.0
    faces = rng.integers(0, 500, size=(2000, 3))
    corners = vertices[faces]
    expected = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    assert np.array_equal(face_cross_products(vertices, faces), expected)  # the same arithmetic, bit for bit
