"""Small, valid meshes of each accepted format (and helpers to break them).

They have the size of a dental scan (10 mm squares; the upload refuses what is not
5-120 mm across, as the aligner does).
"""

from __future__ import annotations

import struct

import numpy as np

TRIANGLES = [
    ((0.0, 0.0, 0.0), (10.0, 0.0, 0.0), (0.0, 10.0, 0.0)),
    ((10.0, 0.0, 0.0), (10.0, 10.0, 0.0), (0.0, 10.0, 0.0)),
]


def stl_binary(n: int = 2, header: bytes = b"mesial test mesh") -> bytes:
    """``n`` triangles side by side along x, every 50 of them starting again (at most 35 mm across)."""
    records = np.zeros(n, dtype=[("normal", "<f4", (3,)), ("corners", "<f4", (3, 3)), ("attribute", "<u2")])
    records["normal"] = (0.0, 0.0, 1.0)
    index = np.arange(n)
    records["corners"] = np.asarray(TRIANGLES, dtype=np.float32)[index % 2]
    records["corners"][:, :, 0] += ((index % 50) * 0.5)[:, None]
    return header.ljust(80, b" ")[:80] + struct.pack("<I", n) + records.tobytes()


def stl_ascii() -> bytes:
    lines = ["solid test"]
    for tri in TRIANGLES:
        lines += ["  facet normal 0 0 1", "    outer loop"]
        lines += [f"      vertex {x} {y} {z}" for x, y, z in tri]
        lines += ["    endloop", "  endfacet"]
    lines.append("endsolid test")
    return ("\n".join(lines) + "\n").encode()


def ply_ascii() -> bytes:
    return (
        b"ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
        b"element face 2\nproperty list uchar int vertex_indices\nend_header\n"
        b"0 0 0\n10 0 0\n10 10 0\n0 10 0\n3 0 1 2\n3 0 2 3\n"
    )


def ply_binary() -> bytes:
    header = (
        b"ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
        b"property float z\nelement face 2\nproperty list uchar int vertex_indices\nend_header\n"
    )
    body = b"".join(struct.pack("<3f", *v) for v in [(0, 0, 0), (10, 0, 0), (10, 10, 0), (0, 10, 0)])
    body += b"".join(struct.pack("<B3i", 3, *f) for f in [(0, 1, 2), (0, 2, 3)])
    return header + body


def obj() -> bytes:
    return b"# test\nv 0 0 0\nv 10 0 0\nv 10 10 0\nv 0 10 0\nf 1 2 3\nf 1 3 4\n"
