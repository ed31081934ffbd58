"""bench/heldout_pairs.py: the VTK XML PolyData reader and the pairing of uppers with other patients' lowers."""

from __future__ import annotations

import base64
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from heldout_pairs import crown_span, pair_by_span, read_vtp

from mesial.aligner.samples import Mesh, generate_case
from mesial.aligner.transforms import random_rigid, transform_points

POINTS = np.array([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [0.0, 2.5, 0.0], [1.0, 1.0, 3.25]], dtype=np.float32)
FACES = np.array([[0, 1, 2], [0, 1, 3], [1, 2, 3]], dtype=np.int64)


def _block(data: bytes, *, encoding: str, compressed: bool, header: type[np.unsignedinteger], block: int) -> bytes:
    """One appended array as VTK writes it: a header (sizes) then the data, each base64-encoded apart."""
    if not compressed:
        return np.array([len(data)], dtype=header).tobytes() + data
    chunks = [data[i : i + block] for i in range(0, len(data), block)]
    packed = [zlib.compress(c) for c in chunks]
    last = len(chunks[-1]) if chunks else 0
    head = np.array([len(chunks), block, last, *[len(p) for p in packed]], dtype=header).tobytes()
    if encoding == "base64":
        return base64.b64encode(head) + base64.b64encode(b"".join(packed))
    return head + b"".join(packed)


def _vtp(
    path: Path,
    *,
    encoding: str = "base64",
    compressed: bool = True,
    header: type[np.unsignedinteger] = np.uint32,
    offsets: NDArray[np.int64] | None = None,
    faces: NDArray[np.int64] = FACES,
    block: int = 16,
) -> Path:
    """A .vtp with appended data (points Float32, connectivity and offsets Int64), as VTK lays it out."""
    offs = np.arange(3, 3 * len(faces) + 1, 3, dtype=np.int64) if offsets is None else offsets
    arrays = [POINTS.tobytes(), faces.astype(np.int64).tobytes(), offs.tobytes()]
    blob, at = b"", []
    for data in arrays:
        at.append(len(blob))
        blob += _block(data, encoding=encoding, compressed=compressed, header=header, block=block)
    compressor = ' compressor="vtkZLibDataCompressor"' if compressed else ""
    kind = "UInt32" if header is np.uint32 else "UInt64"
    xml = (
        f'<?xml version="1.0"?>\n<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" header_type="{kind}"{compressor}>\n'
        f'  <PolyData>\n    <Piece NumberOfPoints="{len(POINTS)}" NumberOfPolys="{len(faces)}">\n'
        '      <Lines>\n        <DataArray type="Int64" Name="connectivity" format="appended" offset="0"/>\n      </Lines>\n'
        f'      <Points>\n        <DataArray type="Float32" Name="Points" NumberOfComponents="3" format="appended" offset="{at[0]}"/>\n      </Points>\n'
        f'      <Polys>\n        <DataArray type="Int64" Name="connectivity" format="appended" offset="{at[1]}"/>\n'
        f'        <DataArray type="Int64" Name="offsets" format="appended" offset="{at[2]}"/>\n      </Polys>\n'
        f'    </Piece>\n  </PolyData>\n  <AppendedData encoding="{encoding}">\n   _'
    ).encode()
    path.write_bytes(xml + blob + b"\n  </AppendedData>\n</VTKFile>\n")
    return path


@pytest.mark.parametrize(
    ("encoding", "compressed", "header"),
    [("base64", True, np.uint32), ("raw", True, np.uint64), ("raw", False, np.uint32)],
)
def test_read_vtp_gives_back_the_points_and_triangles(
    tmp_path: Path, encoding: str, compressed: bool, header: type[np.unsignedinteger]
) -> None:
    mesh = read_vtp(_vtp(tmp_path / "arch.vtp", encoding=encoding, compressed=compressed, header=header))
    assert np.array_equal(mesh.vertices, POINTS.astype(np.float64))
    assert np.array_equal(mesh.faces, FACES)


def test_read_vtp_joins_several_compressed_blocks(tmp_path: Path) -> None:
    mesh = read_vtp(_vtp(tmp_path / "arch.vtp", block=7))  # every array split into blocks of 7 bytes
    assert np.array_equal(mesh.vertices, POINTS.astype(np.float64))
    assert np.array_equal(mesh.faces, FACES)


def test_read_vtp_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    quads = _vtp(tmp_path / "quads.vtp", offsets=np.array([4, 9], dtype=np.int64))
    with pytest.raises(ValueError, match="not all triangles"):
        read_vtp(quads)
    beyond = _vtp(tmp_path / "beyond.vtp", faces=np.array([[0, 1, 7]], dtype=np.int64))
    with pytest.raises(ValueError, match="does not exist"):
        read_vtp(beyond)
    plain = _vtp(tmp_path / "plain.vtp", encoding="base64", compressed=False)
    with pytest.raises(ValueError, match="without compression"):
        read_vtp(plain)
    other = tmp_path / "other.vtp"
    other.write_text('<?xml version="1.0"?>\n<VTKFile type="UnstructuredGrid"></VTKFile>\n')
    with pytest.raises(ValueError, match="not a VTK XML PolyData"):
        read_vtp(other)


def test_pairing_minimises_the_total_size_difference() -> None:
    # nearest-first would give upper 0 (50.9 mm) the 50.5 mm lower and upper 1 the 55 mm one (5.4 mm in
    # all); the assignment swaps them (4.1 + 0.5 mm)
    uppers = [(50.9, 40.0), (50.0, 40.0)]
    lowers = [(50.5, 40.0), (55.0, 40.0)]
    assert sorted(pair_by_span(uppers, lowers)) == [(0, 1), (1, 0)]
    # depth counts half as much as width
    assert pair_by_span([(50.0, 40.0)], [(52.0, 40.0), (50.0, 44.5)]) == [(0, 0)]
    with pytest.raises(ValueError, match="at most once"):
        pair_by_span(uppers, lowers[:1])


def test_crown_span_measures_the_occlusal_table_in_any_pose() -> None:
    case = generate_case(3, vertices=20_000)
    spans = [crown_span(arch) for arch in (case.upper, case.lower)]
    for (width, depth), arch in zip(spans, (case.upper, case.lower), strict=True):
        assert 40.0 < width < 70.0 and 30.0 < depth < 60.0
        assert all(abs(v * 10 - round(v * 10)) < 1e-9 for v in (width, depth))  # to 0.1 mm
        moved = Mesh(
            transform_points(arch.vertices, random_rigid(np.random.default_rng(1), translation_mm=40.0)), arch.faces
        )
        assert np.allclose(crown_span(moved), (width, depth), atol=0.3)
    assert spans[0][0] > spans[1][0]  # the generated upper arch is the wider
