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
5. Other occlusions (``relate``, ``RELATIONS``): the natural seat's upper moved into molar
   class II/III, yaw, crossbites, an anterior open bite, or either arch shortened by a molar,
   then re-seated vertically (docs/aligner.md, "Occlusal relations measured").
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


def _scene(mesh: Mesh) -> Any:
    """Open3D's ray-casting scene of ``mesh``'s triangles (float32), for closest points and rays."""
    from mesial.aligner._o3d import open3d

    o3d = open3d()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32))
    return scene


def _signed_gaps(scene: Any, points: FloatArray) -> FloatArray:
    """Distance (mm) of each of ``points (n, 3)`` to the surface of ``scene`` (:func:`_scene`), negative behind it.

    Behind the surface only where close to it (within 0.5 mm): the face normal is a poor side test far off.
    """
    from mesial.aligner._o3d import open3d

    answer = scene.compute_closest_points(open3d().core.Tensor(points.astype(np.float32)))
    closest = answer["points"].numpy().astype(np.float64)
    normal = answer["primitive_normals"].numpy().astype(np.float64)
    signed = np.einsum("ij,ij->i", points - closest, normal)
    gap = np.linalg.norm(points - closest, axis=1)
    return np.asarray(np.where((signed < 0) & (gap < 0.5), -gap, gap), dtype=np.float64)


def _settle(upper: Mesh, lower: Mesh) -> tuple[Mesh, tuple[float, float], float]:
    """Lift the upper until nothing is deeper than MAX_PENETRATION_MM inside the lower (exact surfaces)."""
    scene = _scene(lower)
    vertices = upper.vertices.copy()
    low_z = float(np.percentile(lower.vertices[:, 2], 99)) + 1.0
    if not (vertices[:, 2] < low_z).any():  # resting on the lower's highest 1 % alone (a relation's re-seat)
        low_z = float(vertices[:, 2].min()) + 1.0
    for _ in range(6):
        near = vertices[:, 2] < low_z
        signed = _signed_gaps(scene, vertices[near])
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
    occluded: Occluded,
    seed: int,
    *,
    simulator: str,
    noise_mm: float = 0.02,
    one_sided: bool = False,
    per_side: bool = False,
) -> SampleCase:
    """Bite scans of an occluded real pair and every file in a random pose (``SampleCase``).

    Each bite runs along the buccal path from where it crosses 0.55 of the path's largest
    ``|x|`` (about the canine) to 1 mm before its posterior end. ``per_side`` (for arches
    moved by ``relate``): 0.55 of each side's own largest ``|x|``, at the first crossing
    walking from the path's most anterior point to that side's end. The arches' two halves
    then differ in width, and the combined outline can end in a hook behind the molars whose
    crossing ``ArchPath.arc_at_x`` (the nearest sample) may pick: that side's bite was empty.
    """
    rng = np.random.default_rng([seed, 7])
    path = occluded.path
    x_max = float(np.abs(path.points[:, 0]).max())
    if per_side:
        front = int(np.argmax(path.points[:, 1]))
        x = path.points[:, 0]
        to_right = front + int(np.argmax(x[front:] >= 0.55 * float(x.max())))
        to_left = front - int(np.argmax(x[front::-1] <= 0.55 * float(x.min())))
        right, left = (float(path.arc[to_right]), path.length - 1.0), (1.0, float(path.arc[to_left]))
    else:
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


# --- occlusal relations beside the natural seat (issue 10, goal 1) -----------------------------

CROWN_BAND_MM = 5.0  # crown points: within this of the occlusal plane (z = 0) on the arch's side
MOLAR_MM = 10.0  # mesio-distal length of a molar: the crop of a shortened arch
INCISAL_MM = 8.0  # the incisors: within this of the lower's most anterior point (y)


