"""Fine registration: robust point-to-plane ICP of bite scans against both arches at once.

Unknowns, all in the upper arch's frame: one pose per bite scan
(``bite_to_upper``) and the pose of the lower arch (``lower_to_upper``). Each bite
point is matched to the exact closest point on whichever arch surface is
nearer (Embree ray-casting scene, no sampling bias); residuals are
point-to-plane; correspondences beyond a shrinking gate are dropped and the
rest weighted with Tukey's biweight, so the parts of a bite that an arch does
not explain (the antagonist, scanner debris) do not pull. The Gauss-Newton
steps solve all poses together, which is how two bite scans constrain each arch
jointly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from mesial.aligner.params import AlignParams
from mesial.aligner.transforms import exp_se3, invert, rotate_vectors, transform_points

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
        from scipy.spatial import cKDTree

        # the nearest sample of a point on the surface can be this far (thinned clouds)
        self.spacing = float(spacing_mm)
        self.points = np.ascontiguousarray(points, dtype=np.float64)
        self.normals = np.ascontiguousarray(normals, dtype=np.float64)
        self.tree = cKDTree(self.points)

    def match(self, x: FloatArray, gate: float) -> tuple[FloatArray, NDArray[np.int64]]:
        """Distance to the nearest sample (inf beyond ``gate``) and its index (``len(points)`` there)."""
        distance, index = self.tree.query(x, workers=-1, distance_upper_bound=gate)
        return np.asarray(distance, dtype=np.float64), np.asarray(index, dtype=np.int64)

    def near(self, points: FloatArray, gate: float) -> tuple[FloatArray, FloatArray, FloatArray]:
        distance, index = self.match(points, gate + self.spacing)
        found = np.isfinite(distance)
        closest = np.zeros_like(points)
        normals = np.zeros_like(points)
        closest[found] = self.points[index[found]]
        normals[found] = self.normals[index[found]]
        return closest, normals, distance


class SurfaceTarget:
    """Exact closest-point queries on a triangle mesh (Open3D RaycastingScene)."""

    # Deeper than this (mm), a point behind an open surface is not counted as inside.
    max_penetration_mm = 1.5
    # Signed distances are exact within this distance of the surface (mm).
    exact_band_mm = 0.6

    def __init__(self, vertices: FloatArray, faces: NDArray[np.int64]) -> None:
        from mesial.aligner._o3d import open3d

        o3d = open3d()

        self._o3d = o3d
        self.vertices = vertices
        self.faces = faces
        self._scene = o3d.t.geometry.RaycastingScene()
        self._scene.add_triangles(vertices.astype(np.float32), faces.astype(np.uint32))
        self._tree: object | None = None
        self._far_tree: object | None = None

    def vertex_distance(self, points: FloatArray, upper_bound: float = np.inf) -> FloatArray:
        """Distance (mm) from ``points (n, 3)`` to the nearest vertex (inf beyond ``upper_bound``).

        Within one vertex spacing of the exact surface distance; cheap, and
        cheapest for far points, so used to gate and to score hypotheses.
        """
        from scipy.spatial import cKDTree

        if self._tree is None:
            self._tree = cKDTree(self.vertices)
        tree: cKDTree = self._tree
        distance, _ = tree.query(points, workers=-1, distance_upper_bound=upper_bound)
        return np.asarray(distance, dtype=np.float64)

    def _far_distance(self, points: FloatArray) -> FloatArray:
        """Distance (mm) to the surface thinned to 1 mm voxels: within about 1 mm, for far points."""
        from scipy.spatial import cKDTree

        from mesial.aligner._features import voxel_representatives

        if self._far_tree is None:
            self._far_tree = cKDTree(self.vertices[voxel_representatives(self.vertices, 1.0)])
        tree: cKDTree = self._far_tree
        distance, _ = tree.query(points, workers=-1)
        return np.asarray(distance, dtype=np.float64)

    def near(self, points: FloatArray, gate: float) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Exact closest points for the points near the surface; the others get distance inf."""
        closest = np.zeros_like(points)
        normals = np.zeros_like(points)
        distance = np.full(len(points), np.inf)
        near = np.isfinite(self.vertex_distance(points, upper_bound=gate + 0.5))
        if near.any():
            closest[near], normals[near], _ = self.closest(points[near])
            distance[near] = np.linalg.norm(points[near] - closest[near], axis=1)
        return closest, normals, distance

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
        query = self._o3d.core.Tensor(np.ascontiguousarray(points, dtype=np.float32))
        answer = self._scene.compute_closest_points(query)
        closest = answer["points"].numpy().astype(np.float64)
        # float32 closest points are re-projected in float64 onto the triangle's plane
        triangles = answer["primitive_ids"].numpy().astype(np.int64)
        normals = answer["primitive_normals"].numpy().astype(np.float64)
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        anchor = self.vertices[self.faces[triangles, 0]]
        closest -= np.einsum("ij,ij->i", closest - anchor, normals)[:, None] * normals
        return closest, normals, triangles

    def signed_distance(self, points: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Signed distance (positive outside, along the outward normal) and closest points.

        Parameters
        ----------
        points : (n, 3) float, millimetres

        Returns
        -------
        distance : (n,) float, millimetres
        closest : (n, 3) float, millimetres
        """
        # exact closest points only where it matters (near the surface); far
        # points (most of an arch) keep their nearest-vertex distance, which is
        # within one vertex spacing of the exact one and cheap to find
        # exact closest points only where it matters: within exact_band_mm of the
        # surface (contacts, penetrations, the interpolated contact border); far
        # points (most of an arch) get the distance to the surface thinned to
        # 1 mm voxels (within 0.9 mm of the exact one, and at least the band)
        distance = self.vertex_distance(points, upper_bound=self.exact_band_mm)
        closest = np.array(points, dtype=np.float64)
        near = np.isfinite(distance)
        if not near.all():
            distance[~near] = np.maximum(self._far_distance(points[~near]), self.exact_band_mm)
        inside = np.zeros(len(points), dtype=bool)
        if near.any():
            exact, normals, _ = self.closest(points[near])
            offset = points[near] - exact
            gap = np.linalg.norm(offset, axis=1)
            side = np.einsum("ij,ij->i", offset, normals)
            # an open scan has no inside far from its surface or past its border: a
            # point is inside only when near and behind the face it projects onto
            inside[near] = (side < 0) & (gap < self.max_penetration_mm) & (-side > 0.5 * gap)
            distance[near], closest[near] = gap, exact
        return np.where(inside, -distance, distance), closest


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
    """

    points: int
    upper_inliers: int
    lower_inliers: int
    fitness: float
    inlier_rmse_mm: float


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
    """

    bite_to_upper: tuple[FloatArray, ...]
    lower_to_upper: FloatArray | None
    bites: tuple[BiteFit, ...]
    iterations: int
    sigma_mm: float


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
) -> JointFit:
    """Robust point-to-plane ICP of bite scans against one or both arches.

    Parameters
    ----------
    bites : list of (n_k, 3) float, millimetres
        Bite points, each in its own file frame.
    upper : SurfaceTarget
        The reference arch (its frame is the frame of the unknowns).
    lower : SurfaceTarget or None
        The other arch, or None to fit the bites to ``upper`` alone.
    bite_to_upper : list of (4, 4) float
        Initial poses.
    lower_to_upper : (4, 4) float or None
        Initial pose of the lower arch (required with ``lower``).
    params : AlignParams
    max_distance_mm : float, optional
        Initial correspondence gate (default ``params.fine_max_distance_mm``).
    max_iterations : int, optional
        Default ``params.max_iterations``.

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
    for iterations in range(1, (max_iterations or params.max_iterations) + 1):  # noqa: B007
        hessian = np.zeros((n_unknowns, n_unknowns))
        gradient = np.zeros(n_unknowns)
        all_residuals = []
        for k, (source, pose) in enumerate(zip(bites, poses, strict=True)):
            x, _, closest, normals, distance, on_lower = _match(source, pose, upper, lower, lower_pose, gate)
            residual = np.einsum("ij,ij->i", x - closest, normals)
            use = np.isfinite(distance) & (np.abs(residual) < gate)
            all_residuals.append(residual[use])
            u = residual[use] / (params.tukey_constant * sigma)
            weight = np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0)
            rows = np.zeros((int(use.sum()), n_unknowns))
            rows[:, 6 * k : 6 * k + 3] = np.cross(x[use], normals[use])
            rows[:, 6 * k + 3 : 6 * k + 6] = normals[use]
            if lower_pose is not None:
                low = on_lower[use]
                rows[low, -6:-3] = -np.cross(closest[use][low], normals[use][low])
                rows[low, -3:] = -normals[use][low]
            hessian += rows.T @ (rows * weight[:, None])
            gradient += rows.T @ (weight * residual[use])
        residuals = np.concatenate(all_residuals) if all_residuals else np.zeros(0)
        if len(residuals) < n_unknowns:
            break
        hessian += 1e-9 * np.trace(hessian) / n_unknowns * np.eye(n_unknowns)
        step = np.asarray(np.linalg.solve(hessian, -gradient), dtype=np.float64)
        for k in range(len(poses)):
            poses[k] = exp_se3(step[6 * k : 6 * k + 6]) @ poses[k]
        if lower_pose is not None:
            lower_pose = exp_se3(step[-6:]) @ lower_pose
        sigma = max(1.4826 * float(np.median(np.abs(residuals - np.median(residuals)))), 0.005)
        gate = max(params.fine_gate_floor_mm, min(gate, params.fine_gate_sigmas * sigma))
        motion = max(
            50.0 * float(np.linalg.norm(step[i : i + 3])) + float(np.linalg.norm(step[i + 3 : i + 6]))
            for i in range(0, n_unknowns, 6)
        )
        if motion < params.threshold_mm:
            break
    fits = tuple(
        _bite_fit(source, pose, upper, lower, lower_pose, params.inlier_distance_mm)
        for source, pose in zip(bites, poses, strict=True)
    )
    return JointFit(tuple(poses), lower_pose, fits, iterations, sigma)


