"""Fixtures for the aligner tests: small generated cases and analytic meshes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from mesial.aligner.samples import SampleCase, generate_case


@pytest.fixture(scope="session")
def small_case() -> SampleCase:
    """A generated case with small arches (fast), two bite scans."""
    return generate_case(3, vertices=20_000)


def grid_plane(
    size_mm: float, step_mm: float, z: float = 0.0, up: bool = True
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """A square grid ``(n, 3)``, ``(m, 3)`` in the plane ``z``, normals +z (or -z)."""
    line = np.arange(-size_mm / 2, size_mm / 2 + 1e-9, step_mm)
    x, y = np.meshgrid(line, line, indexing="ij")
    vertices = np.stack([x.ravel(), y.ravel(), np.full(x.size, z)], axis=1)
    n = len(line)
    i, j = np.meshgrid(np.arange(n - 1), np.arange(n - 1), indexing="ij")
    a = (i * n + j).ravel()
    faces = np.concatenate([np.stack([a, a + n, a + 1], 1), np.stack([a + 1, a + n, a + n + 1], 1)])
    if not up:
        faces = faces[:, [0, 2, 1]]
    return vertices, faces.astype(np.int64)


def uv_sphere(
    radius: float, centre: Any, rings: int = 200, segments: int = 400
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """A closed UV sphere with outward normals."""
    theta = np.linspace(0, np.pi, rings + 1)[1:-1]
    phi = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    body = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=-1).reshape(-1, 3)
    vertices = np.vstack([[0, 0, 1], body, [0, 0, -1]]) * radius + np.asarray(centre)
    faces = []
    top, bottom = 0, len(vertices) - 1

    def ring(r: int, s: int) -> int:
        return 1 + r * segments + (s % segments)

    for s in range(segments):
        faces.append([top, ring(0, s), ring(0, s + 1)])
        faces.append([bottom, ring(rings - 2, s + 1), ring(rings - 2, s)])
    for r in range(rings - 2):
        for s in range(segments):
            faces.append([ring(r, s), ring(r + 1, s), ring(r + 1, s + 1)])
            faces.append([ring(r, s), ring(r + 1, s + 1), ring(r, s + 1)])
    return vertices, np.array(faces, dtype=np.int64)
