"""Small, valid meshes of each accepted format (and helpers to break them).

They have the size of a dental scan (10 mm squares; the upload refuses what is not
5-160 mm across, as the aligner does); :func:`arch_stl` is what an upper or lower arch
upload must be (enough triangles, long, not flat, U-shaped).
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


def arch_stl(header: bytes = b"mesial test arch") -> bytes:
    """A U-shaped tube (a horseshoe 50 mm wide, 8 mm thick, 2 856 triangles): an arch to the upload check."""
    vertices, faces = arch_arrays()
    records = np.zeros(len(faces), dtype=[("normal", "<f4", (3,)), ("corners", "<f4", (3, 3)), ("attribute", "<u2")])
    records["corners"] = vertices[faces]
    return header.ljust(80, b" ")[:80] + struct.pack("<I", len(faces)) + records.tobytes()


def arch_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The vertices (n, 3) and triangles (m, 3) of :func:`arch_stl`."""
    s = np.linspace(-1.8, 1.8, 120)  # angle along the horseshoe
    path = np.stack([25.0 * np.sin(s), 20.0 * np.cos(s), np.zeros_like(s)], axis=1)
    tangent = np.stack([25.0 * np.cos(s), -20.0 * np.sin(s), np.zeros_like(s)], axis=1)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normal = np.stack([tangent[:, 1], -tangent[:, 0], np.zeros_like(s)], axis=1)
    phi = np.linspace(0.0, 2 * np.pi, 12, endpoint=False)
    ring = np.cos(phi)[None, :, None] * normal[:, None, :] + np.sin(phi)[None, :, None] * np.array([0.0, 0.0, 1.0])
    vertices = (path[:, None, :] + 4.0 * ring).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(len(s) - 1), np.arange(len(phi)), indexing="ij")
    a, b = (i * len(phi) + j).ravel(), (i * len(phi) + (j + 1) % len(phi)).ravel()
    faces = np.concatenate([np.stack([a, a + len(phi), b], 1), np.stack([b, a + len(phi), b + len(phi)], 1)])
    return vertices, faces
