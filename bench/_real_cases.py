"""Bite cases from real arch scans: intercuspal position built here, bite scans simulated.

Used by ``bench_aligner.py --real DIR`` (and the confidence calibration) on a folder of
real upper/lower arch pairs ``NNN_U.ply`` / ``NNN_L.ply`` (e.g. the 3D-IOSSeg set's
``train`` split). Nothing here is committed data: the meshes stay where they are and
everything derived from them lives in memory or in a temporary folder.

Per pair:

1. Both arches are read and subdivided (Loop, twice: ~8 000 -> ~130 000 vertices).
2. The occlusion frame is the lower arch's canonical frame (``_anatomy.arch_frame``:
   z towards the crowns, y anterior). The upper starts where the files put it.
3. **Intercuspal position**: both occlusal tables are levelled (plane through the
   highest crown-facing points) and the upper's table laid over the lower's in the plane
   (2D ICP); from there a rigid search seats the upper on the lower. Per motion
   (yaw, two translations in the occlusal plane, roll, pitch) the upper is dropped
   along z until it touches the lower's height map; the position with the most
   contacts on the *weaker* posterior side (gap < 0.2 mm) wins, coarse to fine. The
   drop is then corrected on the exact surfaces so that no point of the upper lies
   deeper than 0.05 mm inside the lower; contacts per posterior side and the
   deepest penetration are reported.
4. Bite scans: either simulator (``samples.scan_bite`` or
   ``rangescan.range_image_bite``) along the arches' buccal outline, right side
   (canine to the last molar) and left side; every file in a random pose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._anatomy import FLIP, arch_frame
from mesial.aligner._features import voxel_representatives
from mesial.aligner.rangescan import ArchPath, range_image_bite
from mesial.aligner.samples import Mesh, SampleCase, scan_bite
from mesial.aligner.transforms import exp_se3, invert, random_rigid, transform_points

FloatArray = NDArray[np.float64]
CELL_MM = 0.25
MAX_PENETRATION_MM = 0.05
DEPTH_MM = 15.0


@dataclass(frozen=True)
class Occluded:
    """A real pair in its constructed intercuspal position (occlusion frame)."""

    name: str
    upper: Mesh
    lower: Mesh
    path: ArchPath
    contacts_mm2: tuple[float, float]  # right, left posterior contact area (gap < 0.1 mm), mm²
    penetration_mm: float


def pairs(folder: Path) -> list[str]:
    """Stems ``NNN`` with both ``NNN_U.ply`` and ``NNN_L.ply``, sorted."""
    return sorted(p.name[:-6] for p in folder.glob("*_U.ply") if (folder / f"{p.name[:-6]}_L.ply").exists())


def _read(path: Path, subdivisions: int = 2) -> Mesh:
    import trimesh

    mesh: Any = trimesh.load(path, process=False, force="mesh")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    mesh = trimesh.Trimesh(vertices, faces, process=True)  # merge duplicates, drop degenerate faces
    if subdivisions == 0:
        return Mesh(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64))
    try:
        vertices, faces = trimesh.remesh.subdivide_loop(mesh.vertices, mesh.faces, iterations=subdivisions)  # type: ignore[no-untyped-call]
    except ValueError:  # Loop needs a manifold mesh (an edge of three faces): split at the midpoints instead
        vertices, faces = mesh.vertices, mesh.faces
        for _ in range(subdivisions):
            vertices, faces = trimesh.remesh.subdivide(vertices, faces)  # type: ignore[no-untyped-call]
    return Mesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64))


def _vertex_normals(mesh: Mesh) -> FloatArray:
    corners = mesh.vertices[mesh.faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    out = np.zeros_like(mesh.vertices)
    for k in range(3):
        np.add.at(out, mesh.faces[:, k], normals)
    return np.asarray(out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12), dtype=np.float64)


def _outward(mesh: Mesh, crown: FloatArray) -> Mesh:
    """Wind the faces so the occlusal surface's normals point along ``crown``."""
    normals = _vertex_normals(mesh)
    top = mesh.vertices @ crown > np.percentile(mesh.vertices @ crown, 80)
    if float((normals[top] @ crown).sum()) < 0:
        return Mesh(mesh.vertices, mesh.faces[:, ::-1].copy())
    return mesh


def _frame(mesh: Mesh) -> FloatArray:
    pick = voxel_representatives(mesh.vertices, 1.0)
    return arch_frame(mesh.vertices[pick], _vertex_normals(mesh)[pick], mesh.vertices, mesh.faces).to_canonical