def _match(
    source: FloatArray,
    pose: FloatArray,
    upper: Target,
    lower: Target | None,
    lower_pose: FloatArray | None,
    gate: float,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, NDArray[np.bool_]]:
    """Bite points in the upper frame and their closest points on the nearer arch."""
    x = transform_points(source, pose)
    closest, normals, distance = upper.near(x, gate)
    on_lower = np.zeros(len(x), dtype=bool)
    if lower is not None and lower_pose is not None:
        closest_l, normals_l, distance_l = lower.near(transform_points(x, invert(lower_pose)), gate)
        closest_l = transform_points(closest_l, lower_pose)
        normals_l = rotate_vectors(normals_l, lower_pose)
        on_lower = distance_l < distance
        closest[on_lower], normals[on_lower] = closest_l[on_lower], normals_l[on_lower]
        distance = np.minimum(distance, distance_l)
    return x, pose, closest, normals, distance, on_lower


def _bite_fit(
    source: FloatArray,
    pose: FloatArray,
    upper: Target,
    lower: Target | None,
    lower_pose: FloatArray | None,
    inlier_distance: float,
) -> BiteFit:
    x, _, closest, normals, distance, on_lower = _match(source, pose, upper, lower, lower_pose, inlier_distance)
    plane = np.abs(np.einsum("ij,ij->i", x - closest, normals))
    inlier = np.isfinite(distance) & (plane < inlier_distance)
    rmse = float(np.sqrt(np.mean(plane[inlier] ** 2))) if inlier.any() else float("inf")
    return BiteFit(
        points=len(source),
        upper_inliers=int((inlier & ~on_lower).sum()),
        lower_inliers=int((inlier & on_lower).sum()),
        fitness=float(inlier.mean()),
        inlier_rmse_mm=rmse,
    )
