"""Downsampled clouds for the global step: voxel centroids with averaged mesh normals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Cloud:
    """A downsampled cloud.

    Attributes
    ----------
    points : (n, 3) float, millimetres
        Centroid of the input points in each occupied voxel.
    normals : (n, 3) float
        Unit mean of the mesh's outward normals in each voxel.
    """

    points: FloatArray
    normals: FloatArray


def voxel_representatives(points: FloatArray, voxel_mm: float) -> NDArray[np.int64]:
    """Index of one input point per occupied voxel (the first in input order).

    Unlike averaging, this keeps real samples (no shrinkage on curved surfaces).

    Parameters
    ----------
    points : (n, 3) float, millimetres
    voxel_mm : float

    Returns
    -------
    index : (k,) int
    """
    keys = np.floor((points - points.min(axis=0)) / voxel_mm).astype(np.int64)
    dims = keys.max(axis=0) + 1
    flat = (keys[:, 0] * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2]
    _, first = np.unique(flat, return_index=True)
    return np.sort(first).astype(np.int64)


def downsample(points: FloatArray, normals: FloatArray, voxel_mm: float) -> Cloud:
    """Voxel-downsample points and their outward normals.

    Parameters
    ----------
    points : (n, 3) float, millimetres
    normals : (n, 3) float
        Outward unit normals of the mesh.
    voxel_mm : float

    Returns
    -------
    cloud : Cloud
    """
    keys = np.floor((points - points.min(axis=0)) / voxel_mm).astype(np.int64)
    dims = keys.max(axis=0) + 1
    flat = (keys[:, 0] * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2]
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), 6))
    for axis in range(3):
        sums[:, axis] = np.bincount(inverse, weights=points[:, axis], minlength=len(counts))
        sums[:, 3 + axis] = np.bincount(inverse, weights=normals[:, axis], minlength=len(counts))
    mean_normals = sums[:, 3:]
    lengths = np.linalg.norm(mean_normals, axis=1, keepdims=True)
    keep = lengths[:, 0] > 1e-6
    return Cloud(
        sums[keep, :3] / counts[keep, None],
        mean_normals[keep] / lengths[keep],
    )
