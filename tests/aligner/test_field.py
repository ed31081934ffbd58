"""The truncated distance fields (``_field.py``) against SciPy's exact transform, and the
patch count (``occlusion.count_patches``) against SciPy's connected components."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mesial.aligner._field import DistanceField, truncated_squared_distances
from mesial.aligner.occlusion import count_patches

from .conftest import grid_plane


@pytest.mark.parametrize(("shape", "share", "reach"), [((30, 40, 20), 0.01, 4), ((50, 60), 0.02, 10), ((9,), 0.2, 3)])
def test_truncated_distances_are_exact_within_the_reach(shape, share, reach):
    rng = np.random.default_rng(len(shape))
    occupied = rng.random(shape) < share
    occupied.flat[0] = True
    exact = np.asarray(distance_transform_edt(~occupied)) ** 2
    squared = truncated_squared_distances(occupied, reach)
    within = exact <= reach**2
    assert np.array_equal(squared[within], np.round(exact[within]))
    assert (squared[~within] >= reach**2).all()  # farther: never below the cap


@pytest.mark.parametrize(("voxel", "cap"), [(1.0, 4.0), (0.6, 1.6), (0.5, 1.1)])
def test_distance_field_matches_the_exact_transform(voxel, cap):
    rng = np.random.default_rng(7)
    points = rng.normal(size=(3000, 3)) * [12.0, 8.0, 3.0]
    field = DistanceField(points, voxel, cap)
    # the field as SciPy's transform of the same grid gives it
    cells = np.floor((points - field.origin) / voxel + 0.5).astype(np.int64)
    empty = np.ones(tuple(int(s) for s in field.shape), dtype=bool)
    empty[tuple(cells.T)] = False
    expected = np.minimum(np.asarray(distance_transform_edt(empty, sampling=voxel)), cap)
    border = np.zeros_like(empty)
    border[tuple(slice(1, -1) for _ in field.shape)] = True
    expected[~border] = cap
    assert np.array_equal(field.grid, expected.astype(np.float32).ravel())
    queries = rng.normal(size=(500, 3)) * 20.0
    nearest = np.linalg.norm(queries[:, None, :] - points[None, :, :], axis=2).min(axis=1)
    # within one voxel diagonal of the true distance, and capped
    assert (np.abs(field(queries) - np.minimum(nearest, cap)) <= np.sqrt(3.0) * voxel + 1e-9).all()


def test_patch_count_is_the_number_of_connected_components():
    vertices, faces = grid_plane(12.0, 0.25)
    rng = np.random.default_rng(3)
    for _ in range(20):
        centre = rng.uniform(-6, 6, size=3) * [1, 1, 0]
        mask = (np.linalg.norm(vertices - centre, axis=1) < rng.uniform(0.5, 8)) & (rng.random(len(vertices)) < 0.6)
        index = np.flatnonzero(mask)
        edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        edges = edges[mask[edges[:, 0]] & mask[edges[:, 1]]]
        remap = np.full(len(mask), -1)
        remap[index] = np.arange(len(index))
        graph = coo_matrix((np.ones(len(edges)), (remap[edges[:, 0]], remap[edges[:, 1]])), (len(index),) * 2)
        expected = connected_components(graph, directed=False)[0] if len(index) else 0
        assert count_patches(faces, mask) == expected


def test_look_ups_at_a_sum_and_scores_equal_those_at_the_summed_points():
    """``field(points, offset)`` is ``field(points + offset)`` (broadcast) but within rounding of a
    cell border, and ``score`` is ``max(0, 1 - distance / tau)`` bit for bit."""
    rng = np.random.default_rng(11)
    field = DistanceField(rng.normal(size=(2000, 3)) * [15.0, 10.0, 4.0], 0.6, 2.1)
    probes = rng.normal(size=(40, 1, 24, 3)) * 6.0
    shifts = rng.normal(size=(40, 20, 1, 3)) * 6.0
    shifts[0, 0, 0] = field.origin + 0.6 * 40.5 - probes[0, 0, 0]  # a sum on a cell border, every axis
    summed = probes + shifts
    cells = (summed - field.origin) / field.voxel + 0.5
    clear = (np.abs(cells - np.round(cells)) > 1e-9).all(axis=-1)
    assert not clear.all()
    assert field(probes, shifts).shape == (40, 20, 24)
    assert np.array_equal(field(probes, shifts)[clear], field(summed)[clear])
    # on a border: either cell, whose distances differ by at most a voxel's diagonal
    assert (np.abs(field(probes, shifts) - field(summed)) <= np.sqrt(3.0) * field.voxel + 1e-6).all()
    for tau in (1.5, 0.8):
        assert np.array_equal(field.score(probes, tau, shifts), np.maximum(0.0, 1.0 - field(probes, shifts) / tau))
        assert np.array_equal(field.score(summed, tau), np.maximum(0.0, 1.0 - field(summed) / tau))


def test_scores_with_an_offset_per_axis_equal_those_with_the_whole_offset():
    """``score_axes`` (each axis's offset on its own broadcast shape, as the global step's grid of
    translations has them: heights only in z, offsets along a horizontal direction) gives the values
    of ``score`` with the assembled offset, bit for bit, also where look-ups leave the grid."""
    rng = np.random.default_rng(12)
    field = DistanceField(rng.normal(size=(2000, 3)) * [15.0, 10.0, 4.0], 0.6, 2.1)
    probes = rng.normal(size=(30, 1, 1, 24, 3)) * 8.0
    anchor = rng.normal(size=(30, 3)) * [12.0, 8.0, 1.0]
    angle = rng.uniform(0.0, 2.0 * np.pi, 30)
    direction = np.stack([np.sin(angle), np.cos(angle), np.zeros(30)], axis=1)
    heights, offsets = np.array([-1.5, 0.0, 1.5, 3.0]), np.array([-4.5, -3.0, -1.5, 0.0, 1.5])
    # built as the strip search builds it: (a, h, o, 3)
    translation = (
        anchor[:, None, None, :]
        + heights[None, :, None, None] * np.array([0.0, 0.0, 1.0])
        + offsets[None, None, :, None] * direction[:, None, None, :]
    )
    parts = (translation[:, :1, :, None, 0], translation[:, :1, :, None, 1], translation[:, :, :1, None, 2])
    for tau in (1.5, 0.8):
        whole = field.score(probes, tau, translation[:, :, :, None, :])
        assert whole.shape == (30, 4, 5, 24)
        assert np.array_equal(field.score_axes(probes, parts, tau), whole)
        assert (whole == 0.0).any() and (whole > 0.0).any()


@pytest.mark.parametrize("count", [1, 5, 8, 24, 64, 130])
def test_compiled_mean_scores_are_numpys_bit_for_bit(count):
    """``mean_score_axes`` and ``mean_score`` (``_field.c``) give NumPy's means of ``score_axes`` and
    ``score`` bit for bit: the same cells (also outside the grid) and NumPy's pairwise sum, for
    fewer than 8 probes, up to 128 and beyond (its three ways of summing)."""
    rng = np.random.default_rng(count)
    field = DistanceField(rng.normal(size=(3000, 3)) * [15.0, 10.0, 4.0], 0.6, 2.1)
    n = count + 3  # the first count of each set's points
    points = rng.normal(size=(40, n, 3)) * 8.0
    x, y = rng.normal(size=(2, 40, 5)) * 6.0
    z = rng.normal(size=(40, 4)) * 3.0
    x[0, 0] = 200.0  # far outside the grid: clipped to its border cells, as NumPy's look-up clips
    for tau in (1.5, 0.8):
        parts = (x[:, None, :, None], y[:, None, :, None], z[:, :, None, None])
        expected = field.score_axes(points[:, None, None, :count], parts, tau).mean(axis=3)
        got = field.mean_score_axes(points, count, x, y, z, tau)
        assert got.shape == (40, 4, 5) and np.array_equal(got, expected)
        assert (expected > 0.0).any() and (expected < 1.0).any()
        which = rng.integers(0, 40, 300)
        offset = rng.normal(size=(300, 3)) * 6.0
        expected = field.score(points[which], tau, offset[:, None, :]).mean(axis=1)
        assert np.array_equal(field.mean_score(points, which, offset, tau), expected)
        assert np.array_equal(field.mean_score(points, which[:0], offset[:0], tau), np.zeros(0))


def test_compiled_mean_scores_refuse_bad_input():
    field = DistanceField(np.random.default_rng(1).normal(size=(200, 3)) * 5.0, 0.6, 2.1)
    points = np.zeros((4, 6, 3))
    with pytest.raises(ValueError, match="count"):
        field.mean_score_axes(points, 7, np.zeros((4, 2)), np.zeros((4, 2)), np.zeros((4, 3)), 1.0)
    with pytest.raises(ValueError, match="sets"):
        field.mean_score_axes(points, 6, np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 3)), 1.0)
    with pytest.raises(ValueError, match=r"\(s, n, 3\)"):
        field.mean_score(np.zeros((4, 3)), np.zeros(1, dtype=np.int64), np.zeros((1, 3)), 1.0)
    with pytest.raises(ValueError, match="index"):
        field.mean_score(points, np.array([4]), np.zeros((1, 3)), 1.0)
    with pytest.raises(ValueError, match="3-D"):
        DistanceField(np.zeros((5, 2)), 0.6, 2.1).mean_score(points, np.array([0]), np.zeros((1, 3)), 1.0)
