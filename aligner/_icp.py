"""Fine registration: robust point-to-plane ICP of bite scans against both arches at once.

Unknowns, all in the upper arch's frame: one pose per bite scan
(``bite_to_upper``) and the pose of the lower arch (``lower_to_upper``). Each bite
point is matched to the exact closest point on whichever arch surface is
nearer (the BVH of :mod:`._meshquery`, no sampling bias); residuals are
point-to-plane; correspondences beyond a shrinking gate are dropped and the
rest weighted with Tukey's biweight, so the parts of a bite that an arch does
not explain (the antagonist, scanner debris) do not pull. The Gauss-Newton
steps solve all poses together, which is how two bite scans constrain each arch
jointly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._field import DistanceField
from mesial.aligner._meshquery import MeshQuery
from mesial.aligner._sides import MeshSides
from mesial.aligner._spread import SpreadGrid, corner_reach
from mesial.aligner.params import AlignParams
from mesial.aligner.transforms import exp_se3, invert, lengths, rotate_vectors, transform_points

FloatArray = NDArray[np.float64]


class Target(Protocol):
    """What the ICP matches against: closest points with normals, within a gate."""

    def near(self, points: FloatArray, gate: float) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Closest points ``(n, 3)``, unit normals ``(n, 3)`` and distances ``(n,)`` (inf beyond ``gate``)."""
        ...