def _table(mesh: Mesh, crown: FloatArray) -> FloatArray:
    """The occlusal table: the highest 20 % of the points along ``crown`` whose normals face that way."""
    height = mesh.vertices @ crown
    normals = _vertex_normals(mesh)
    pick = (height > np.percentile(height, 80)) & (normals @ crown > 0.5)
    table = mesh.vertices[pick]
    return np.asarray(table[voxel_representatives(table, 0.5)], dtype=np.float64)


def _level(mesh: Mesh, crown: FloatArray) -> Mesh:
    """Turn the mesh so that the plane through its occlusal table is ``z = 0`` (crowns along ``crown``)."""
    for _ in range(3):
        table = _table(mesh, crown)
        centre = table.mean(axis=0)
        _, vectors = np.linalg.eigh((table - centre).T @ (table - centre))
        normal = vectors[:, 0] * np.sign(vectors[:, 0] @ crown)
        axis = np.cross(normal, crown)
        angle = float(np.arcsin(min(1.0, float(np.linalg.norm(axis)))))
        twist = np.zeros(6)
        if angle > 1e-9:
            twist[:3] = axis / np.linalg.norm(axis) * angle
        rotation = exp_se3(twist)
        moved = transform_points(mesh.vertices - centre, rotation)
        mesh = Mesh(moved + centre * np.array([1.0, 1.0, 0.0]), mesh.faces)  # the table at z = 0
    return mesh


def _match_tables(upper: Mesh, lower: Mesh) -> FloatArray:
    """Rigid motion in the plane (yaw, x, y) laying the upper's occlusal table over the lower's (2D ICP)."""
    from scipy.spatial import cKDTree

    source = _table(upper, np.array([0.0, 0.0, -1.0]))[:, :2]
    target = _table(lower, np.array([0.0, 0.0, 1.0]))[:, :2]
    tree = cKDTree(target)
    motion = np.eye(3)
    motion[:2, 2] = target.mean(axis=0) - source.mean(axis=0)
    for gate in (8.0, 4.0, 4.0, 2.0, 2.0, 2.0, 1.5, 1.5, 1.5, 1.5):
        moved = source @ motion[:2, :2].T + motion[:2, 2]
        distance, index = tree.query(moved, distance_upper_bound=gate)
        use = np.isfinite(distance)
        a, b = moved[use], target[index[use]]
        ca, cb = a.mean(axis=0), b.mean(axis=0)
        u, _, vt = np.linalg.svd((a - ca).T @ (b - cb))
        rotation = (u @ vt).T
        if np.linalg.det(rotation) < 0:
            vt[-1] *= -1
            rotation = (u @ vt).T
        step = np.eye(3)
        step[:2, :2] = rotation
        step[:2, 2] = cb - rotation @ ca
        motion = step @ motion
    out = np.eye(4)
    out[:2, :2], out[:2, 3] = motion[:2, :2], motion[:2, 2]
    return out


def _motions(yaw: FloatArray, dx: FloatArray, dy: FloatArray, roll: FloatArray, pitch: FloatArray) -> FloatArray:
    grid = np.stack(np.meshgrid(roll, pitch, yaw, dx, dy, indexing="ij"), axis=-1).reshape(-1, 5)
    twists = np.zeros((len(grid), 6))
    twists[:, :3] = np.radians(grid[:, :3])
    twists[:, 3:5] = grid[:, 3:5]
    return np.stack([exp_se3(t) for t in twists])