@dataclass(frozen=True)
class Relation:
    """How the upper is moved from the natural (intercuspal) seat, in the occlusion frame.

    The occlusion frame is the lower arch's canonical frame: ``x`` to the patient's right,
    ``y`` anterior, ``z`` towards the lower's crowns (up). Lengths in mm, angles in degrees.
    Applied by :func:`relate` in this order: ``narrow_mm``, the crops, ``yaw_deg``, the
    translations, a vertical re-seat, then ``open_mm`` (the front lifted, no re-seat at the front).

    Attributes
    ----------
    name : str
        Label printed in tables.
    anterior_mm : float
        Upper moved along ``+y`` relative to the lower: molar class II > 0, class III < 0.
    transverse_mm : float
        Upper moved along ``+x`` (to the patient's right): its left posterior teeth go lingual
        to the lower's (a left crossbite, the right side moved buccally); < 0: a right crossbite.
    yaw_deg : float
        Upper turned about the vertical axis through the lower's centre (the mean of its vertices
        in ``x, y``), counter-clockwise seen from above.
    narrow_mm : float
        Bilateral posterior crossbite: the upper's teeth moved towards the midline by this much
        on each side behind 60 % of its depth from the incisors, tapering linearly to 0 at the
        incisors (``x -= narrow_mm * w(y) * tanh(x / 5 mm)``: teeth move almost rigidly, the palate
        between them is compressed).
    open_mm : float
        Anterior open bite: after the re-seat the upper is pitched about a transverse axis at its
        posterior end (occlusal level) so that its most anterior point rises by this much; the
        upper is then dropped again until it touches (at the molars), nothing more.
    crop_upper_mm, crop_lower_mm : tuple of float
        Shortened arch: per side (right, left), everything of that side (``x > 0`` / ``x < 0``)
        within this distance of the arch's posterior end (its crown points' smallest ``y``) is
        removed. ``MOLAR_MM`` removes the last molar.
    """

    name: str
    anterior_mm: float = 0.0
    transverse_mm: float = 0.0
    yaw_deg: float = 0.0
    narrow_mm: float = 0.0
    open_mm: float = 0.0
    crop_upper_mm: tuple[float, float] = (0.0, 0.0)
    crop_lower_mm: tuple[float, float] = (0.0, 0.0)


BOTH = (MOLAR_MM, MOLAR_MM)
RIGHT = (MOLAR_MM, 0.0)
RELATIONS: tuple[Relation, ...] = (
    Relation("natural"),
    Relation("class II +4 mm", anterior_mm=4.0),
    Relation("class II +8 mm", anterior_mm=8.0),
    Relation("class III -4 mm", anterior_mm=-4.0),
    Relation("class III -8 mm", anterior_mm=-8.0),
    Relation("yaw +8°", yaw_deg=8.0),
    Relation("yaw -8°", yaw_deg=-8.0),
    Relation("yaw +15°", yaw_deg=15.0),
    Relation("yaw -15°", yaw_deg=-15.0),
    Relation("crossbite right 3.5 mm", transverse_mm=-3.5),
    Relation("crossbite left 3.5 mm", transverse_mm=3.5),
    Relation("crossbite both 3.5 mm", narrow_mm=3.5),
    Relation("open bite 2 mm", open_mm=2.0),
    Relation("open bite 4 mm", open_mm=4.0),
    Relation("shortened lower, both sides", crop_lower_mm=BOTH),
    Relation("shortened upper, both sides", crop_upper_mm=BOTH),
    Relation("shortened both arches, right", crop_upper_mm=RIGHT, crop_lower_mm=RIGHT),
    Relation("shortened both arches, both sides", crop_upper_mm=BOTH, crop_lower_mm=BOTH),
)
QUICK_RELATIONS = ("natural", "class II +8 mm", "class III -8 mm", "yaw +15°", "crossbite right 3.5 mm",
                   "open bite 4 mm", "shortened both arches, both sides")  # fmt: skip


def relation(name: str) -> Relation:
    """The relation of ``RELATIONS`` called ``name``."""
    for r in RELATIONS:
        if r.name == name:
            return r
    raise ValueError(f"unknown relation {name!r}: one of {', '.join(r.name for r in RELATIONS)}")


