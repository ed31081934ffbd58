"""The registration's preprocessing compiled (``_prep.c``): voxel thinning, an arch's open border, mean
and mirror symmetry costs, the same values as the NumPy code they stand for."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from numpy.typing import NDArray

from mesial.aligner._anatomy import (
    border_edges,
    border_edges_numpy,
    crown_direction,
    mirror_costs,
    mirror_costs_numpy,
    row_mean,
    sorted_percentiles,
)
from mesial.aligner._features import first_occurrences, invariant_representatives, key_least, voxel_representatives
from mesial.aligner._field import DistanceField

from .conftest import grid_plane


def _clouds() -> Iterator[tuple[NDArray[np.float64], float]]:
    rng = np.random.default_rng(7)
    yield rng.normal(size=(5000, 3)) * [30.0, 20.0, 8.0] - 100.0, 1.0  # many per voxel, negative coordinates
    yield rng.random((3000, 3)) * 1000.0, 0.25  # mostly one per voxel, large grid
    grid = np.stack(np.meshgrid(*[np.arange(0.0, 6.0, 0.5)] * 3, indexing="ij"), -1).reshape(-1, 3)
    yield rng.permutation(np.concatenate([grid, grid, grid + 0.25])), 0.5  # on the voxel borders, repeated
    yield np.array([[1.0, 2.0, 3.0]]), 1.0  # one point
    yield np.repeat(rng.random((1, 3)), 50, axis=0), 0.1  # one voxel, flat on every axis
    yield np.concatenate([rng.random((200, 3)), [[1e6, -1e6, 5e5]]]), 0.3  # far apart: keys wrap 64 bits


def voxel_representatives_numpy(points: NDArray[np.float64], voxel_mm: float) -> NDArray[np.int64]:
    """:func:`voxel_representatives` in NumPy (the sort it replaced): the first point of each voxel, increasing."""
    keys = np.floor((points - points.min(axis=0)) / voxel_mm).astype(np.int64)
    dims = keys.max(axis=0) + 1
    flat = (keys[:, 0] * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2]
    return np.sort(first_occurrences(flat))


@pytest.mark.parametrize("case", range(6))
def test_voxel_representatives_is_the_numpy_thinning(case):
    points, voxel = list(_clouds())[case]
    got = voxel_representatives(points, voxel)
    assert got.dtype == np.int64
    assert np.array_equal(got, voxel_representatives_numpy(points, voxel))


def test_voxel_representatives_keeps_the_first_point_of_each_voxel():
    points = np.array([[0.2, 0.2, 0.2], [1.5, 0.0, 0.0], [0.9, 0.1, 0.4], [1.1, 0.9, 0.0], [3.0, 0.0, 0.0]])
    assert voxel_representatives(points, 1.0).tolist() == [0, 1, 4]
    assert voxel_representatives(points[::-1], 1.0).tolist() == [0, 1, 3]


def test_voxel_representatives_refuses_bad_input():
    with pytest.raises(ValueError, match="n >= 1"):
        voxel_representatives(np.zeros((0, 3)), 1.0)
    with pytest.raises(ValueError, match="finite"):
        voxel_representatives(np.array([[0.0, np.nan, 0.0], [1.0, 1.0, 1.0]]), 1.0)
    with pytest.raises(ValueError, match="positive"):
        voxel_representatives(np.ones((4, 3)), 0.0)
    with pytest.raises(ValueError, match="2\\*\\*62"):
        voxel_representatives(np.array([[0.0, 0.0, 0.0], [1e300, 0.0, 0.0]]), 1e-30)


@pytest.mark.parametrize(("count", "voxel", "cap"), [(3000, 0.5, 5.0), (40, 0.6, 1.6), (1, 0.5, 5.0)])
def test_mirror_costs_are_the_numpy_ones(count, voxel, cap):
    rng = np.random.default_rng(count)
    # an arch-like U of points, some far outside the field once mirrored (the look-ups clipped to its border)
    t = rng.uniform(-2.5, 2.5, count)
    cloud = np.stack([25 * np.sin(t), 20 * np.cos(t)], 1) + rng.normal(scale=0.7, size=(count, 2)) + [3.0, -4.0]
    field = DistanceField(cloud, voxel, cap)
    for sample, angles in (
        (cloud[::3], np.arange(0.0, np.pi, np.radians(1.0))),
        (cloud, 1.2 + np.linspace(-0.02, 0.02, 21)),
    ):
        got = mirror_costs(field, sample, angles)
        assert got.shape == angles.shape
        assert np.array_equal(got, mirror_costs_numpy(field, sample, angles))


def test_mirror_costs_of_a_symmetric_cloud_are_zero_about_its_axis():
    half = np.random.default_rng(5).uniform(0.5, 20.0, size=(500, 2))
    cloud = np.concatenate([half, half * [-1.0, 1.0]])  # mirror-symmetric about the y axis (angle 90°)
    field = DistanceField(cloud, 0.5, 5.0)
    costs = mirror_costs(field, cloud, np.radians([0.0, 45.0, 90.0]))
    assert costs[2] == 0.0 and costs[0] > 1.0 and costs[1] > 1.0


def test_sorted_percentiles_are_numpys():
    rng = np.random.default_rng(11)
    runs = [np.sort(rng.normal(size=int(n)) * rng.uniform(0.1, 40.0)) for n in rng.integers(2, 300, size=60)]
    runs += [np.sort(np.round(rng.normal(size=50), 1)), np.array([1.0, 1.0]), np.array([0.0, 3.0, 3.0])]
    values = np.concatenate(runs)
    counts = np.array([len(run) for run in runs])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for q in (98.0, 1.0, 50.0, 99.0, 37.3):
        expected = [np.percentile(run, q) for run in runs]
        assert np.array_equal(sorted_percentiles(values, starts, counts, q), expected)
    with pytest.raises(ValueError, match="q < 100"):
        sorted_percentiles(values, starts, counts, 100.0)


def _meshes() -> Iterator[tuple[NDArray[np.int64], int]]:
    rng = np.random.default_rng(3)
    _, faces = grid_plane(12.0, 1.0)
    yield faces, int(faces.max()) + 1  # an open sheet: its rim is the border
    yield rng.integers(0, 40, size=(300, 3)), 40  # random triangles: edges used 1, 2, 3... times
    hub = np.stack([np.zeros(60, dtype=np.int64), np.arange(1, 61), np.r_[np.arange(2, 61), 1]], 1)
    yield np.concatenate([hub, hub[:10]]), 61  # a fan (a bucket of 120 edges), ten faces repeated
    yield np.array([[0, 0, 1], [1, 2, 2]]), 3  # degenerate faces (an edge from a vertex to itself)
    yield np.zeros((0, 3), dtype=np.int64), 5


@pytest.mark.parametrize("case", range(5))
def test_border_edges_are_the_numpy_ones(case):
    faces, count = list(_meshes())[case]
    got = border_edges(faces, count)
    assert np.array_equal(got, border_edges_numpy(faces, count))
    if case == 0:
        assert len(got) == 4 * 12  # the sheet's rim


def test_border_edges_refuse_an_index_outside_the_vertices():
    with pytest.raises(ValueError, match="outside the 3 vertices"):
        border_edges(np.array([[0, 1, 3]]), 3)
    with pytest.raises(ValueError, match="outside"):
        border_edges(np.array([[0, -1, 2]]), 3)


def test_crown_direction_points_away_from_the_border():
    vertices, faces = grid_plane(12.0, 1.0)
    dome = vertices.copy()  # the middle lifted: the open rim lies below the centroid
    dome[:, 2] = -np.sum((dome[:, :2] - dome[:, :2].mean(axis=0)) ** 2, axis=1)
    up = np.array([0.0, 0.0, 1.0])
    assert np.array_equal(crown_direction(dome, faces, up), up)
    assert np.array_equal(crown_direction(dome, faces, -up), up)


def test_row_mean_is_numpys():
    rng = np.random.default_rng(2)
    for n in (1, 7, 1000, 50_000):
        points = rng.normal(size=(n, 3)) * 40.0 + 7.0
        assert np.array_equal(row_mean(points), points.mean(axis=0))  # (a pairwise sum differs from n = 1000)
    with pytest.raises(ValueError, match="n >= 1"):
        row_mean(np.zeros((0, 3)))


def test_key_least_is_the_lexsort_selection() -> None:
    """Of each key's points the least offset, the smallest index among equal offsets (offsets drawn from
    four values: many ties), increasing: what ``np.lexsort((offset, flat))`` and its first per key give;
    keys negative, huge, all equal, all distinct, none."""
    rng = np.random.default_rng(9)
    cases = [(rng.integers(-50, 50, 4000), rng.integers(0, 4, 4000).astype(float))]
    cases.append((rng.integers(-(2**62), 2**62, 3000), rng.random(3000)))
    cases.append((np.zeros(100, dtype=np.int64), np.r_[np.ones(50), np.zeros(50)]))  # the first 0 wins
    cases.append((np.arange(10, dtype=np.int64), rng.random(10)))
    cases.append((np.zeros(0, dtype=np.int64), np.zeros(0)))
    for flat, offset in cases:
        order = np.lexsort((offset, flat))
        ordered = flat[order]
        start = np.ones(len(flat), dtype=bool)
        start[1:] = ordered[1:] != ordered[:-1]
        assert np.array_equal(key_least(flat, offset), np.sort(order[start]))
    assert key_least(np.zeros(100, dtype=np.int64), np.r_[np.ones(50), np.zeros(50)]).tolist() == [50]
    with pytest.raises(ValueError, match="finite"):
        key_least(np.zeros(2, dtype=np.int64), np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="alike"):
        key_least(np.zeros(2, dtype=np.int64), np.zeros(3))


def test_invariant_representatives_are_the_nearest_to_each_voxels_centre() -> None:
    """One point per occupied voxel of the points' own grid, the nearest to the voxel's centre."""
    rng = np.random.default_rng(10)
    points = rng.normal(size=(3000, 3)) * [20.0, 8.0, 3.0]
    kept = invariant_representatives(points, 1.0)
    assert np.array_equal(kept, np.sort(kept)) and 0 < len(kept) < len(points)
    # the same points whatever their order
    shuffle = rng.permutation(len(points))
    assert np.array_equal(np.sort(shuffle[invariant_representatives(points[shuffle], 1.0)]), kept)
