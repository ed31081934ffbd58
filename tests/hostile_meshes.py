"""A corpus of valid and hostile mesh files, generated (shared by the aligner and the upload tests).

Every hostile file must be refused by the aligner's reader and by the API's upload
check alike, with the error class and a message fragment given here; every valid one
accepted by both. The files are small (a 20 mm grid; one OBJ of about 1.5 MB).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mesial.common.errors import (
    CorruptScan,
    EmptyScan,
    ImplausibleScale,
    ScanInputError,
    ScanTooLarge,
    UnsupportedScanFormat,
)

STL_DTYPE = np.dtype([("normal", "<f4", (3,)), ("corners", "<f4", (3, 3)), ("attribute", "<u2")])


def grid(size_mm: float = 20.0, step_mm: float = 1.0, z: float = 0.0) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """A square grid ``(n, 3)``, ``(m, 3)`` in the plane ``z``, normals +z."""
    line = np.arange(0.0, size_mm + 1e-9, step_mm)
    x, y = np.meshgrid(line, line, indexing="ij")
    vertices = np.stack([x.ravel(), y.ravel(), np.full(x.size, z)], axis=1)
    n = len(line)
    i, j = np.meshgrid(np.arange(n - 1), np.arange(n - 1), indexing="ij")
    a = (i * n + j).ravel()
    faces = np.concatenate([np.stack([a, a + n, a + 1], 1), np.stack([a + 1, a + n, a + n + 1], 1)])
    return vertices, faces.astype(np.int64)


def stl_binary(vertices: NDArray[np.float64], faces: NDArray[np.int64], header: bytes = b"test") -> bytes:
    records = np.zeros(len(faces), dtype=STL_DTYPE)
    records["normal"] = (0.0, 0.0, 1.0)
    records["corners"] = vertices[faces]
    return header.ljust(80, b" ")[:80] + struct.pack("<I", len(faces)) + records.tobytes()


def stl_ascii_lines(vertices: NDArray[np.float64], faces: NDArray[np.int64]) -> list[str]:
    lines = ["solid test"]
    for face in faces:
        lines += ["  facet normal 0 0 1", "    outer loop"]
        lines += [f"      vertex {x:g} {y:g} {z:g}" for x, y, z in vertices[face]]
        lines += ["    endloop", "  endfacet"]
    return [*lines, "endsolid test"]


def text(lines: list[str], eol: str = "\n") -> bytes:
    return (eol.join(lines) + eol).encode()


def ply_binary(vertices: NDArray[np.float64], faces: NDArray[np.int64], extra: str = "") -> bytes:
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment test\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n{extra}"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    table = np.zeros(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    table["n"], table["i"] = 3, faces
    return header.encode() + vertices.astype("<f4").tobytes() + table.tobytes()


def ply_ascii(vertices: NDArray[np.float64], faces: NDArray[np.int64]) -> bytes:
    lines = [
        "ply", "format ascii 1.0", f"element vertex {len(vertices)}", "property float x", "property float y",
        "property float z", f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header",
    ]  # fmt: skip
    lines += [f"{x:g} {y:g} {z:g}" for x, y, z in vertices]
    lines += [f"3 {a} {b} {c}" for a, b, c in faces]
    return text(lines)


def obj(vertices: NDArray[np.float64], faces: NDArray[np.int64]) -> bytes:
    lines = ["# test", "o grid"] + [f"v {x:g} {y:g} {z:g}" for x, y, z in vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    return text(lines)


@dataclass(frozen=True)
class Valid:
    data: bytes
    file_format: str  # as MeshStream names it
    triangles: int


@dataclass(frozen=True)
class Hostile:
    data: bytes
    error: type[ScanInputError]
    message: str  # a fragment of the message


def valid_corpus() -> dict[str, Valid]:
    vertices, faces = grid()
    m = len(faces)
    ascii_lines = stl_ascii_lines(vertices, faces)
    # an OBJ of about 1.5 MB (once read as a binary STL: 422 "more triangles than allowed")
    big_vertices, big_faces = grid(40.0, 0.25)
    mixed_obj = text(
        ["# polygons, normals, texture coordinates, negative indices", "mtllib x.mtl", "v 0 0 0", "v 10 0 0",
         "v 10 10 0", "v 0 10 0", "vn 0 0 1", "vt 0 0", "usemtl a", "s off", "f 1/1/1 2/1/1 3/1/1 4/1/1",
         "f -4//1 -3//1 -1//1"]
    )  # fmt: skip
    return {
        "stl-binary": Valid(stl_binary(vertices, faces), "stl-binary", m),
        "stl-binary-solid-header": Valid(stl_binary(vertices, faces, b"solid made by a CAD tool"), "stl-binary", m),
        "stl-ascii": Valid(text(ascii_lines), "stl-ascii", m),
        "stl-ascii-crlf-blank-lines": Valid(text([*ascii_lines[:1], "", *ascii_lines[1:]], eol="\r\n"), "stl-ascii", m),
        "ply-binary": Valid(ply_binary(vertices, faces), "ply", m),
        "ply-ascii": Valid(ply_ascii(vertices, faces), "ply", m),
        "obj": Valid(obj(vertices, faces), "obj", m),
        "obj-polygons": Valid(mixed_obj, "obj", 3),
        "obj-1.5MB": Valid(obj(big_vertices, big_faces), "obj", len(big_faces)),
    }


def hostile_corpus() -> dict[str, Hostile]:
    vertices, faces = grid()
    lines = stl_ascii_lines(vertices, faces[:4])

    def without(line: int) -> bytes:  # 1-based line numbers, as in the messages
        return text(lines[: line - 1] + lines[line:])

    nan = vertices.copy()
    nan[7] = np.nan
    inf = vertices.copy()
    inf[3, 1] = np.inf
    tiny = grid(2.0, 0.2)  # 2.8 mm across, 200 triangles
    ply_bad_index = ply_binary(vertices, np.vstack([faces, [[0, 1, len(vertices) + 5]]]))
    ply_negative = ply_ascii(vertices, np.vstack([faces[:3], [[0, -1, 2]]]))
    png = b"\x89PNG\r\n\x1a\n" + bytes(200)
    return {
        "nan-coordinates": Hostile(stl_binary(nan, faces), CorruptScan, "NaN or infinite"),
        "infinite-coordinates": Hostile(ply_binary(inf, faces), CorruptScan, "NaN or infinite"),
        "nan-obj": Hostile(obj(nan, faces), CorruptScan, "NaN or infinite"),
        "1e31-coordinates": Hostile(stl_binary(vertices * 1e31, faces), ImplausibleScale, "bounding box diagonal"),
        "metres": Hostile(stl_binary(vertices / 1000.0, faces), ImplausibleScale, "looks like m"),
        "inches": Hostile(ply_binary(vertices / 25.4, faces), ImplausibleScale, "looks like in"),
        "one-point": Hostile(stl_binary(np.zeros_like(vertices) + 5.0, faces), EmptyScan, "degenerate"),
        "tiny-object": Hostile(stl_binary(*tiny), ImplausibleScale, "a dental scan is 5-160 mm"),
        "stl-no-outer-loop": Hostile(without(3), CorruptScan, "line 3: expected 'outer loop'"),
        "stl-no-endloop": Hostile(without(7), CorruptScan, "line 7: expected 'vertex x y z' or 'endloop'"),
        "stl-no-endfacet": Hostile(without(8), CorruptScan, "line 8: expected 'endfacet'"),
        "stl-two-vertices": Hostile(without(6), CorruptScan, "line 6: a facet has 2 vertices, expected 3"),
        "stl-four-vertices": Hostile(
            text([*lines[:6], lines[5], *lines[6:]]), CorruptScan, "line 7: a facet has more than 3 vertices"
        ),
        "stl-no-endsolid": Hostile(text(lines[:-1]), CorruptScan, "no 'endsolid'"),
        "stl-bad-number": Hostile(
            text([*lines[:4], "      vertex 1.0 zero 2.0", *lines[5:]]), CorruptScan, "line 5: b'zero' is not a number"
        ),
        "stl-binary-truncated": Hostile(stl_binary(vertices, faces)[:-20], CorruptScan, "truncated"),
        "stl-binary-longer": Hostile(stl_binary(vertices, faces) + bytes(30), CorruptScan, "longer than its header"),
        "stl-binary-claims-too-many": Hostile(
            b"x" * 80 + struct.pack("<I", 43_000_000) + bytes(50), ScanTooLarge, "claims 43,000,000 triangles"
        ),
        "ply-index-out-of-range": Hostile(ply_bad_index, CorruptScan, f"refers to vertex {len(vertices) + 5}"),
        "ply-negative-index": Hostile(ply_negative, CorruptScan, "refers to vertex -1"),
        "ply-truncated": Hostile(ply_binary(vertices, faces)[:-7], CorruptScan, "truncated"),
        "ply-bad-header": Hostile(
            ply_binary(vertices, faces, extra="propertee float w\n"), CorruptScan, "PLY header line 8"
        ),
        "obj-missing-vertex": Hostile(
            obj(vertices, faces) + b"f 1 2 9999\n", CorruptScan, "a face refers to vertex 9999"
        ),
        "obj-not-a-statement": Hostile(obj(vertices, faces) + b"hello there\n", CorruptScan, "not an OBJ statement"),
        "png": Hostile(png, UnsupportedScanFormat, "not an STL, PLY or OBJ"),
        "letter": Hostile(b"Dear doctor,\nplease find the scan attached.\n", UnsupportedScanFormat, "neither"),
        "empty": Hostile(b"", UnsupportedScanFormat, "empty"),
    }
