"""Reading and writing mesh files (STL binary/ASCII, PLY, OBJ); no geometry here.

Reading goes through :mod:`mesial.common.meshformat`, the one parser and validator the
API's upload path uses too: the file size is checked against ``max_bytes`` before
anything is read, the triangle count a binary STL or PLY header claims against
``max_triangles`` before the payload is parsed (a header claiming two billion triangles
is refused without allocating anything), the grammar strictly (a malformed ASCII STL
is refused with its line number), and the geometry (finite, in range, dental size). A binary
STL's corners are merged into vertices by the aligner's compiled :func:`._clean.merge_corners`
(the values of :func:`mesial.common.meshformat.merge_identical_points`).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._clean import merge_corners
from mesial.aligner.transforms import unit
from mesial.common.errors import CorruptScan, ScanTooLarge
from mesial.common.meshformat import STL_DTYPE, MeshStream, merge_identical_points, sniff_format

if TYPE_CHECKING:
    from mesial.aligner._prefetch import FilePrefetch

__all__ = ["RawMesh", "merge_identical_points", "read_mesh", "sha256_file", "sniff_format", "write_ply", "write_stl"]


@dataclass(frozen=True)
class RawMesh:
    """A mesh as read from a file, checked but not cleaned.

    Attributes
    ----------
    vertices : (n, 3) float64
        Vertex positions in file units (millimetres expected).
    faces : (m, 3) int64
        Triangle vertex indices, counter-clockwise seen from outside.
    file_format : str
        ``"stl-binary"``, ``"stl-ascii"``, ``"ply"`` or ``"obj"`` (``"arrays"`` for a mesh given
        as arrays: :func:`~.validate.scan_from_arrays`).
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


def read_mesh(
    path: str | Path,
    *,
    max_bytes: int,
    max_triangles: int,
    unit: str | None = None,
    role: str = "",
    arch: bool = False,
    prefetched: FilePrefetch | None = None,
) -> RawMesh:
    """Read and check a mesh file, refusing oversize or inconsistent files early.

    Parameters
    ----------
    path : str or Path
        STL (binary or ASCII), PLY or OBJ file.
    max_bytes : int
        Largest accepted file size in bytes (checked before reading).
    max_triangles : int
        Largest accepted triangle count (checked from the header where the
        format has one, before reading the payload).
    unit : str, optional
        The file's length unit when not millimetres (for the size check).
    role : str
        Named in error messages.
    arch : bool
        An upper or lower arch: its shape is checked too.
    prefetched : FilePrefetch, optional
        Files already read and hashed on a thread (:mod:`._prefetch`): this one's bytes and SHA-256
        are taken from it when it is still the file that was read (the same bytes as reading it now).

    Returns
    -------
    mesh : RawMesh
    """
    path = Path(path)
    try:
        status = path.stat()
    except OSError as exc:
        raise CorruptScan(f"cannot read {path.name}: {exc.strerror}", role) from None
    size = status.st_size
    if size > max_bytes:
        raise ScanTooLarge(f"file is {size:,} bytes, the limit is {max_bytes:,}", role)
    read = prefetched.take(path, status) if prefetched is not None else None
    stream = MeshStream(max_triangles=max_triangles, unit=unit, role=role, arch=arch, merge=merge_corners)
    if read is not None:
        data, sha256 = read
        stream.feed(data)
        mesh = stream.finish()
        return RawMesh(mesh.vertices, mesh.faces, mesh.file_format, sha256, size)
    data = path.read_bytes()
    with ThreadPoolExecutor(max_workers=1) as pool:  # hashlib and numpy's sort both release the GIL
        digest = pool.submit(lambda: hashlib.sha256(data).hexdigest())
        stream.feed(data)
        mesh = stream.finish()
        return RawMesh(mesh.vertices, mesh.faces, mesh.file_format, digest.result(), size)


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
    records = np.zeros(len(corners), dtype=STL_DTYPE)
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
        handle.write(table.view(np.uint8).data)  # (the arrays' own bytes: no copy of them)
        handle.write(face_table.view(np.uint8).data)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
