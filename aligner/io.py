"""Reading and writing mesh files (STL binary/ASCII, PLY, OBJ); no geometry here.

Every reader checks what it can *before* reading the payload: the file size
against ``max_bytes``, and the triangle count a binary STL or PLY header claims
against ``max_triangles`` and against the file size, so that a header claiming
two billion triangles is refused without allocating anything.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from mesial.aligner.errors import CorruptScan, ScanTooLarge, UnsupportedScanFormat
from mesial.aligner.transforms import unit

_STL_HEADER_BYTES = 84
_STL_RECORD_BYTES = 50
_STL_DTYPE = np.dtype([("normal", "<f4", (3,)), ("corners", "<f4", (3, 3)), ("attribute", "<u2")])
_PLY_FACE = re.compile(rb"^element\s+face\s+(\d+)\s*$", re.MULTILINE)
_PLY_VERTEX = re.compile(rb"^element\s+vertex\s+(\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class RawMesh:
    """A mesh as read from a file, before validation and cleaning.

    Attributes
    ----------
    vertices : (n, 3) float64
        Vertex positions in file units (millimetres expected).
    faces : (m, 3) int64
        Triangle vertex indices, counter-clockwise seen from outside.
    file_format : str
        ``"stl-binary"``, ``"stl-ascii"``, ``"ply"`` or ``"obj"``.
    sha256 : str
        Hex SHA-256 of the file bytes.
    size_bytes : int
        File size.
    """

    vertices: NDArray[np.float64]
    faces: NDArray[np.int64]
    file_format: str
    sha256: str
    size_bytes: int


def sniff_format(head: bytes, size: int) -> str:
    """The mesh format of a file from its first bytes and its size.

    Parameters
    ----------
    head : bytes
        At least the first 84 bytes of the file (all of it if shorter).
    size : int
        File size in bytes.

    Returns
    -------
    file_format : str
        ``"stl-binary"``, ``"stl-ascii"``, ``"ply"`` or ``"obj"``.
    """
    if head.startswith(b"ply"):
        return "ply"
    if len(head) >= _STL_HEADER_BYTES:
        count = int(np.frombuffer(head[80:84], dtype="<u4")[0])
        if _STL_HEADER_BYTES + _STL_RECORD_BYTES * count == size:
            return "stl-binary"
    stripped = head.lstrip()
    if stripped[:5].lower() == b"solid" and b"\0" not in head[:84]:
        return "stl-ascii"
    text = head.decode("ascii", errors="replace")
    if re.search(r"^\s*(v|vn|vt|f|o|g|mtllib|#)\s", text, re.MULTILINE) and "\0" not in text:
        return "obj"
    if len(head) >= _STL_HEADER_BYTES:
        return "stl-binary"  # a binary STL whose header and size disagree: reported by the reader
    raise UnsupportedScanFormat("not an STL, PLY or OBJ mesh file")


def read_mesh(path: str | Path, *, max_bytes: int, max_triangles: int) -> RawMesh:
    """Read a mesh file, refusing oversize or inconsistent files early.

    Parameters
    ----------
    path : str or Path
        STL (binary or ASCII), PLY or OBJ file.
    max_bytes : int
        Largest accepted file size in bytes (checked before reading).
    max_triangles : int
        Largest accepted triangle count (checked from the header where the
        format has one, before reading the payload).

    Returns
    -------
    mesh : RawMesh
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CorruptScan(f"cannot read {path.name}: {exc.strerror}") from None
    if size > max_bytes:
        raise ScanTooLarge(f"file is {size:,} bytes, the limit is {max_bytes:,}")
    if size == 0:
        raise CorruptScan("file is empty (0 bytes)")
    with path.open("rb") as handle:
        head = handle.read(4096)
        file_format = sniff_format(head, size)
        if file_format == "stl-binary":
            _check_stl_header(head, size, max_triangles)
        elif file_format == "ply":
            _check_ply_header(head, max_triangles)
        handle.seek(0)
        data = handle.read()
    digest = hashlib.sha256(data).hexdigest()
    parsed = _parse_simple_binary_ply(data) if file_format == "ply" else None
    if file_format == "stl-binary":
        vertices, faces = _parse_stl_binary(data)
    elif parsed is not None:
        vertices, faces = parsed
    else:
        vertices, faces = _parse_with_trimesh(data, file_format)
    if len(faces) > max_triangles:
        raise ScanTooLarge(f"{len(faces):,} triangles, the limit is {max_triangles:,}")
    return RawMesh(vertices, faces, file_format, digest, size)