class _Seater:
    """Drops the upper onto the lower's height map for many motions at once."""

    def __init__(self, lower: Mesh, upper_points: FloatArray, pivot: FloatArray) -> None:
        from scipy.ndimage import grey_dilation

        v = lower.vertices
        self.origin = v[:, :2].min(axis=0) - 2.0
        shape = np.ceil((v[:, :2].max(axis=0) + 2.0 - self.origin) / CELL_MM).astype(int) + 1
        cell = np.floor((v[:, :2] - self.origin) / CELL_MM).astype(int)
        height = np.full(shape, -np.inf)
        np.maximum.at(height, (cell[:, 0], cell[:, 1]), v[:, 2])
        filled = grey_dilation(np.where(np.isfinite(height), height, -1e9), size=(2, 2))
        self.height = np.where(np.isfinite(height), height, np.where(filled > -1e8, filled, -np.inf))
        self.points = upper_points - pivot
        self.pivot = pivot
        self.y_split = float(np.percentile(v[:, 1], 65))  # posterior: behind the canines, roughly

    def gaps(self, motion: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Vertical gaps (upper above lower, before the drop) and the moved points, for one motion."""
        moved = self.points @ motion[:3, :3].T + motion[:3, 3] + self.pivot
        cell = np.floor((moved[:, :2] - self.origin) / CELL_MM).astype(int)
        inside = (cell >= 0).all(axis=1) & (cell[:, 0] < self.height.shape[0]) & (cell[:, 1] < self.height.shape[1])
        gap = np.full(len(moved), np.inf)
        gap[inside] = moved[inside, 2] - self.height[cell[inside, 0], cell[inside, 1]]
        return gap, moved

    def score(self, motion: FloatArray) -> tuple[float, float]:
        """(contacts on the weaker posterior side after the drop, drop)."""
        gap, moved = self.gaps(motion)
        drop = float(np.min(gap))
        near = gap - drop < 0.2
        posterior = moved[:, 1] < self.y_split
        right = int((near & posterior & (moved[:, 0] > 0)).sum())
        left = int((near & posterior & (moved[:, 0] < 0)).sum())
        return min(right, left) + 0.1 * (right + left), drop


def occlude(folder: Path, name: str, subdivisions: int = 2) -> Occluded:
    """Read a real pair and build its intercuspal position (see the module docstring).

    ``subdivisions``: Loop subdivisions of each arch (2: ~130 000 vertices; 0: the scans as stored).
    """
    upper = _read(folder / f"{name}_U.ply", subdivisions)
    lower = _read(folder / f"{name}_L.ply", subdivisions)
    # the lower's canonical frame is the occlusion frame; the upper's canonical frame turned 180° about
    # the anterior axis faces it (the files are not in a shared frame); normals point outwards
    lower = _outward(Mesh(transform_points(lower.vertices, _frame(lower)), lower.faces), np.array([0.0, 0.0, 1.0]))
    upper = Mesh(transform_points(upper.vertices, FLIP @ _frame(upper)), upper.faces)
    upper = _outward(upper, np.array([0.0, 0.0, -1.0]))
    # level both occlusal tables (a palate or a slanted base tilts the principal axes), then
    # match the tables' outlines in the plane (2D ICP): the start of the seating search
    lower = _level(lower, np.array([0.0, 0.0, 1.0]))
    upper = _level(upper, np.array([0.0, 0.0, -1.0]))
    upper = Mesh(transform_points(upper.vertices, _match_tables(upper, lower)), upper.faces)
    lift = np.eye(4)
    lift[2, 3] = np.percentile(lower.vertices[:, 2], 99) - np.percentile(upper.vertices[:, 2], 1) + 3.0
    upper = Mesh(transform_points(upper.vertices, lift), upper.faces)
    normals = _vertex_normals(upper)
    low = upper.vertices[:, 2] < np.percentile(upper.vertices[:, 2], 1) + 5.0  # the crowns, not the palate
    down = upper.vertices[(normals[:, 2] < -0.2) & low]
    down = down[voxel_representatives(down, 0.4)]
    seater = _Seater(lower, down, down.mean(axis=0))
    best = np.eye(4)
    for yaw, dx, dy, tilt in (((4.0, 1.0), (2.0, 0.5), (3.0, 0.5), (0.0, 1.0)),
                              ((1.0, 0.5), (0.5, 0.25), (0.5, 0.25), (2.0, 1.0)),
                              ((0.5, 0.5), (0.25, 0.25), (0.25, 0.25), (0.5, 0.5))):  # fmt: skip

        def values(spec: tuple[float, float]) -> FloatArray:
            return np.arange(-spec[0], spec[0] + 1e-9, spec[1])

        candidates = _motions(values(yaw), values(dx), values(dy), values(tilt), values(tilt))
        scores = [seater.score(motion @ best) for motion in candidates]
        index = int(np.argmax([s for s, _ in scores]))
        best = candidates[index] @ best
    _, drop = seater.score(best)
    seat = np.eye(4)
    seat[2, 3] = -drop
    # the pivot-relative motion as a matrix on file points
    to_pivot, back = np.eye(4), np.eye(4)
    to_pivot[:3, 3], back[:3, 3] = -seater.pivot, seater.pivot
    placement = seat @ back @ best @ to_pivot
    upper = Mesh(transform_points(upper.vertices, placement), upper.faces)
    upper, contacts, penetration = _settle(upper, lower)
    # a lab trims the base: gingiva farther than DEPTH_MM from the occlusal plane goes
    upper, lower = _trim(upper, upper.vertices[:, 2] < DEPTH_MM), _trim(lower, lower.vertices[:, 2] > -DEPTH_MM)
    both = np.vstack([upper.vertices, lower.vertices])
    return Occluded(name, upper, lower, ArchPath.from_points(both), contacts, penetration)


def _trim(mesh: Mesh, keep: NDArray[np.bool_]) -> Mesh:
    faces = mesh.faces[keep[mesh.faces].all(axis=1)]
    used = np.zeros(len(mesh.vertices), dtype=bool)
    used[faces] = True
    return Mesh(mesh.vertices[used], (np.cumsum(used) - 1)[faces])


def _settle(upper: Mesh, lower: Mesh) -> tuple[Mesh, tuple[float, float], float]:
    """Lift the upper until nothing is deeper than MAX_PENETRATION_MM inside the lower (exact surfaces)."""
    from mesial.aligner._o3d import open3d

    o3d = open3d()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(lower.vertices.astype(np.float32), lower.faces.astype(np.uint32))
    vertices = upper.vertices.copy()
    low_z = np.percentile(lower.vertices[:, 2], 99) + 1.0
    for _ in range(6):
        near = vertices[:, 2] < low_z
        answer = scene.compute_closest_points(o3d.core.Tensor(vertices[near].astype(np.float32)))
        closest = answer["points"].numpy().astype(np.float64)
        normal = answer["primitive_normals"].numpy().astype(np.float64)
        signed = np.einsum("ij,ij->i", vertices[near] - closest, normal)
        gap = np.linalg.norm(vertices[near] - closest, axis=1)
        # behind the lower's surface only where close to it (the face normal is a poor side test far off)
        signed = np.where((signed < 0) & (gap < 0.5), -gap, gap)
        deepest = float(-signed.min())
        if deepest <= MAX_PENETRATION_MM + 1e-4:
            break
        vertices[:, 2] += deepest - MAX_PENETRATION_MM * 0.8
    # contact area per posterior side: a vertex's share of its faces' area
    corners = vertices[upper.faces]
    area = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1) / 6
    vertex_area = np.zeros(len(vertices))
    for k in range(3):
        np.add.at(vertex_area, upper.faces[:, k], area)
    index = np.flatnonzero(near)
    contact = index[signed < 0.1]
    posterior = vertices[contact, 1] < np.percentile(lower.vertices[:, 1], 65)
    right = float(vertex_area[contact[posterior & (vertices[contact, 0] > 0)]].sum())
    left = float(vertex_area[contact[posterior & (vertices[contact, 0] < 0)]].sum())
    return Mesh(vertices, upper.faces), (right, left), max(0.0, float(-signed.min()))


def bite_case(
    occluded: Occluded, seed: int, *, simulator: str, noise_mm: float = 0.02, one_sided: bool = False
) -> SampleCase:
    """Bite scans of an occluded real pair and every file in a random pose (``SampleCase``)."""
    rng = np.random.default_rng([seed, 7])
    path = occluded.path
    x_max = float(np.abs(path.points[:, 0]).max())
    right = (path.arc_at_x(0.55 * x_max, 1.0), path.length - 1.0)
    left = (1.0, path.arc_at_x(-0.55 * x_max, -1.0))
    ranges = [right] if one_sided else [right, left]
    if simulator == "range":
        arches = [(m.vertices, m.faces) for m in (occluded.upper, occluded.lower)]
        bites = [Mesh(*range_image_bite(arches, path, r, rng, noise_mm=noise_mm)) for r in ranges]
    else:
        bites = [scan_bite(occluded.upper, occluded.lower, path, r, rng, noise_mm=noise_mm) for r in ranges]
    poses = {name: random_rigid(rng, translation_mm=40.0) for name in ("upper", "lower", "bite", "bite2")}
    to_bite = poses["bite"]
    upper = Mesh(transform_points(occluded.upper.vertices, poses["upper"]), occluded.upper.faces)
    lower = Mesh(transform_points(occluded.lower.vertices, poses["lower"]), occluded.lower.faces)
    files = tuple(
        Mesh(transform_points(b.vertices, poses[n]), b.faces) for n, b in zip(("bite", "bite2"), bites, strict=False)
    )
    truth = {name: to_bite @ invert(poses[name]) for name in ("upper", "lower", "bite", "bite2")[: 2 + len(bites)]}
    return SampleCase(upper, lower, files, truth, to_bite, seed, noise_mm)