def _crop(mesh: Mesh, per_side_mm: tuple[float, float], crowns_up: bool) -> Mesh:
    """Remove each side's posterior end (``per_side_mm`` = right, left; see ``Relation``)."""
    if max(per_side_mm) <= 0:
        return mesh
    v = mesh.vertices
    crown = (v[:, 2] > -CROWN_BAND_MM) if crowns_up else (v[:, 2] < CROWN_BAND_MM)
    drop = np.zeros(len(v), dtype=bool)
    for side, crop in zip((v[:, 0] > 0, v[:, 0] < 0), per_side_mm, strict=True):
        if crop > 0 and (crown & side).any():
            end = float(v[crown & side, 1].min())
            drop |= side & (v[:, 1] < end + crop)
    out = _trim(mesh, ~drop)
    if len(out.faces) == 0:
        raise ValueError("the crop removed the whole arch")
    return out


def _narrow(mesh: Mesh, narrow_mm: float) -> Mesh:
    """Move the posterior teeth towards the midline (see ``Relation.narrow_mm``)."""
    if narrow_mm == 0:
        return mesh
    v = mesh.vertices.copy()
    front, back = float(v[:, 1].max()), float(v[:, 1].min())
    weight = np.clip((front - v[:, 1]) / (0.6 * (front - back)), 0.0, 1.0)
    v[:, 0] -= narrow_mm * weight * np.tanh(v[:, 0] / 5.0)
    return Mesh(v, mesh.faces)


def _vertical_gap(upper: Mesh, lower: Mesh) -> float:
    """How far the upper can drop along ``-z`` before a vertex of either arch meets the other's triangles.

    Both ways (upper vertices downwards onto the lower's triangles, lower vertices upwards onto
    the upper's) on the exact surfaces; ``inf`` when the arches do not overlap seen from above.
    """
    from mesial.aligner._o3d import open3d

    o3d = open3d()

    def first_hit(origins: FloatArray, direction: float, target: Mesh) -> float:
        rays = np.zeros((len(origins), 6), dtype=np.float32)
        rays[:, :3], rays[:, 5] = origins, direction
        hits = _scene(target).cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        hits = hits[np.isfinite(hits)]
        return float(hits.min()) if len(hits) else float("inf")

    return min(first_hit(upper.vertices, -1.0, lower), first_hit(lower.vertices, 1.0, upper))


def _deepest(upper: FloatArray, lower: Mesh, scene: Any = None) -> float:
    """Deepest penetration of the upper's points into the lower (mm, >= 0), measured as ``_settle`` does
    (``scene``: :func:`_scene` of ``lower`` when the caller has it)."""
    near = upper[upper[:, 2] < np.percentile(lower.vertices[:, 2], 99) + 1.0]
    if len(near) == 0:
        return 0.0
    return max(0.0, float(-_signed_gaps(_scene(lower) if scene is None else scene, near).min()))


def _reseat(upper: Mesh, lower: Mesh) -> Mesh:
    """Drop the upper along ``-z`` onto the lower, as deep as ``MAX_PENETRATION_MM`` allows.

    Lifted clear of the lower, dropped until a vertex of one arch meets the other's triangles
    (vertically), then lowered further while the deepest penetration (closest points, as
    ``_settle`` measures it) stays within ``MAX_PENETRATION_MM``: the tolerance the natural
    seat has (a vertical touch alone leaves sloped cusps 0.1-0.2 mm apart along their normals).
    """
    lift = float(lower.vertices[:, 2].max() - upper.vertices[:, 2].min()) + 1.0
    raised = upper.vertices + np.array([0.0, 0.0, lift])
    gap = _vertical_gap(Mesh(raised, upper.faces), lower)
    if not np.isfinite(gap):
        raise ValueError("the arches do not overlap seen from above: nothing to seat on")
    touching = raised - np.array([0.0, 0.0, gap])
    scene = _scene(lower)  # (every drop tried below queries the same lower)
    low, high = 0.0, 1.0  # further drop, mm: within the tolerance / past it
    while _deepest(touching - np.array([0.0, 0.0, high]), lower, scene) <= MAX_PENETRATION_MM:
        low, high = high, 2 * high
    for _ in range(12):
        middle = 0.5 * (low + high)
        if _deepest(touching - np.array([0.0, 0.0, middle]), lower, scene) <= MAX_PENETRATION_MM:
            low = middle
        else:
            high = middle
    return Mesh(touching - np.array([0.0, 0.0, low]), upper.faces)


