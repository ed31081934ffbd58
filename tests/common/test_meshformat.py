"""The one mesh parser and validator: the same verdict whole or streamed, whatever the pieces."""

from __future__ import annotations

import numpy as np
import pytest

from mesial.common.errors import ScanInputError
from mesial.common.meshformat import MeshStream, read_mesh_bytes, sniff_format
from tests.hostile_meshes import grid, hostile_corpus, obj, stl_binary, valid_corpus

MAX_TRIANGLES = 1_000_000


def _streamed(data: bytes, piece: int, keep: bool = False):
    stream = MeshStream(max_triangles=MAX_TRIANGLES, keep=keep, role="upper")
    for start in range(0, len(data), piece):
        stream.feed(data[start : start + piece])
    return stream.finish()


@pytest.mark.parametrize("piece", [7, 4096, 1 << 20])
@pytest.mark.parametrize("name", sorted(valid_corpus()))
def test_valid_files_read_the_same_in_any_pieces(name, piece):
    case = valid_corpus()[name]
    if piece < 50 and len(case.data) > 200_000:
        pytest.skip("7-byte pieces over a 1.5 MB file: the smaller files cover them")
    whole = read_mesh_bytes(case.data, max_triangles=MAX_TRIANGLES)
    assert (whole.file_format, whole.triangle_count) == (case.file_format, case.triangles)
    kept = _streamed(case.data, piece, keep=True)
    assert np.array_equal(kept.vertices, whole.vertices) and np.array_equal(kept.faces, whole.faces)
    checked = _streamed(case.data, piece)
    assert (checked.file_format, checked.triangle_count, len(checked.faces)) == (case.file_format, case.triangles, 0)


@pytest.mark.parametrize("piece", [13, 1 << 20])
@pytest.mark.parametrize("name", sorted(hostile_corpus()))
def test_hostile_files_are_refused_the_same_in_any_pieces(name, piece):
    case = hostile_corpus()[name]
    with pytest.raises(case.error) as whole:
        read_mesh_bytes(case.data, max_triangles=MAX_TRIANGLES, role="upper")
    with pytest.raises(case.error) as streamed:
        _streamed(case.data, piece)
    assert case.message in str(whole.value)
    assert str(streamed.value) == str(whole.value)


def test_an_obj_is_never_taken_for_a_binary_stl():
    """Issue 11: any OBJ over 84 bytes was read as a binary STL (a valid 1.5 MB OBJ got 422)."""
    vertices, faces = grid(40.0, 0.25)
    data = obj(vertices, faces)
    assert len(data) > 1_000_000 and sniff_format(data[:4096]) == "obj"
    assert read_mesh_bytes(data, max_triangles=MAX_TRIANGLES).triangle_count == len(faces)
    # a binary STL whose free-form header reads "solid ..." is still binary
    assert sniff_format(stl_binary(vertices, faces[:10], b"solid by a CAD tool")[:4096]) == "stl-binary"


def test_the_triangle_limit_is_checked_from_the_header_or_as_faces_arrive():
    vertices, faces = grid()
    for data in (stl_binary(vertices, faces), obj(vertices, faces)):
        with pytest.raises(ScanInputError, match="the limit is 100"):
            read_mesh_bytes(data, max_triangles=100)


def test_an_arch_is_judged_on_the_same_points_in_any_pieces():
    """The shape sample depends on the order of the points only, so streamed uploads get the aligner's verdict."""
    from mesial.common.meshformat import _Sample
    from tests.api.meshes import arch_stl

    points = np.random.default_rng(0).normal(size=(100_003, 3))
    whole = _Sample(1000)
    whole.add(points)
    for piece in (1, 999, 4096):
        pieces = _Sample(1000)
        for start in range(0, len(points), piece):
            pieces.add(points[start : start + piece])
        assert np.array_equal(pieces.points(), whole.points())
    assert 1000 <= len(whole.points()) <= 2000
    arch, plate = arch_stl(), stl_binary(*grid(40.0, 0.5))
    for piece in (13, 4096, 1 << 20):
        assert _streamed_arch(arch, piece).triangle_count == 2856
        with pytest.raises(ScanInputError, match=r"upper scan: 0\.00 mm thick"):
            _streamed_arch(plate, piece)


def _streamed_arch(data: bytes, piece: int):
    stream = MeshStream(max_triangles=MAX_TRIANGLES, keep=False, role="upper", arch=True)
    for start in range(0, len(data), piece):
        stream.feed(data[start : start + piece])
    return stream.finish()
