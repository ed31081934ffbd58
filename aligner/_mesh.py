"""Per-vertex geometry of triangle meshes shared by validation and the distance queries."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def vertex_normals(
    vertices: NDArray[np.float64], faces: NDArray[np.int64], face_normals: NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """Area-weighted unit vertex normals.

    Parameters
    ----------
    vertices : (n, 3) float, millimetres
    faces : (m, 3) int
    face_normals : (m, 3) float, optional
        Area-weighted face normals (twice the area), when already computed.

    Returns
    -------
    normals : (n, 3) float
        Unit vectors (zero for a vertex whose triangles cancel out).
    """
    if face_normals is None:
        corners = vertices[faces]
        face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros_like(vertices)
    flat = faces.ravel()
    for axis in range(3):
        normals[:, axis] = np.bincount(flat, weights=np.repeat(face_normals[:, axis], 3), minlength=len(vertices))
    lengths = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.asarray(np.divide(normals, lengths, out=np.zeros_like(normals), where=lengths > 0), dtype=np.float64)
