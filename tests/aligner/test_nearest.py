"""The global step's compiled nearest-sample tree (``_nearest.c``) answers as SciPy's k-d tree does."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from mesial.aligner._nearest import NearestTree


@pytest.mark.parametrize("bound", [0.05, 0.3, 1.0, 2.5, np.inf])
def test_nearest_within_a_bound_is_scipys(bound: float) -> None:
    """Points on a curved sheet (as a thinned arch is) and queries near and far from it: the same
    indices and bit-for-bit the same distances as ``cKDTree.query(x, distance_upper_bound=bound)``,
    infinity and ``n`` where nothing is strictly within the bound."""
    rng = np.random.default_rng(3)
    u, v = rng.uniform(-20.0, 20.0, (2, 6000))
    points = np.stack([u, v, 0.02 * u**2 - 0.03 * v**2], axis=1)
    queries = points[rng.integers(0, len(points), 5000)] + rng.normal(0.0, 0.8, (5000, 3))
    queries = np.vstack([queries, rng.uniform(-60.0, 60.0, (500, 3))])  # far ones too
    expected = cKDTree(points).query(queries, distance_upper_bound=bound)
    distance, index = NearestTree(points).query(queries, bound)
    assert np.array_equal(index, expected[1])
    assert np.array_equal(distance, expected[0])
    if np.isfinite(bound):
        assert np.isinf(distance).any() and (index[np.isinf(distance)] == len(points)).all()


def test_equal_distances_go_to_the_smallest_index_and_the_bound_is_strict() -> None:
    points = np.array([[2.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    tree = NearestTree(points)
    distance, index = tree.query(np.array([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [5.0, 0.0, 0.0]]), 3.0)
    assert index.tolist() == [1, 0, 4]  # -1 and +1 tie: index 1; 1.5 ties between 2 and the twins at 1: 0
    assert distance[:2].tolist() == [1.0, 0.5] and np.isinf(distance[2])
    # exactly at the bound is not within it (SciPy's rule)
    assert tree.query(np.array([[0.0, 0.0, 0.0]]), 1.0)[1].tolist() == [4]
    many = NearestTree(np.zeros((50, 3)))  # one place, many points: the first
    assert many.query(np.array([[0.1, 0.0, 0.0]]), 1.0)[1].tolist() == [0]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="n >= 1"):
        NearestTree(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="finite"):
        NearestTree(np.array([[0.0, np.nan, 0.0]]))
    tree = NearestTree(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"\(m, 3\)"):
        tree.query(np.zeros((4, 2)), 1.0)
    with pytest.raises(ValueError, match="bound"):
        tree.query(np.zeros((4, 3)), -1.0)
    distance, index = tree.query(np.zeros((0, 3)), 1.0)
    assert distance.shape == (0,) and index.shape == (0,)


def test_a_query_split_over_threads_answers_the_same() -> None:
    from mesial.aligner import _nearest

    rng = np.random.default_rng(4)
    points = rng.normal(size=(3000, 3)) * 10.0
    queries = rng.normal(size=(3 * _nearest.THREADS_FROM + 7, 3)) * 10.0
    tree = NearestTree(points)
    alone = tree.query(queries, 1.5)
    for threads in (2, 3):
        split = tree.query(queries, 1.5, threads)
        assert np.array_equal(split[0], alone[0]) and np.array_equal(split[1], alone[1])
