"""Small, valid meshes of each accepted format (and helpers to break them)."""

from __future__ import annotations

import struct

TRIANGLES = [((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)), ((1.0, 0.0, 0.0), (1.0, 1.0, 0.0), (0.0, 1.0, 0.0))]


def stl_binary(n: int = 2, header: bytes = b"mesial test mesh") -> bytes:
    out = bytearray(header.ljust(80, b" ")[:80])
    out += struct.pack("<I", n)
    for i in range(n):
        tri = TRIANGLES[i % 2]
        out += struct.pack("<3f", 0.0, 0.0, 1.0)
        for v in tri:
            out += struct.pack("<3f", v[0] + i, v[1], v[2])
        out += b"\0\0"
    return bytes(out)


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
        b"0 0 0\n1 0 0\n1 1 0\n0 1 0\n3 0 1 2\n3 0 2 3\n"
    )


def ply_binary() -> bytes:
    header = (
        b"ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
        b"property float z\nelement face 2\nproperty list uchar int vertex_indices\nend_header\n"
    )
    body = b"".join(struct.pack("<3f", *v) for v in [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)])
    body += b"".join(struct.pack("<B3i", 3, *f) for f in [(0, 1, 2), (0, 2, 3)])
    return header + body


def obj() -> bytes:
    return b"# test\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3\nf 1 3 4\n"