def _check_stl_header(head: bytes, size: int, max_triangles: int) -> None:
    if len(head) < _STL_HEADER_BYTES:
        raise CorruptScan(f"binary STL is truncated: {size} bytes, shorter than its 84-byte header")
    count = int(np.frombuffer(head[80:84], dtype="<u4")[0])
    if count > max_triangles:
        raise ScanTooLarge(f"binary STL header claims {count:,} triangles, the limit is {max_triangles:,}")
    expected = _STL_HEADER_BYTES + _STL_RECORD_BYTES * count
    if expected != size:
        what = "truncated" if size < expected else "longer than its header says"
        raise CorruptScan(
            f"binary STL is {what}: the header claims {count:,} triangles "
            f"({expected:,} bytes) but the file has {size:,} bytes"
        )


def _check_ply_header(head: bytes, max_triangles: int) -> None:
    end = head.find(b"end_header")
    if end < 0:
        raise CorruptScan("PLY header has no end_header within its first 4 KiB")
    match = _PLY_FACE.search(head[:end])
    if match and int(match.group(1)) > max_triangles:
        raise ScanTooLarge(f"PLY header claims {int(match.group(1)):,} faces, the limit is {max_triangles:,}")
    if not _PLY_VERTEX.search(head[:end]):
        raise CorruptScan("PLY header declares no vertex element")


def _parse_stl_binary(data: bytes) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    records = np.frombuffer(data, dtype=_STL_DTYPE, offset=_STL_HEADER_BYTES)
    corners = np.ascontiguousarray(records["corners"]).reshape(-1, 3)
    vertices, inverse = merge_identical_points(corners)
    return vertices.astype(np.float64), inverse.reshape(-1, 3).astype(np.int64)