class PlaneTarget:
    """Surface samples with normals: the nearest sample's tangent plane (k-d tree).

    On a scan with 0.15-0.3 mm vertex spacing the tangent plane of the nearest
    vertex is within a few micrometres of the surface near it, at a fraction of
    the cost of an exact closest-point query.
    """

    def __init__(self, points: FloatArray, normals: FloatArray, spacing_mm: float = 0.0) -> None:
        from mesial.aligner._nearest import NearestTree

        # the nearest sample of a point on the surface can be this far (thinned clouds)
        self.spacing = float(spacing_mm)
        self.points = np.ascontiguousarray(points, dtype=np.float64)
        self.normals = np.ascontiguousarray(normals, dtype=np.float64)
        # the compiled tree of _nearest.c: SciPy's answers, in about 60 % of cKDTree's time (the global
        # step's short ICPs query it some two million times a case)
        self.tree = NearestTree(self.points)

    def match(self, x: FloatArray, gate: float) -> tuple[FloatArray, NDArray[np.int64]]:
        """Distance to the nearest sample (inf beyond ``gate``) and its index (``len(points)`` there)."""
        return self.tree.query(x, gate)

    def plane_rows(self, x: FloatArray, gate: float) -> tuple[NDArray[np.bool_], FloatArray, FloatArray, FloatArray]:
        """A short ICP iteration's terms at points ``x (..., 3)`` within ``gate``: ``use``, ``rows (..., 6)``,
        the rows weighted and weight times residual (:meth:`._nearest.NearestTree.plane_rows`)."""
        return self.tree.plane_rows(x, gate, self.points, self.normals)

    def near(self, points: FloatArray, gate: float) -> tuple[FloatArray, FloatArray, FloatArray]:
        # the nearest sample within gate + spacing, its position and normal gathered in the kernel
        return self.tree.planes(points, gate + self.spacing, self.points, self.normals)[:3]

    def near_rows(
        self, x: FloatArray, gate: float, gates: FloatArray, within: FloatArray | None = None
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """:meth:`near` of points ``(a, k, 3)`` with a gate per row ``(a,)`` (at most ``gate``): a query
        within ``gate``, each row's matches beyond its own gate (plus the spacing) none, and the squared
        distances too; ``within`` (squared, per point): only matches strictly nearer count
        (:meth:`._nearest.NearestTree.planes`)."""
        return self.tree.planes(x, gate + self.spacing, self.points, self.normals, gates + self.spacing, within)

    def on_plane(self, x: FloatArray, tau: float) -> NDArray[np.bool_]:
        """Which points ``(..., 3)`` lie within ``tau`` of the nearest sample's tangent plane, that sample
        within ``tau`` plus the spacing."""
        return self.tree.on_plane(x, tau + self.spacing, tau, self.points, self.normals)


def _tangent_planes(
    samples: FloatArray, normals: FloatArray, distance: FloatArray, index: NDArray[np.int64]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The matched samples and their normals (zeros where ``distance`` is inf), and ``distance``."""
    found = np.isfinite(distance)
    closest = np.zeros((len(distance), 3))
    plane_normals = np.zeros((len(distance), 3))
    closest[found] = np.take(samples, index[found], axis=0)  # (np.take: rows gathered faster than by indexing)
    plane_normals[found] = np.take(normals, index[found], axis=0)
    return closest, plane_normals, distance


class _MeshIndex:
    """Search structures of one triangle mesh in its own frame, built on first use and shared."""

    def __init__(
        self,
        vertices: FloatArray,
        faces: NDArray[np.int64],
        scene: MeshQuery | None = None,
        normals: FloatArray | None = None,
    ) -> None:
        self.vertices = np.ascontiguousarray(vertices, dtype=np.float64)
        self.faces = np.ascontiguousarray(faces, dtype=np.int64)
        self._scene = scene
        self._normals = normals
        self._sides: MeshSides | None = None
        self._tree: object | None = None
        self._field: DistanceField | None = None
        self._longest_edge: float | None = None
        self._longest_edges: FloatArray | None = None
        self._spreads: dict[float, SpreadGrid] = {}
        self._typical_edge: float | None = None

    @property
    def scene(self) -> MeshQuery:
        """BVH of the triangles (:class:`._meshquery.MeshQuery`, built on first use)."""
        if self._scene is None:
            self._scene = raycasting_scene(self.vertices, self.faces)
        return self._scene

    @property
    def normals(self) -> FloatArray:
        """Area-weighted unit vertex normals (the scan's own when it was validated)."""
        if self._normals is None:
            from mesial.aligner.validate import vertex_normals  # validate builds on this module

            self._normals = vertex_normals(self.vertices, self.faces)
        return self._normals

    @property
    def sides(self) -> MeshSides:
        """Pseudonormals of the corners and edges, for the side of a point (see :mod:`._sides`)."""
        if self._sides is None:
            self._sides = MeshSides(self.vertices, self.faces)
        return self._sides

    @property
    def tree(self) -> Any:
        """k-d tree of the vertices (:class:`._nearest.NearestTree`: SciPy's answers, compiled)."""
        if self._tree is None:
            from mesial.aligner._nearest import NearestTree

            self._tree = NearestTree(self.vertices)
        return self._tree

    @property
    def field(self) -> DistanceField:
        """Distance field of the vertices on a ``FIELD_VOXEL_MM`` grid, capped at ``FIELD_CAP_MM``."""
        if self._field is None:
            self._field = DistanceField(self.vertices, FIELD_VOXEL_MM, FIELD_CAP_MM)
        return self._field

    @property
    def typical_edge(self) -> float:
        """Median edge length (mm), from a sample of the triangles."""
        if self._typical_edge is None:
            corners = self.vertices[self.faces[:: max(1, len(self.faces) // 20000)]]
            self._typical_edge = float(np.median(np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=2)))
        return self._typical_edge

    @property
    def longest_edge(self) -> float:
        """Longest edge (mm): no point of a triangle is farther than this from its nearest corner."""
        if self._longest_edge is None:
            self._longest_edge = float(self.longest_edges.max(initial=0.0))
        return self._longest_edge

    @property
    def longest_edges(self) -> FloatArray:
        """Longest edge of each triangle ``(m,)`` (mm)."""
        if self._longest_edges is None:
            # a coordinate of a corner at a time (no (m, 3) gathers), each gathered once
            columns = np.ascontiguousarray(self.vertices.T)
            corners = [[column.take(index) for column in columns] for index in np.ascontiguousarray(self.faces.T)]
            longest = np.zeros(len(self.faces))
            for i in range(3):  # squared lengths, one square root at the end
                start, end = corners[i], corners[(i + 1) % 3]
                squared = (start[0] - end[0]) ** 2
                squared += (start[1] - end[1]) ** 2
                squared += (start[2] - end[2]) ** 2
                np.maximum(longest, squared, out=longest)
            self._longest_edges = np.sqrt(longest)
        return self._longest_edges

    def spread(self, radius_mm: float) -> SpreadGrid:
        """The local corner reach of the triangles near a place (see :mod:`._spread`), for vertices within
        ``radius_mm`` of it (built once per radius)."""
        if radius_mm not in self._spreads:
            reach = corner_reach(self.vertices, self.faces, self.longest_edges)
            self._spreads[radius_mm] = SpreadGrid(self.vertices, reach, radius_mm, FIELD_VOXEL_MM)
        return self._spreads[radius_mm]


# Coarse distance field of a mesh's vertices: a look-up is within sqrt(3) voxels of the
# nearest-vertex distance, so it tells far points apart without a k-d tree query.
FIELD_VOXEL_MM = 1.0
FIELD_CAP_MM = 4.0


def raycasting_scene(vertices: FloatArray, faces: NDArray[np.int64]) -> MeshQuery:
    """The closest-point and ray-casting structure of one triangle mesh (a BVH, float64; :mod:`._meshquery`)."""
    return MeshQuery(vertices, faces)


KD_THREADS_FROM = 1_000_000


def workers(n: int) -> int:
    """k-d tree query threads for ``n`` points (-1: as many as the process may use, see :func:`query_threads`):
    one below a million points (the ICP's many small queries gain nothing from threads)."""
    return -1 if n > KD_THREADS_FROM else 1


def query_threads(threads: int) -> int:
    """``threads`` for a :class:`._nearest.NearestTree` query: -1 (or any negative) is every CPU the process
    may use, at most 2 (:func:`._meshquery.default_threads`)."""
    from mesial.aligner._meshquery import default_threads

    return default_threads() if threads < 0 else max(1, threads)


class SurfaceTarget:
    """Exact closest-point queries on a triangle mesh (the BVH of :mod:`._meshquery`).

    The mesh keeps its own frame; ``pose`` (default identity) places it in the
    frame of the queries, so one set of search structures (scene, k-d trees)
    serves every placement: see :meth:`placed`.
    """

    # Deeper than this (mm), a point behind an open surface is not counted as inside.
    max_penetration_mm = 1.5
    # Signed distances are exact within this distance of the surface (mm) and behind it ...
    exact_band_mm = 0.5
    # ... within about 0.02 mm up to this one (nearest vertex), coarse beyond (distance field).
    near_band_mm = max_penetration_mm

    def __init__(
        self,
        vertices: FloatArray,
        faces: NDArray[np.int64],
        pose: FloatArray | None = None,
        *,
        index: _MeshIndex | None = None,
    ) -> None:
        self._index = index if index is not None else _MeshIndex(vertices, faces)
        self.pose = np.eye(4) if pose is None else np.asarray(pose, dtype=np.float64)
        self._inverse = invert(self.pose)
        self._moved = not np.array_equal(self.pose, np.eye(4))
        self._vertices: FloatArray | None = None if self._moved else self._index.vertices
        self.faces = self._index.faces

    @property
    def vertices(self) -> FloatArray:
        """Vertices (mm) in the query frame."""
        if self._vertices is None:
            self._vertices = transform_points(self._index.vertices, self.pose)
        return self._vertices

    @classmethod
    def of_mesh(
        cls,
        vertices: FloatArray,
        faces: NDArray[np.int64],
        scene: MeshQuery | None = None,
        normals: FloatArray | None = None,
    ) -> SurfaceTarget:
        """A target in the mesh's own frame, optionally with its already built scene and vertex normals."""
        return cls(vertices, faces, index=_MeshIndex(vertices, faces, scene, normals))

    def placed(self, pose: FloatArray) -> SurfaceTarget:
        """The same surface moved by ``pose`` (mesh frame -> query frame), sharing the search structures."""
        return SurfaceTarget(self._index.vertices, self._index.faces, pose, index=self._index)

    def _local(self, points: FloatArray) -> FloatArray:
        return transform_points(points, self._inverse) if self._moved else np.asarray(points, dtype=np.float64)

    def vertex_distance(self, points: FloatArray, upper_bound: float = np.inf) -> FloatArray:
        """Distance (mm) from ``points (n, 3)`` to the nearest vertex (inf beyond ``upper_bound``).

        Within one vertex spacing of the exact surface distance; cheap, and
        cheapest for far points.
        """
        return self.nearest_vertex(points, upper_bound)[0]

    @property
    def scene(self) -> MeshQuery:
        """The BVH of the mesh in its own frame (:class:`._meshquery.MeshQuery`; built on first use, shared by every placement)."""
        return self._index.scene

    @property
    def longest_edge(self) -> float:
        """Longest edge (mm) of the mesh."""
        return self._index.longest_edge

    @property
    def typical_edge(self) -> float:
        """Median edge length (mm) of the mesh."""
        return self._index.typical_edge

    def coarse_distance(self, points: FloatArray) -> tuple[FloatArray, float]:
        """Approximate distance (mm) to the surface, capped at ``FIELD_CAP_MM``, and its error bound.

        ``|coarse - exact| <= bound`` below the cap (one distance-field look-up per point).
        """
        return self._index.field(self._local(points)), self._coarse_bound()

    def _coarse_bound(self) -> float:
        # grid rounding of the query and of the vertex (half a cell diagonal each), and
        # the farthest a point of a triangle can be from its nearest corner (longest edge / sqrt 3)
        return float(np.sqrt(3.0)) * FIELD_VOXEL_MM + self._index.longest_edge / float(np.sqrt(3.0))

    def near(self, points: FloatArray, gate: float) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Exact closest points for the points within ``gate`` (mm) of the surface; the others get
        distance inf and zero closest points and normals."""
        closest, normals, distance, _ = self.near_triangles(points, gate)
        return closest, normals, distance

    def near_triangles(
        self,
        points: FloatArray,
        gate: float,
        *,
        hints: NDArray[np.int64] | None = None,
        reach: FloatArray | None = None,
    ) -> tuple[FloatArray, FloatArray, FloatArray, NDArray[np.int64]]:
        """:meth:`near` and each point's triangle (-1 where none).

        ``hints (n,)``: a triangle of this mesh near each point (-1: none), say its closest one an
        iteration ago: the search looks only as far as that triangle (:meth:`._meshquery.MeshQuery.closest`),
        the answers are the same. ``reach (n,)`` (mm, positive, inf allowed): only a surface nearer than
        it matters for the point (say another surface is that near): a point whose closest point is
        farther gets none, the others their answer.
        """
        closest = np.zeros_like(points)
        normals = np.zeros_like(points)
        distance = np.full(len(points), np.inf)
        # the search itself bounded by the gate (a hair wider: the gate's own distance counts): far points
        # leave the hierarchy at its first boxes
        answer = self._index.scene.closest(
            self._local(points), within=gate * (1.0 + 1e-9) + 1e-12, bounds=reach, hints=hints
        )
        near = answer.triangles >= 0
        if near.any():
            closest[near], normals[near] = self._placed(answer.points[near], answer.normals[near])
            distance[near] = lengths(points[near] - closest[near])
        distance[distance > gate] = np.inf
        return closest, normals, distance, answer.triangles

    def vertex_planes(self, normals: FloatArray) -> VertexPlanes:
        """A cheaper target on the same k-d tree: the nearest vertex's tangent plane (``normals``: per vertex)."""
        return VertexPlanes(self, normals)

    def nearest_vertex(
        self, points: FloatArray, gate: float, *, threads: int | None = None
    ) -> tuple[FloatArray, NDArray[np.int64]]:
        """Distance to the nearest vertex (inf beyond ``gate``) and its index (``len(vertices)`` there).

        ``threads``: query threads (default: :func:`workers`; -1: see :func:`query_threads`).
        """
        distance, index = self._index.tree.query(
            self._local(points), gate, query_threads(threads or workers(len(points)))
        )
        return distance, index

    def closest(self, points: FloatArray) -> tuple[FloatArray, FloatArray, NDArray[np.int64]]:
        """Closest surface points.

        Parameters
        ----------
        points : (n, 3) float, millimetres

        Returns
        -------
        closest : (n, 3) float, millimetres
        normals : (n, 3) float
            Unit outward normal of the triangle hit.
        triangles : (n,) int
        """
        closest, normals, triangles, _ = self._closest_local(self._local(points))
        return (*self._placed(closest, normals), triangles)

    def exact_signed(self, points: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Exact signed distances: closest points, and the side from the closest feature's pseudonormal.

        An open scan has no inside far from its surface (``max_penetration_mm``) or past
        its border: a point whose closest point lies on the border is outside.

        Parameters
        ----------
        points : (n, 3) float, millimetres

        Returns
        -------
        distance : (n,) float, millimetres
            Positive outside, negative inside.
        closest : (n, 3) float, millimetres
        normals : (n, 3) float
            Unit outward normal of the triangle hit (the bite optimisation linearises along the
            offset from the closest point instead, except for a point on the surface).
        """
        distance, closest, normals = self._exact_local(self._local(points))
        return (distance, *self._placed(closest, normals))

    def _exact_local(self, local: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """:meth:`exact_signed` of points already in the mesh frame (closest points and normals in it too)."""
        closest, normals, triangles, weights = self._closest_local(local)
        sign, on_border = self._index.sides.side_normals(triangles, weights, normals)
        offset = local - closest
        gap = lengths(offset)
        inside = (np.einsum("ij,ij->i", offset, sign) < 0) & (gap < self.max_penetration_mm) & ~on_border
        return np.where(inside, -gap, gap), closest, normals

    def _closest_local(self, local: FloatArray) -> tuple[FloatArray, FloatArray, NDArray[np.int64], FloatArray]:
        """Closest points, unit face normals, triangles and barycentric weights ``(n, 3)``, in the mesh frame."""
        answer = self._index.scene.closest(local)  # float64 throughout: on the triangle, no re-projection
        return answer.points, answer.normals, answer.triangles, answer.weights

    def _placed(self, closest: FloatArray, normals: FloatArray) -> tuple[FloatArray, FloatArray]:
        if self._moved:
            return transform_points(closest, self.pose), rotate_vectors(normals, self.pose)
        return closest, normals

    def widest_exact_mm(self) -> float:
        """The farthest nearest-vertex distance (mm) at which :meth:`signed_distance` can still answer
        exactly: a point within ``exact_band_mm`` of the surface has a vertex within ``hypot(exact_band_mm,
        r)``, r at most the mesh's largest corner reach (longest edge / sqrt 3). Also the radius of its
        local spread (see :mod:`._spread`)."""
        return float(np.hypot(self.exact_band_mm, self._index.longest_edge / float(np.sqrt(3.0))))

    def prepare_signed_distance(self) -> None:
        """Build now what :meth:`signed_distance` would build on its first call (the distance field, the
        longest edges, the local spread, the corner lists of the pseudonormals), for example on a thread
        while other work leaves a core idle. The same structures: the answers do not change.

        Not to be called while another thread queries this mesh's :meth:`signed_distance` (the structures
        are built without a lock).
        """
        index = self._index
        _ = index.field, index.sides  # (properties: built on first use)
        index.spread(self.widest_exact_mm())

    def signed_distance(
        self,
        points: FloatArray,
        subset: NDArray[np.bool_] | None = None,
        previous: FloatArray | None = None,
        *,
        band_mm: float | None = None,
        within_band: NDArray[np.bool_] | None = None,
    ) -> tuple[FloatArray, FloatArray]:
        """Signed distance (positive outside, along the outward normal) and closest points.

        Exact closest points where it matters: within ``exact_band_mm`` of the
        surface (contacts, the interpolated contact border) and for every point
        behind it up to ``max_penetration_mm`` (penetrations). Other points
        within ``near_band_mm`` (the rest of the colour scale) get the
        nearest-vertex distance, an upper bound at most about 0.02 mm too long
        on a scan with 0.3 mm edges. Far points (most of an arch) get a coarse
        distance (a 1 mm distance field: at least ``near_band_mm``, within
        about 2 mm of the exact distance, capped at 4 mm); the k-d tree is
        queried only for the points the field cannot rule out.

        Parameters
        ----------
        points : (n, 3) float, millimetres
        subset : (n,) bool, optional
            Only these points are computed; the others keep ``previous`` (for
            a small motion of far points, whose distance is approximate anyway).
        previous : (n,) float, optional
            Required with ``subset``.
        band_mm : float, optional
            A narrower exact band than ``exact_band_mm`` (at most it): points farther than it
            from the surface get the nearest-vertex distance instead (still at least ``band_mm``).
        within_band : (n,) bool, optional
            Points the caller knows to lie within the band (``band_mm`` or ``exact_band_mm``) of the
            surface: queried exactly without the k-d tree's filter, which would send them there (the
            same answers, fewer queries). With ``subset``, over all the points too.

        Returns
        -------
        distance : (n,) float, millimetres
        closest : (n, 3) float, millimetres
            The point itself where the distance is not exact.
        """
        if subset is not None:
            if previous is None:
                raise ValueError("subset needs the previous distances")
            distance = np.array(previous, dtype=np.float64)
            closest = np.array(points, dtype=np.float64)
            if subset.any():
                distance[subset], closest[subset] = self.signed_distance(
                    points[subset], band_mm=band_mm, within_band=None if within_band is None else within_band[subset]
                )
            return distance, closest
        local = self._local(points)  # the points in the mesh's frame, once for every step below
        coarse, bound = self._index.field(local), self._coarse_bound()
        distance = np.maximum(coarse, self.near_band_mm)
        closest = np.array(points, dtype=np.float64)
        known = np.zeros(len(local), dtype=bool) if within_band is None else np.asarray(within_band, dtype=bool)
        candidates = np.flatnonzero((coarse < self.near_band_mm + bound) & ~known)
        # one query of ~100 000 points per arch: worth both cores (the ICP's many small ones are not)
        vertex, index = self._index.tree.query(local[candidates], self.near_band_mm, query_threads(-1))
        found = np.isfinite(vertex)
        candidates, vertex, index = candidates[found], vertex[found], index[found]
        distance[candidates] = vertex
        # A point at distance d from the surface has a vertex within sqrt(d^2 + r^2), r the farthest
        # a point of its nearest triangle can be from that triangle's corners; so the nearest-vertex
        # distance is an upper bound, r^2 / 2d at most too long (~0.02 mm at 0.5 mm): exact only within
        # the band, and behind the surface, where the sign matters and a penetration must not read as a
        # gap. r is the largest around the vertices near the point (._spread), not the mesh's largest:
        # a vertex within sqrt(band^2 + r^2) of the point is covered.
        band = self.exact_band_mm if band_mm is None else min(band_mm, self.exact_band_mm)
        spread = self._index.spread(self.widest_exact_mm())(local[candidates])
        wanted = vertex < np.hypot(band, spread)
        beyond = np.flatnonzero(~wanted)
        if len(beyond):
            # a filter only (which points get an exact query): the vertex's own normal will do
            normal = self._index.normals[index[beyond]]
            offset = local[candidates[beyond]] - self._index.vertices[index[beyond]]
            wanted[beyond] = np.einsum("ij,ij->i", offset, normal) < 0
        exact = candidates[wanted]
        if known.any():  # (in the points' order: a caller may have ordered them for the queries)
            exact = np.sort(np.concatenate([exact, np.flatnonzero(known)]))
        if len(exact):
            distance[exact], near, _ = self._exact_local(local[exact])
            closest[exact] = transform_points(near, self.pose) if self._moved else near
        return distance, closest


class VertexPlanes:
    """The nearest vertex's tangent plane of a :class:`SurfaceTarget` (its own frame): a fast approximate target.

    The tangent plane of the nearest vertex is off the surface by about the
    surface's curvature times the squared vertex spacing: good enough to
    converge, not for the last micrometres (those use exact closest points).
    """

    def __init__(self, surface: SurfaceTarget, normals: FloatArray) -> None:
        self.surface = surface
        # a point on the surface is rarely farther than this from its nearest vertex
        self.spacing = surface.typical_edge
        self.points = surface.vertices
        self.normals = np.asarray(normals, dtype=np.float64)

    def near(self, points: FloatArray, gate: float) -> tuple[FloatArray, FloatArray, FloatArray]:
        return _tangent_planes(self.points, self.normals, *self.surface.nearest_vertex(points, gate + self.spacing))


@dataclass(frozen=True)
class BiteFit:
    """How one bite scan fits the arches after the fine step.

    Attributes
    ----------
    points : int
        Bite points used.
    upper_inliers, lower_inliers : int
        Points explained by each arch within the inlier distance.
    fitness : float
        Share of bite points explained by either arch.
    inlier_rmse_mm : float
        RMS distance of the explained points.
    upper_rmse_mm, lower_rmse_mm : float
        The same per arch (inf when an arch explains no point). One scanner
        made the bite, so both arches fit it with the same residual when the
        poses are right; a lower arch in a nearby wrong pose fits worse.
    """

    points: int
    upper_inliers: int
    lower_inliers: int
    fitness: float
    inlier_rmse_mm: float
    upper_rmse_mm: float = float("inf")
    lower_rmse_mm: float = float("inf")


@dataclass(frozen=True)
class JointFit:
    """Result of :func:`refine_joint`.

    Attributes
    ----------
    bite_to_upper : tuple of (4, 4) float
    lower_to_upper : (4, 4) float or None
    bites : tuple of BiteFit
    iterations : int
    sigma_mm : float
        Final robust residual scale.
    converged : bool
        The loop stopped because an update moved the arches less than its
        threshold; False when it stopped at its iteration cap (or ran out of
        correspondences), so the poses may still be moving.
    update_mm : float
        How far the last update moved a point 25 mm from the centre of the moved points.
    plane_stage : JointFit or None
        The fine step's plane stage that preceded this exact stage (``registration._refine``).
    information : tuple of (6, 6) or (12, 12) float
        Per bite of ``bites``, the point-to-plane normal equations of its explained points (rows
        of :func:`_plane_rows`: the bite's twist, then the lower arch's, about the upper frame's
        origin), each point weighted by ``1 / inlier_rmse_mm²``: the inverse covariance of the
        poses were the residuals independent with that spread (:func:`lower_position_sd_mm`).
    """

    bite_to_upper: tuple[FloatArray, ...]
    lower_to_upper: FloatArray | None
    bites: tuple[BiteFit, ...]
    iterations: int
    sigma_mm: float
    converged: bool = False
    update_mm: float = float("inf")
    plane_stage: JointFit | None = None
    information: tuple[FloatArray, ...] = field(default=(), repr=False, compare=False)


def refine_joint(
    bites: list[FloatArray],
    upper: Target,
    lower: Target | None,
    bite_to_upper: list[FloatArray],
    lower_to_upper: FloatArray | None,
    params: AlignParams,
    *,
    max_distance_mm: float | None = None,
    max_iterations: int | None = None,
    threshold_mm: float | None = None,
    evaluate: bool = True,
) -> JointFit:
    """Robust point-to-plane ICP of bite scans against one or both arches.

    Parameters
    ----------
    bites : list of (n_k, 3) float, millimetres
        Bite points, each in its own file frame.
    upper : Target
        The reference arch (its frame is the frame of the unknowns): a :class:`SurfaceTarget`
        (exact closest points), or :class:`VertexPlanes` (the fine step's plane stage).
    lower : Target or None
        The other arch, of the same kind, or None to fit the bites to ``upper`` alone.
    bite_to_upper : list of (4, 4) float
        Initial poses.
    lower_to_upper : (4, 4) float or None
        Initial pose of the lower arch (required with ``lower``).
    params : AlignParams
    max_distance_mm : float, optional
        Initial correspondence gate (default ``params.fine_max_distance_mm``).
    max_iterations : int, optional
        Default ``params.max_iterations``.
    threshold_mm : float, optional
        Convergence threshold (default ``params.threshold_mm``).
    evaluate : bool
        Measure each bite's fit at the end (``JointFit.bites``; empty without).

    Returns
    -------
    fit : JointFit
    """
    poses = [np.array(p, dtype=np.float64) for p in bite_to_upper]
    lower_pose = None if lower is None or lower_to_upper is None else np.array(lower_to_upper, dtype=np.float64)
    n_unknowns = 6 * (len(poses) + (lower_pose is not None))
    gate = max_distance_mm or params.fine_max_distance_mm
    sigma = gate / 3.0
    iterations = 0
    converged, motion = False, float("inf")
    # per bite, the triangles each point matched at the previous iteration (exact surfaces): hints
    memos: list[dict[str, NDArray[np.int64]]] = [{} for _ in poses]
    for iterations in range(1, (max_iterations or params.max_iterations) + 1):  # noqa: B007
        hessian = np.zeros((n_unknowns, n_unknowns))
        gradient = np.zeros(n_unknowns)
        all_residuals = []
        centres = np.zeros((n_unknowns // 6, 3))  # where each unknown's motion is measured
        for k, (source, pose) in enumerate(zip(bites, poses, strict=True)):
            x, _, closest, normals, distance, on_lower = _match(source, pose, upper, lower, lower_pose, gate, memos[k])
            centres[k] = x.mean(axis=0)
            residual = np.einsum("ij,ij->i", x - closest, normals)
            use = np.isfinite(distance) & (np.abs(residual) < gate)
            all_residuals.append(residual[use])
            weight = _tukey(residual[use], params.tukey_constant * sigma)
            rows = np.zeros((int(use.sum()), n_unknowns))
            block = _plane_rows(x[use], closest[use], normals[use], on_lower[use], lower_pose is not None)
            rows[:, 6 * k : 6 * k + 6] = block[:, :6]
            if lower_pose is not None:
                rows[:, -6:] = block[:, 6:]
            hessian += rows.T @ (rows * weight[:, None])
            gradient += rows.T @ (weight * residual[use])
        residuals = np.concatenate(all_residuals) if all_residuals else np.zeros(0)
        if len(residuals) < n_unknowns:
            break
        step = _damped_step(hessian, gradient)
        for k in range(len(poses)):
            poses[k] = exp_se3(step[6 * k : 6 * k + 6]) @ poses[k]
        if lower_pose is not None:
            lower_pose = exp_se3(step[-6:]) @ lower_pose
        sigma = _robust_sigma(residuals)
        gate = float(_next_gate(gate, sigma, params))
        if lower_pose is not None:
            centres[-1] = centres[: len(poses)].mean(axis=0)
        motion = _motion(step, centres)
        if motion < (threshold_mm or params.threshold_mm):
            converged = True
            break
    evaluated = [
        _bite_fit(source, pose, upper, lower, lower_pose, params.inlier_distance_mm, memo)
        for source, pose, memo in zip(bites, poses, memos, strict=True)
        if evaluate
    ]
    fits = tuple(fit for fit, _ in evaluated)
    information = tuple(normal for _, normal in evaluated)
    return JointFit(tuple(poses), lower_pose, fits, iterations, sigma, converged, motion, information=information)


def cross_last(a: FloatArray, b: FloatArray, out: FloatArray) -> FloatArray:
    """``np.cross(a, b)`` over the last axis (length 3) of ``a, b (..., 3)``, written into ``out (..., 3)``
    (a view is fine): the same products and differences, bit for bit, without its axis handling
    and temporaries."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    np.subtract(a1 * b2, a2 * b1, out=out[..., 0])
    np.subtract(a2 * b0, a0 * b2, out=out[..., 1])
    np.subtract(a0 * b1, a1 * b0, out=out[..., 2])
    return out


def exp_se3_many(twists: FloatArray) -> FloatArray:
    """:func:`~mesial.aligner.transforms.exp_se3` of each row of ``twists (m, 6)``: ``(m, 4, 4)``.

    The same operations on arrays (one call instead of m; the short ICPs of the global step take
    thousands of steps); the same matrices as ``exp_se3`` row by row (tested to rounding).
    """
    twists = np.asarray(twists, dtype=np.float64).reshape(-1, 6)
    omega = twists[:, :3]
    angle = _norms(omega)
    still = angle < 1e-12
    axis = omega / np.where(still, 1.0, angle)[:, None]
    k = np.zeros((len(twists), 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k[:, 1, 0], k[:, 2, 0], k[:, 2, 1] = axis[:, 2], -axis[:, 1], axis[:, 0]
    rotation = np.eye(3) + np.sin(angle)[:, None, None] * k + (1 - np.cos(angle))[:, None, None] * (k @ k)
    rotation[still] = np.eye(3)
    out = np.zeros((len(twists), 4, 4))
    out[:, :3, :3] = rotation
    out[:, :3, 3] = twists[:, 3:]
    out[:, 3, 3] = 1.0
    return out


def _tukey(residual: FloatArray, scale: float | FloatArray) -> FloatArray:
    """Tukey's biweight ``(1 - (r / scale)^2)^2`` of residuals (mm), 0 beyond ``scale`` (broadcast)."""
    u = residual / scale
    return np.asarray(np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0), dtype=np.float64)


def _robust_sigma(residuals: FloatArray) -> float:
    """Robust residual scale (mm): 1.4826 median absolute deviations, at least 5 µm."""
    return max(1.4826 * float(np.median(np.abs(residuals - np.median(residuals)))), 0.005)


def _motion(step: FloatArray, centres: FloatArray) -> float:
    """How far an update ``step (6 k,)`` (twists) moves a point 25 mm from each unknown's ``centres (k, 3)``
    (an arch's half-width), the largest over the unknowns (mm)."""
    return max(
        25.0 * float(np.linalg.norm(step[i : i + 3]))
        + float(np.linalg.norm(np.cross(step[i : i + 3], centres[i // 6]) + step[i + 3 : i + 6]))
        for i in range(0, len(step), 6)
    )


def refine_pairs(
    source: FloatArray,
    upper: PlaneTarget,
    lower: PlaneTarget,
    bite_to_upper: FloatArray,
    lower_to_upper: FloatArray,
    params: AlignParams,
    *,
    max_distance_mm: float,
    max_iterations: int,
    threshold_mm: float,
) -> tuple[FloatArray, FloatArray]:
    """:func:`refine_joint` of one bite and the lower arch from several starting pairs at once.

    Each pair ``(bite_to_upper[i], lower_to_upper[i])`` is refined exactly as
    ``refine_joint([source], upper, lower, [bite_to_upper[i]], lower_to_upper[i], params,
    max_distance_mm=..., max_iterations=..., threshold_mm=..., evaluate=False)`` refines it
    (the same correspondences, weights, gates and stopping rule), with one k-d tree query
    per arch and iteration for all the pairs still moving.

    Parameters
    ----------
    source : (n, 3) float, millimetres
        Bite points, bite file frame.
    upper, lower : PlaneTarget
        Thinned arches, each in its file frame.
    bite_to_upper, lower_to_upper : (m, 4, 4) float
        Starting poses.
    params : AlignParams
    max_distance_mm : float
        Initial correspondence gate.
    max_iterations : int
    threshold_mm : float
        Convergence threshold.

    Returns
    -------
    bite_to_upper, lower_to_upper : (m, 4, 4) float
    """
    bites = np.array(bite_to_upper, dtype=np.float64).reshape(-1, 4, 4)
    lowers = np.array(lower_to_upper, dtype=np.float64).reshape(-1, 4, 4)
    gate = np.full(len(bites), float(max_distance_mm))
    sigma = gate / 3.0
    active = np.arange(len(bites))
    for _ in range(max_iterations):
        if not len(active):
            break
        x = source @ bites[active, :3, :3].transpose(0, 2, 1) + bites[active, None, :3, 3]  # (a, n, 3)
        # each pair's gate: one query within the largest, farther matches dropped per pair
        widest = float(gate[active].max())
        closest, normals, distance, squared = upper.near_rows(x, widest, gate[active])
        rotation, shift = lowers[active, :3, :3], lowers[active, None, :3, 3]
        local = (x - shift) @ rotation  # bite points in the lower's file frame
        # a match on the lower counts only if nearer than the upper's (on_lower below): looked for only
        # strictly within the upper's squared distance, where there is none in the lower's answer either
        # the point stays on the upper with the same distance (the square root is monotonic)
        closest_l, normals_l, distance_l, _ = lower.near_rows(local, widest, gate[active], squared)
        on_lower = distance_l < distance
        turned = rotation.transpose(0, 2, 1)
        closest = np.where(on_lower[..., None], closest_l @ turned + shift, closest)
        normals = np.where(on_lower[..., None], normals_l @ turned, normals)
        distance = np.minimum(distance, distance_l)
        residual = np.einsum("ani,ani->an", x - closest, normals)
        use = np.isfinite(distance) & (np.abs(residual) < gate[active, None])
        weight = np.where(use, _tukey(residual, params.tukey_constant * sigma[active, None]), 0.0)
        rows = _plane_rows(x, closest, normals, on_lower, True)
        transposed = rows.transpose(0, 2, 1)  # batched matrix products (BLAS), not einsum's loops
        hessian = transposed @ (rows * weight[..., None])
        gradient = (transposed @ (weight * residual)[..., None])[..., 0]
        # every pair's step at once (the same values as one pair at a time)
        going = use.sum(axis=1) >= 12  # too few correspondences: that pair stops where it is
        pairs = active[going]
        hessian, gradient = hessian[going], gradient[going]
        step = _damped_step(hessian, gradient)
        bites[pairs] = exp_se3_many(step[:, :6]) @ bites[pairs]
        lowers[pairs] = exp_se3_many(step[:, 6:]) @ lowers[pairs]
        sigma[pairs] = _robust_sigma_rows(residual[going], use[going])
        gate[pairs] = _next_gate(gate[pairs], sigma[pairs], params)
        centre = x[going].mean(axis=1)
        active = pairs[_motion_rows(step, centre) >= threshold_mm]
    return bites, lowers


def _plane_rows(
    x: FloatArray, closest: FloatArray, normals: FloatArray, on_lower: NDArray[np.bool_], lower: bool
) -> FloatArray:
    """Rows ``(..., 6)``, or ``(..., 12)`` with ``lower``, of the point-to-plane normal equations.

    Bite points ``x (..., 3)`` (upper frame) matched to ``closest`` with ``normals``: the bite's
    twist (``x × n``, ``n``), then the lower arch's (``-(c × n)``, ``-n`` where the match is on the
    lower, 0 elsewhere). :func:`refine_joint` places each bite's block among its unknowns,
    :func:`refine_pairs` takes them as they are.
    """
    rows = np.zeros((*x.shape[:-1], 12 if lower else 6))
    cross_last(x, normals, rows[..., 0:3])
    rows[..., 3:6] = normals
    if lower:
        rows[..., 6:9] = np.where(on_lower[..., None], -cross_last(closest, normals, np.empty_like(closest)), 0.0)
        rows[..., 9:12] = np.where(on_lower[..., None], -normals, 0.0)
    return rows


def _damped_step(hessian: FloatArray, gradient: FloatArray) -> FloatArray:
    """The Gauss-Newton step of normal equations ``(..., u, u)``, ``(..., u)``, damped by 1e-9 of the mean diagonal."""
    size = hessian.shape[-1]
    damped = hessian + (1e-9 * np.trace(hessian, axis1=-2, axis2=-1) / size)[..., None, None] * np.eye(size)
    return np.asarray(np.linalg.solve(damped, -gradient[..., None])[..., 0], dtype=np.float64)


def _next_gate(gate: FloatArray | float, sigma: FloatArray | float, params: AlignParams) -> FloatArray:
    """The correspondence gate after an iteration: ``fine_gate_sigmas`` robust sigmas, never wider, at least the floor."""
    return np.maximum(params.fine_gate_floor_mm, np.minimum(gate, params.fine_gate_sigmas * np.asarray(sigma)))


def _robust_sigma_rows(residual: FloatArray, use: NDArray[np.bool_]) -> FloatArray:
    """:func:`_robust_sigma` of each row's used residuals (``residual, use (a, n)``, at least one used a row)."""
    counts = use.sum(axis=1)
    rows = np.arange(len(residual))

    def median(values: FloatArray) -> FloatArray:
        # the unused ones sort last; the mean of the middle two (of the middle one twice), as np.median takes it
        ordered = np.sort(np.where(use, values, np.inf), axis=1)
        return np.asarray((ordered[rows, (counts - 1) // 2] + ordered[rows, counts // 2]) / 2, dtype=np.float64)

    centre = median(residual)
    return np.maximum(1.4826 * median(np.abs(residual - centre[:, None])), 0.005)


def _motion_rows(step: FloatArray, centres: FloatArray) -> FloatArray:
    """:func:`_motion` of each pair's step ``(a, 12)`` (bite, then lower arch), both measured from the pair's
    ``centres (a, 3)``."""
    moves = []
    for i in (0, 6):
        omega, shift = step[:, i : i + 3], step[:, i + 3 : i + 6]
        moved = cross_last(omega, centres, np.empty_like(omega)) + shift
        moves.append(25.0 * _norms(omega) + _norms(moved))
    return np.asarray(np.maximum(moves[0], moves[1]), dtype=np.float64)


def _norms(vectors: FloatArray) -> FloatArray:
    """Lengths of ``vectors (a, 3)``: each as ``np.linalg.norm`` takes one vector (a product of it with itself)."""
    return np.asarray(np.sqrt((vectors[:, None, :] @ vectors[:, :, None])[:, 0, 0]), dtype=np.float64)


def _match(
    source: FloatArray,
    pose: FloatArray,
    upper: Target,
    lower: Target | None,
    lower_pose: FloatArray | None,
    gate: float,
    memo: dict[str, NDArray[np.int64]] | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, NDArray[np.bool_]]:
    """Bite points in the upper frame and their closest points on the nearer arch.

    ``memo`` (exact surfaces only; updated): each point's triangles of an earlier call on the same
    points, ``"upper"`` and ``"lower"``, as hints for this one; and the lower arch is searched only as
    far as the upper's match (a lower match no nearer loses to it). The same answers as without.
    """
    x = transform_points(source, pose)
    exact = memo is not None and isinstance(upper, SurfaceTarget) and isinstance(lower, SurfaceTarget)
    if exact and lower_pose is not None:
        assert memo is not None and isinstance(upper, SurfaceTarget) and isinstance(lower, SurfaceTarget)
        closest, normals, distance, found = upper.near_triangles(x, gate, hints=memo.get("upper"))
        memo["upper"] = _kept(found, memo.get("upper"))
        # just beyond the upper's distance (far more than the rounding of the two frames' distances)
        reach = np.where(np.isfinite(distance), distance * (1.0 + 1e-9) + 1e-6, np.inf)
        closest_l, normals_l, distance_l, found = lower.near_triangles(
            transform_points(x, invert(lower_pose)), gate, hints=memo.get("lower"), reach=reach
        )
        memo["lower"] = _kept(found, memo.get("lower"))
        distance, on_lower = _take_nearer(closest, normals, distance, (closest_l, normals_l, distance_l), lower_pose)
        return x, pose, closest, normals, distance, on_lower
    closest, normals, distance = upper.near(x, gate)
    on_lower = np.zeros(len(x), dtype=bool)
    if lower is not None and lower_pose is not None:
        found_l = lower.near(transform_points(x, invert(lower_pose)), gate)
        distance, on_lower = _take_nearer(closest, normals, distance, found_l, lower_pose)
    return x, pose, closest, normals, distance, on_lower


def _take_nearer(
    closest: FloatArray,
    normals: FloatArray,
    distance: FloatArray,
    lower_match: tuple[FloatArray, FloatArray, FloatArray],
    lower_pose: FloatArray,
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Where the lower arch's match is strictly nearer than the upper's, it replaces it.

    ``closest``, ``normals (m, 3)`` (upper frame, mm; updated in place) and ``distance (m,)`` are the
    upper's; ``lower_match`` is the lower's closest points, normals (lower frame) and distances,
    ``lower_pose (4, 4)`` lower -> upper. Returns the distances to the nearer arch and where it is
    the lower.
    """
    closest_l, normals_l, distance_l = lower_match
    closest_l = transform_points(closest_l, lower_pose)
    normals_l = rotate_vectors(normals_l, lower_pose)
    on_lower = distance_l < distance
    closest[on_lower], normals[on_lower] = closest_l[on_lower], normals_l[on_lower]
    return np.minimum(distance, distance_l), on_lower


def _kept(found: NDArray[np.int64], previous: NDArray[np.int64] | None) -> NDArray[np.int64]:
    """Hints for the next match: each point's triangle found now, else the one it had (any triangle will do)."""
    return found if previous is None else np.where(found >= 0, found, previous)


def _bite_fit(
    source: FloatArray,
    pose: FloatArray,
    upper: Target,
    lower: Target | None,
    lower_pose: FloatArray | None,
    inlier_distance: float,
    memo: dict[str, NDArray[np.int64]] | None = None,
) -> tuple[BiteFit, FloatArray]:
    """The bite's :class:`BiteFit` and its normal equations (see ``JointFit.information``); ``memo``: :func:`_match`'s."""
    x, _, closest, normals, distance, on_lower = _match(source, pose, upper, lower, lower_pose, inlier_distance, memo)
    plane = np.abs(np.einsum("ij,ij->i", x - closest, normals))
    inlier = np.isfinite(distance) & (plane < inlier_distance)

    def rms(mask: NDArray[np.bool_]) -> float:
        return float(np.sqrt(np.mean(plane[mask] ** 2))) if mask.any() else float("inf")

    rows = _plane_rows(x[inlier], closest[inlier], normals[inlier], on_lower[inlier], lower_pose is not None)
    spread = max(rms(inlier), SPREAD_FLOOR_MM) if inlier.any() else 1.0
    fit = BiteFit(
        points=len(source),
        upper_inliers=int((inlier & ~on_lower).sum()),
        lower_inliers=int((inlier & on_lower).sum()),
        fitness=float(inlier.mean()),
        inlier_rmse_mm=rms(inlier),
        upper_rmse_mm=rms(inlier & ~on_lower),
        lower_rmse_mm=rms(inlier & on_lower),
    )
    return fit, rows.T @ rows / spread**2


# A bite fitting exactly (synthetic data) is not infinitely precise: the spread its normal equations assume
# is at least this (mm), a tenth of the noise of an intraoral scanner
SPREAD_FLOOR_MM = 1e-3


def lower_position_sd_mm(fit: JointFit, lower_vertices: FloatArray) -> float:
    """How precisely the fit's bites fix the lower arch relative to the upper (mm).

    The RMS over ``lower_vertices (n, 3)`` (lower file frame, mm) of the standard deviation of
    their position relative to the upper arch, from the joint normal equations of every bite's
    explained points (``fit.information``; the bites' poses are nuisance unknowns). A bite that
    shows a small patch of an arch, or surfaces the arch can slide along, fixes it loosely:
    the deviation grows though every point fits. ``inf`` when the equations leave the lower
    arch free (or there is no lower arch).

    With ``d = ω × p + t`` the displacement of a vertex ``p`` (upper frame) under the lower
    pose's error ``(ω, t)`` of covariance ``C``, the mean of ``|d|²`` over the vertices is
    ``tr((tr(M) I - M) C_ωω) - 2 tr([m]ₓ C_ωt) + tr(C_tt)``, ``m`` and ``M`` the vertices'
    mean and second moment ``E[p pᵀ]``.
    """
    if fit.lower_to_upper is None or not fit.information or fit.information[0].shape != (12, 12):
        return float("inf")
    n = len(fit.information)
    unknowns = 6 * (n + 1)
    normal = np.zeros((unknowns, unknowns))
    for k, block in enumerate(fit.information):
        own, lower = slice(6 * k, 6 * k + 6), slice(unknowns - 6, unknowns)
        normal[own, own] += block[:6, :6]
        normal[own, lower] += block[:6, 6:]
        normal[lower, own] += block[6:, :6]
        normal[lower, lower] += block[6:, 6:]
    try:
        covariance = np.linalg.inv(normal)[-6:, -6:]
    except np.linalg.LinAlgError:
        return float("inf")
    if not np.all(np.isfinite(covariance)) or np.any(np.diag(covariance) < 0):
        return float("inf")
    points = lower_vertices @ fit.lower_to_upper[:3, :3].T + fit.lower_to_upper[:3, 3]
    mean = points.mean(axis=0)
    moment = points.T @ points / len(points)
    cross = np.array([[0.0, -mean[2], mean[1]], [mean[2], 0.0, -mean[0]], [-mean[1], mean[0], 0.0]])
    rotation, coupled, translation = covariance[:3, :3], covariance[:3, 3:], covariance[3:, 3:]
    variance = np.trace((np.trace(moment) * np.eye(3) - moment) @ rotation)
    variance += -2.0 * np.trace(cross @ coupled) + np.trace(translation)
    return float(np.sqrt(max(variance, 0.0)))