def _rigid(upper: Mesh, yaw_deg: float, pivot: FloatArray, shift: FloatArray) -> Mesh:
    turn = np.radians(yaw_deg)
    c, s = np.cos(turn), np.sin(turn)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return Mesh((upper.vertices - pivot) @ rotation.T + pivot + shift, upper.faces)


def _pitch_front_up(upper: Mesh, open_mm: float) -> Mesh:
    """Turn the upper about the transverse axis at its posterior end so that its front rises by ``open_mm``."""
    v = upper.vertices
    crown = v[:, 2] < CROWN_BAND_MM
    back, front = float(v[crown, 1].min()), float(v[crown, 1].max())
    pivot = np.array([0.0, back, float(v[crown, 2].min())])
    angle = np.arcsin(min(1.0, open_mm / (front - back)))  # the front, at the pivot's height, rises by open_mm
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])  # about +x: y > back rises
    return Mesh((v - pivot) @ rotation.T + pivot, upper.faces)


@dataclass(frozen=True)
class Related:
    """A pair in an occlusal relation, with what the construction measured.

    Attributes
    ----------
    occluded : Occluded
        Arches (occlusion frame), their buccal path, posterior contacts (mm², gap < 0.1 mm) and
        deepest penetration (mm, <= 0.05 after the re-seat).
    relation : Relation
    incisal_opening_mm : float
        Vertical opening at the incisors: the upper's lowest point minus the lower's highest,
        both within ``INCISAL_MM`` of the lower's most anterior point; negative: an overbite,
        positive: an open bite (train pair 009: 0.02 at the natural seat, 1.46 and 3.23 for the
        2 and 4 mm open bites: the re-seat after the pitch drops the molars back a little); NaN
        when the upper has nothing there (a class III upper behind the lower's incisors).
    """

    occluded: Occluded
    relation: Relation
    incisal_opening_mm: float


def relate(occluded: Occluded, rel: Relation) -> Related:
    """The pair of ``occluded`` (natural seat) moved into the occlusal relation ``rel``.

    See ``Relation`` for each displacement. After the displacement the upper is re-seated
    vertically: lifted clear and dropped along ``-z`` until a vertex of one arch meets the
    other's triangles, then (``_settle``) lifted until nothing lies deeper than
    ``MAX_PENETRATION_MM`` (0.05 mm) inside the lower. The buccal path the bite simulators
    follow is rebuilt from the moved arches. ``Relation("natural")`` only re-seats (it moves
    the upper by at most the natural seat's penetration, <= 0.05 mm).
    """
    upper = _crop(_narrow(occluded.upper, rel.narrow_mm), rel.crop_upper_mm, crowns_up=False)
    lower = _crop(occluded.lower, rel.crop_lower_mm, crowns_up=True)
    centre = np.array([*lower.vertices[:, :2].mean(axis=0), 0.0])
    upper = _rigid(upper, rel.yaw_deg, centre, np.array([rel.transverse_mm, rel.anterior_mm, 0.0]))
    upper = _reseat(upper, lower)
    if rel.open_mm > 0:
        upper = _reseat(_pitch_front_up(upper, rel.open_mm), lower)
    upper, contacts, penetration = _settle(upper, lower)
    both = np.vstack([upper.vertices, lower.vertices])
    moved = Occluded(f"{occluded.name} {rel.name}", upper, lower, ArchPath.from_points(both), contacts, penetration)
    return Related(moved, rel, _incisal_opening(upper, lower))


def _incisal_opening(upper: Mesh, lower: Mesh) -> float:
    """Lowest upper point minus highest lower point within ``INCISAL_MM`` of the lower's front (``y``), mm."""
    front = float(lower.vertices[:, 1].max()) - INCISAL_MM
    top = lower.vertices[lower.vertices[:, 1] > front, 2]
    bottom = upper.vertices[upper.vertices[:, 1] > front, 2]
    return float(bottom.min() - top.max()) if len(top) and len(bottom) else float("nan")