def merge_identical_points(points: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Merge bit-identical points (an STL's repeated triangle corners).

    Parameters
    ----------
    points : (k, 3) float32

    Returns
    -------
    unique : (n, 3) float32
        The distinct points, in order of first appearance of their hash.
    inverse : (k,) int64
        ``unique[inverse] == points``.
    """
    bits = np.ascontiguousarray(points, dtype=np.float32).view(np.uint32).astype(np.uint64)
    key = (
        (bits[:, 0] * np.uint64(0x9E3779B97F4A7C15))
        ^ (bits[:, 1] * np.uint64(0xC2B2AE3D27D4EB4F))
        ^ (bits[:, 2] * np.uint64(0x165667B19E3779F9))
    )
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    unique = points[first]
    if not np.array_equal(unique[inverse], points):  # a hash collision: exact, slower path
        exact, inverse = np.unique(np.ascontiguousarray(points).view("V12").ravel(), return_inverse=True)
        unique = exact.view(np.float32).reshape(-1, 3)
    return unique, inverse.astype(np.int64)


_PLY_SCALARS = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


def _parse_simple_binary_ply(data: bytes) -> tuple[NDArray[np.float64], NDArray[np.int64]] | None:
    """Vectorised reader for the common binary PLY layout, or None to fall back to trimesh.

    The layout: ``vertex`` then ``face`` elements only, vertex properties all
    scalars (x, y, z among them), the face element a single ``list`` property
    of triangles. Anything else (ASCII, other elements, polygons, a size
    mismatch) returns None and goes through the general reader.
    """
    end = data.find(b"end_header", 0, 1 << 16)
    if end < 0:
        return None
    body = data.index(b"\n", end) + 1
    lines = [line.split() for line in data[:end].decode("ascii", errors="replace").splitlines()]
    formats = [line for line in lines if line and line[0] == "format"]
    if not formats or formats[0][1:2] not in (["binary_little_endian"], ["binary_big_endian"]):
        return None
    order = "<" if formats[0][1] == "binary_little_endian" else ">"
    elements: list[tuple[str, int, list[list[str]]]] = []
    for line in lines:
        if line and line[0] == "element" and len(line) == 3 and line[2].isdigit():
            elements.append((line[1], int(line[2]), []))
        elif line and line[0] == "property" and elements:
            elements[-1][2].append(line[1:])
    if [name for name, _, _ in elements] != ["vertex", "face"]:
        return None
    (_, n_vertices, vertex_props), (_, n_faces, face_props) = elements
    if any(len(p) != 2 or p[0] not in _PLY_SCALARS for p in vertex_props):
        return None
    names = [p[1] for p in vertex_props]
    if len(set(names)) != len(names) or not {"x", "y", "z"} <= set(names):
        return None
    if len(face_props) != 1 or len(face_props[0]) != 4 or face_props[0][0] != "list":
        return None
    count_type, index_type = _PLY_SCALARS.get(face_props[0][1]), _PLY_SCALARS.get(face_props[0][2])
    if count_type is None or index_type is None or index_type[0] not in "iu":
        return None
    vertex_dtype = np.dtype([(name, order + _PLY_SCALARS[kind]) for kind, name in vertex_props])
    face_dtype = np.dtype([("n", order + count_type), ("i", order + index_type, (3,))])
    if len(data) != body + n_vertices * vertex_dtype.itemsize + n_faces * face_dtype.itemsize:
        return None  # not all triangles, or trailing data: the general reader decides
    table = np.frombuffer(data, dtype=vertex_dtype, count=n_vertices, offset=body)
    face_table = np.frombuffer(data, dtype=face_dtype, count=n_faces, offset=body + n_vertices * vertex_dtype.itemsize)
    if n_faces and not (face_table["n"] == 3).all():
        return None
    vertices = np.stack([table["x"], table["y"], table["z"]], axis=1).astype(np.float64)
    return vertices, face_table["i"].astype(np.int64)


def _parse_with_trimesh(data: bytes, file_format: str) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    import trimesh

    file_type = {"stl-ascii": "stl", "ply": "ply", "obj": "obj"}[file_format]
    try:
        loaded = trimesh.load(io.BytesIO(data), file_type=file_type, process=False, force="mesh")
    except Exception as exc:
        raise CorruptScan(f"cannot parse {file_format.upper()}: {type(exc).__name__}: {exc}"[:300]) from None
    if not isinstance(loaded, trimesh.Trimesh):
        raise CorruptScan(f"{file_format.upper()} file holds no triangle mesh")
    vertices = np.asarray(loaded.vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(loaded.faces, dtype=np.int64).reshape(-1, 3)
    return vertices, faces


def write_stl(path: str | Path, vertices: NDArray[np.float64], faces: NDArray[np.int64]) -> None:
    """Write a binary STL.

    Parameters
    ----------
    path : str or Path
    vertices : (n, 3) float, millimetres
    faces : (m, 3) int
    """
    corners = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
    normals = unit(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]))
    records = np.zeros(len(corners), dtype=_STL_DTYPE)
    records["normal"] = normals
    records["corners"] = corners
    header = b"Mesial binary STL, millimetres".ljust(80, b" ")
    with Path(path).open("wb") as handle:
        handle.write(header)
        handle.write(np.uint32(len(records)).tobytes())
        handle.write(records.tobytes())


def write_ply(
    path: str | Path,
    vertices: NDArray[np.float64],
    faces: NDArray[np.int64],
    *,
    colors: NDArray[np.uint8] | None = None,
    scalars: dict[str, NDArray[np.float64]] | None = None,
) -> None:
    """Write a binary little-endian PLY with optional colours and scalar fields.

    Parameters
    ----------
    path : str or Path
    vertices : (n, 3) float, millimetres
    faces : (m, 3) int
    colors : (n, 3) uint8, optional
        Per-vertex RGB.
    scalars : dict of name -> (n,) float, optional
        Extra per-vertex float32 properties (e.g. ``distance`` in mm).
    """
    vertices = np.asarray(vertices)
    fields: list[tuple[str, str]] = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    for name in scalars or {}:
        fields.append((name, "<f4"))
    table = np.zeros(len(vertices), dtype=np.dtype(fields))
    table["x"], table["y"], table["z"] = vertices[:, 0], vertices[:, 1], vertices[:, 2]
    if colors is not None:
        table["red"], table["green"], table["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    for name, values in (scalars or {}).items():
        table[name] = values
    face_table = np.zeros(len(faces), dtype=np.dtype([("n", "u1"), ("i", "<i4", (3,))]))
    face_table["n"] = 3
    face_table["i"] = faces
    ply_types = {"<f4": "float", "u1": "uchar"}
    lines = ["ply", "format binary_little_endian 1.0", "comment Mesial, millimetres"]
    lines.append(f"element vertex {len(vertices)}")
    lines += [f"property {ply_types[kind]} {name}" for name, kind in fields]
    lines += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    with Path(path).open("wb") as handle:
        handle.write(("\n".join(lines) + "\n").encode("ascii"))
        handle.write(table.tobytes())
        handle.write(face_table.tobytes())


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
