"""The global step's compiled nearest-sample tree (``_nearest.c``) answers as SciPy's k-d tree does."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from mesial.aligner._nearest import NearestTree, scalar_leaves

FloatArray = NDArray[np.float64]


@pytest.fixture(params=["this processor's leaf scan", "the scalar leaf scan"])
def leaves(request: pytest.FixtureRequest) -> Iterator[None]:
    """The k-d leaves scanned as this processor chooses (four at a time with AVX2), then as processors
    without AVX2 scan them: both must give every answer below."""
    if request.param == "the scalar leaf scan":
        with scalar_leaves():
            yield
    else:
        yield


@pytest.mark.usefixtures("leaves")
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


@pytest.mark.usefixtures("leaves")
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


def _brute_force(points: np.ndarray, queries: np.ndarray, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """The smallest (squared distance, index) strictly within the bound, the squares summed in axis order."""
    difference = queries[:, None, :] - points[None, :, :]
    squared = difference[..., 0] ** 2 + difference[..., 1] ** 2 + difference[..., 2] ** 2
    squared = np.where(squared < bound * bound, squared, np.inf)
    index = np.argmin(squared, axis=1)  # the first of equal minima: the smallest index
    best = squared[np.arange(len(queries)), index]
    index[np.isinf(best)] = len(points)
    return np.sqrt(best), index


@pytest.mark.usefixtures("leaves")
@pytest.mark.parametrize("bound", [0.3, 1.0, 4.0, np.inf])
def test_large_calls_in_grid_order_answer_as_small_ones(bound: float) -> None:
    """A call of at least ORDER_FROM points is answered in the order of a coarse grid's cells, a
    smaller one in the order given: the same answers, also for queries outside the tree's box, a
    flat tree (no extent along z) and many points at the same distance (integer grid, repeated
    points), where the smallest index must win (brute force the reference)."""
    rng = np.random.default_rng(7)
    grid = np.stack(np.meshgrid(np.arange(12.0), np.arange(9.0), [0.0], indexing="ij"), axis=-1).reshape(-1, 3)
    points = np.vstack([grid, grid[rng.integers(0, len(grid), 300)]])  # each place up to several times
    points = points[rng.permutation(len(points))]
    queries = np.vstack([
        rng.integers(-3, 15, (700, 3)).astype(np.float64) * np.array([1.0, 1.0, 0.5]),  # ties everywhere
        rng.uniform(-20.0, 30.0, (300, 3)),  # inside and far outside the box
    ])  # fmt: skip
    tree = NearestTree(points)
    whole = tree.query(queries, bound)
    expected = _brute_force(points, queries, bound)
    assert np.array_equal(whole[1], expected[1]) and np.array_equal(whole[0], expected[0])
    pieces = [tree.query(queries[start : start + 50], bound) for start in range(0, len(queries), 50)]
    assert np.array_equal(np.concatenate([piece[1] for piece in pieces]), whole[1])
    assert np.array_equal(np.concatenate([piece[0] for piece in pieces]), whole[0])


def _plane_rows_numpy(tree: NearestTree, x: np.ndarray, gate: float, samples: np.ndarray, normals: np.ndarray):
    """What the global step's short ICP computed with NumPy from the tree's answer (before the kernel)."""
    from mesial.aligner._icp import cross_last

    distance, index = tree.query(x.reshape(-1, 3), gate)
    use = np.isfinite(distance).reshape(x.shape[:-1])
    index = np.where(use.ravel(), index, 0)  # unmatched points: any sample, zero weight
    normal = normals[index].reshape(x.shape)
    residual = np.einsum("mni,mni->mn", x - samples[index].reshape(x.shape), normal)
    weight = np.where(use, np.clip(1.0 - (residual / gate) ** 2, 0.0, None) ** 2, 0.0)
    rows = np.empty((*x.shape[:2], 6))
    cross_last(x, normal, rows[..., :3])
    rows[..., 3:] = normal
    return use, rows, rows * weight[..., None], weight * residual


def _saddle_samples(rng: np.random.Generator, n: int) -> tuple[FloatArray, FloatArray]:
    """``n`` samples of a saddle 40 mm across (``(n, 3)``, mm) and a random unit normal each (the same
    draws, in the same order, as the tests made them inline)."""
    u, v = rng.uniform(-20.0, 20.0, (2, n))
    samples = np.stack([u, v, 0.02 * u**2 - 0.03 * v**2], axis=1)
    normals = rng.normal(size=(n, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return samples, normals


@pytest.mark.parametrize("gate", [0.5, 2.0])
def test_plane_rows_are_numpys_bit_for_bit(gate: float) -> None:
    """``plane_rows`` (one kernel pass: match, sample, residual, Tukey weight, rows) gives what NumPy
    computed from ``query``'s answer bit for bit, the einsum's order of the products included, in
    large (grid order) and small calls, unmatched points with sample 0 and zero weight."""
    rng = np.random.default_rng(8)
    samples, normals = _saddle_samples(rng, 4000)
    tree = NearestTree(samples)
    for m, n in ((7, 400), (2, 30)):
        x = samples[rng.integers(0, 4000, (m, n))] + rng.normal(0.0, 0.6, (m, n, 3))
        x[:, :5, 2] += 10.0  # beyond the gate
        expected = _plane_rows_numpy(tree, x, gate, samples, normals)
        got = tree.plane_rows(x, gate, samples, normals)
        assert got[0].dtype == np.bool_ and np.array_equal(got[0], expected[0])
        assert not got[0].all() and got[0].any()
        for mine, numpys in zip(got[1:], expected[1:], strict=True):
            assert mine.shape == numpys.shape and np.array_equal(mine, numpys)
    with pytest.raises(ValueError, match="samples and normals"):
        tree.plane_rows(x, gate, samples[:-1], normals)
    with pytest.raises(ValueError, match="gate"):
        tree.plane_rows(x, 0.0, samples, normals)


def test_planes_and_on_plane_are_the_gathers_and_tests_from_query() -> None:
    """``planes`` is ``query`` with the samples and normals gathered (zeros and inf where none; with
    ``row_bounds``, a row's matches beyond its own bound none) and ``on_plane`` the tangent-plane test
    NumPy made from ``query``'s answer (einsum's order of the products), bit for bit."""
    rng = np.random.default_rng(9)
    samples, normals = _saddle_samples(rng, 3000)
    tree = NearestTree(samples)
    x = samples[rng.integers(0, 3000, (6, 350))] + rng.normal(0.0, 0.7, (6, 350, 3))
    flat = x.reshape(-1, 3)
    for bound in (0.8, 1.8):
        distance, index = tree.query(flat, bound)
        found = np.isfinite(distance)
        closest, normal, far, _ = tree.planes(flat, bound, samples, normals)
        assert np.array_equal(far, distance)
        assert np.array_equal(closest[found], samples[index[found]]) and not closest[~found].any()
        assert np.array_equal(normal[found], normals[index[found]]) and not normal[~found].any()
        assert found.any() and not found.all()
        # a bound per row: the rows' matches beyond it dropped
        rows = np.array([0.3, 0.5, 0.8, 1.0, 1.5, 1.8])
        closest, normal, far, _ = tree.planes(x, bound, samples, normals, rows)
        beyond = distance.reshape(6, 350) > rows[:, None]
        expected = np.where(beyond, np.inf, distance.reshape(6, 350))
        assert np.array_equal(far, expected) and beyond.any() and np.isfinite(expected).any()
        assert not closest[np.isinf(expected)].any() and not normal[np.isinf(expected)].any()
        kept = np.isfinite(expected)
        assert np.array_equal(closest[kept], samples[index.reshape(6, 350)[kept]])
        for tau in (0.05, 0.3):
            plane = np.abs(np.einsum("ij,ij->i", flat[found] - samples[index[found]], normals[index[found]]))
            hit = np.zeros(len(flat), dtype=bool)
            hit[np.flatnonzero(found)[plane < tau]] = True
            on = tree.on_plane(flat, bound, tau, samples, normals)
            assert on.dtype == np.bool_ and np.array_equal(on, hit) and hit.any() and not hit[found].all()
    with pytest.raises(ValueError, match="row_bounds"):
        tree.planes(flat, 1.0, samples, normals, rows)


def test_planes_and_on_plane_at_their_limits() -> None:
    """A match exactly at its row's bound is kept (only beyond it is none), and the tangent-plane test
    is decided on NumPy's own bits of the residual: with ``tau`` equal to a point's residual as NumPy
    sums it the point is not within, where the products summed in axis order would put it within."""
    tree = NearestTree(np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]]))
    flat = np.zeros((2, 3))
    _, _, distance, _ = tree.planes(
        np.array([[[0.5, 0.0, 0.0]], [[9.0, 0.0, 0.0]]]), 2.0, flat, flat, np.array([0.5, 0.5])
    )
    assert distance.tolist() == [[0.5], [np.inf]]
    rng = np.random.default_rng(10)
    samples = rng.uniform(-5.0, 5.0, (2000, 3))
    normals = rng.normal(size=(2000, 3))
    tree = NearestTree(samples)
    x = samples + rng.normal(0.0, 0.3, (2000, 3))
    difference = x - samples[tree.query(x, 3.0)[1]]
    normal = normals[tree.query(x, 3.0)[1]]
    numpys = np.abs(np.einsum("ij,ij->i", difference, normal))
    in_order = np.abs(
        difference[:, 0] * normal[:, 0] + difference[:, 1] * normal[:, 1] + difference[:, 2] * normal[:, 2]
    )
    telling = np.flatnonzero(in_order < numpys)[:3]
    assert len(telling) == 3
    for k in telling:
        assert not tree.on_plane(x[k : k + 1], 3.0, float(numpys[k]), samples, normals)[0]
        assert tree.on_plane(x[k : k + 1], 3.0, float(np.nextafter(numpys[k], np.inf)), samples, normals)[0]


def test_planes_within_a_squared_distance_per_point() -> None:
    """``within``: a point's match counts only strictly within its squared distance (what the joint
    ICP's lower arch needs: a match no nearer than the upper's loses to it); the squared distances
    returned are the summed squares whose roots are the distances."""
    rng = np.random.default_rng(12)
    samples = rng.uniform(-5.0, 5.0, (1500, 3))
    zeros = np.zeros_like(samples)
    tree = NearestTree(samples)
    x = rng.uniform(-6.0, 6.0, (900, 3))
    _, _, distance, squared = tree.planes(x, 1.2, samples, zeros)
    found = np.isfinite(distance)
    assert np.array_equal(np.sqrt(squared), distance) and found.any() and not found.all()
    within = np.where(rng.random(900) < 0.5, squared, rng.uniform(0.0, 2.0, 900))  # some exactly at the match
    within[:50] = np.inf
    _, _, limited, _ = tree.planes(x, 1.2, samples, zeros, within=within)
    expected = np.where(squared < within, distance, np.inf)
    assert np.array_equal(limited, expected) and np.isfinite(expected).any() and (found & np.isinf(expected)).any()
    with pytest.raises(ValueError, match="within"):
        tree.planes(x, 1.2, samples, zeros, within=within[:-1])


@pytest.mark.usefixtures("leaves")
def test_ties_in_full_leaves_go_to_the_smallest_index_as_brute_force() -> None:
    """A shuffled integer grid (every leaf full of points at equal distances from a half-integer query) and
    queries on grid points, half-way between them and off the grid: the nearest strictly within the bound,
    the smallest index among equal distances, as brute force finds it (whatever way a leaf is scanned)."""
    rng = np.random.default_rng(8)
    axis = np.arange(12.0)
    grid = np.stack(np.meshgrid(axis, axis, axis[:6], indexing="ij"), axis=-1).reshape(-1, 3)
    points = grid[rng.permutation(len(grid))]
    queries = np.vstack([points[:300], points[:300] + 0.5, rng.uniform(-2.0, 14.0, (400, 3)), [[0.5, 0.5, 0.5]]])
    for bound in (0.5, 0.8661, 1.5, np.inf):
        distance, index = NearestTree(points).query(queries, bound)
        squared = ((queries[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)
        least = squared.min(axis=1)
        first = np.argmax(squared == least[:, None], axis=1)  # the smallest index at the least distance
        found = least < bound**2
        assert found.any() and (bound > 1 or not found.all())
        assert np.array_equal(index[found], first[found]) and (index[~found] == len(points)).all()
        assert np.array_equal(distance[found], np.sqrt(least[found]))
