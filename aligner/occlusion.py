"""Occlusal analysis: signed distances, contacts, regions, patches, bite optimisation.

Signed distance from a vertex of one arch to the antagonist surface is
positive in the gap and negative inside the antagonist (penetration, a
"bite-through"). Areas integrate the distance field linearly over each
triangle, so a contact area is exact for piecewise-linear fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._icp import SurfaceTarget
from mesial.aligner.params import OcclusionParams
from mesial.aligner.transforms import exp_se3, transform_points

FloatArray = NDArray[np.float64]
REGIONS = ("right_posterior", "anterior", "left_posterior")
# The bite optimisation stops within this (mm) of the tolerance, or when a step moves less.
SETTLED_MM = 0.001
# It moves the lower vertices closer than the contact threshold plus REACH_MM (the ones a
# correction of up to about REACH_MM can bring into contact), all of them: a subsample that
# depends on the vertex order or on how many vertices lie in the band moved the answer by
# 0.01-0.02 mm (tests/aligner/test_invariance.py).
REACH_MM = 0.1
# Weight of a penetration past the tolerance (a contact's is 1). Weights change with the distance
# over RAMP_MM, not at once: a vertex crossing a limit by a micrometre does not change the step.
DEEP_WEIGHT = 10.0
RAMP_MM = 0.002


# Cell (mm) of the grid whose cells :func:`spatial_order` lists one after the other.
SPATIAL_CELL_MM = 2.0


def spatial_order(points: FloatArray, cell_mm: float = SPATIAL_CELL_MM) -> NDArray[np.int64]:
    """Indices that list ``points (n, 3)`` cell by cell of a ``cell_mm`` grid (in index order within a cell).

    An STL's vertices come in the order of their merged corners' hash (see
    :func:`mesial.common.meshformat.merge_identical_points`): neighbours lie far apart in
    memory, and every k-d tree and closest-point query jumps across the whole mesh. Queried
    in this order the same points are answered the same, a quarter to a third faster
    (measured on 130 000-vertex arches: a full signed distance 0.40 -> 0.29 s CPU).
    """
    points = np.asarray(points, dtype=np.float64)
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    # a coordinate at a time (a reduction or broadcast across the rows of (n, 3) is several times slower)
    key = np.zeros(len(points), dtype=np.int64)
    for column in points.T:
        cell = np.floor((column - column.min()) / cell_mm).astype(np.int64)
        key *= int(cell.max()) + 1
        key += cell
    shift = max(1, (len(points) - 1).bit_length())
    if int(key.max()) >= 1 << (62 - shift):  # (an extent no dental scan has) the slower stable argsort
        return np.argsort(key, kind="stable").astype(np.int64)
    # the cell above each point's index: one plain sort of integers (no argsort) gives the order
    key <<= shift
    key |= np.arange(len(points), dtype=np.int64)
    key.sort()
    return np.asarray(key & ((1 << shift) - 1), dtype=np.int64)


def with_a_corner(mask: NDArray[np.bool_], faces: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Which triangles ``(m, 3)`` have a corner where ``mask (n,)`` holds (three column look-ups:
    ``mask[faces].any(axis=1)``'s answer, about ten times faster)."""
    return np.asarray(mask[faces[:, 0]] | mask[faces[:, 1]] | mask[faces[:, 2]], dtype=bool)


def area_below(vertices: FloatArray, faces: NDArray[np.int64], values: FloatArray, level: float) -> FloatArray:
    """Area (mm²) of each triangle where the linearly interpolated ``values`` are below ``level``.

    Parameters
    ----------
    vertices : (n, 3) float, millimetres
    faces : (m, 3) int
    values : (n,) float
    level : float

    Returns
    -------
    area : (m,) float, mm²
    """
    area = np.zeros(len(faces))
    below = values < level
    touched = np.flatnonzero(with_a_corner(below, faces))  # every other triangle is wholly above: area 0
    if len(touched) == 0:
        return area
    faces = faces[touched]
    corners = vertices[faces]
    full = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    f = np.sort(values[faces] - level, axis=1)
    a, b, c = f[:, 0], f[:, 1], f[:, 2]
    fraction = np.zeros(len(faces))
    fraction[c < 0] = 1.0
    one = (a < 0) & (b >= 0)  # only the smallest corner below: a corner triangle
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction[one] = (a[one] / (a[one] - b[one])) * (a[one] / (a[one] - c[one]))
        two = (b < 0) & (c >= 0)  # two corners below: all but the corner triangle above
        fraction[two] = 1.0 - (c[two] / (c[two] - a[two])) * (c[two] / (c[two] - b[two]))
    area[touched] = full * np.nan_to_num(fraction)
    return area


def count_patches(faces: NDArray[np.int64], mask: NDArray[np.bool_]) -> int:
    """Connected patches of vertices where ``mask`` holds, joined along mesh edges.

    Union-find by hooking and pointer jumping on the masked vertices (a few thousand
    at most): every pass joins each edge's two trees under the smaller root, then
    flattens the trees; it ends when every edge lies within one tree.
    """
    index = np.flatnonzero(mask)
    if len(index) == 0:
        return 0
    touched = faces[with_a_corner(mask, faces)]
    edges = np.concatenate([touched[:, [0, 1]], touched[:, [1, 2]], touched[:, [2, 0]]])
    edges = edges[mask[edges[:, 0]] & mask[edges[:, 1]]]
    remap = np.full(len(mask), -1, dtype=np.int64)
    remap[index] = np.arange(len(index))
    a, b = remap[edges[:, 0]], remap[edges[:, 1]]
    root = np.arange(len(index))
    while True:
        ra, rb = root[a], root[b]
        split = ra != rb
        if not split.any():
            break
        np.minimum.at(root, np.maximum(ra[split], rb[split]), np.minimum(ra[split], rb[split]))
        while True:  # every vertex points at its tree's root
            jumped = root[root]
            if np.array_equal(jumped, root):
                break
            root = jumped
    return int(np.count_nonzero(root == np.arange(len(index))))


@dataclass(frozen=True)
class ArchFrame:
    """Anatomical axes of the pair of arches in the output frame (unit vectors).

    ``right`` (patient's right), ``anterior``, ``superior`` (towards the upper arch).
    """

    right: FloatArray
    anterior: FloatArray
    superior: FloatArray
    origin: FloatArray


def arch_frame(upper: FloatArray, lower: FloatArray) -> ArchFrame:
    """Estimate the anatomical axes from the two arches in occlusion.

    The occlusal axis is the least-variance axis of both arches, oriented from
    the lower to the upper. The anterior axis is the in-plane principal axis
    along which the vertex centroid is most off the bounding-box centre (a U
    shape is denser at its closed, anterior end).

    Parameters
    ----------
    upper, lower : (n, 3) float, millimetres

    Returns
    -------
    frame : ArchFrame
    """
    points = np.vstack([upper, lower])
    centre = points.mean(axis=0)
    centred = points - centre
    _, vectors = np.linalg.eigh(centred.T @ centred)
    superior = vectors[:, 0]
    if float((upper.mean(axis=0) - lower.mean(axis=0)) @ superior) < 0:
        superior = -superior
    best, anterior = -1.0, vectors[:, 2]
    for axis in (vectors[:, 1], vectors[:, 2]):
        projection = centred @ axis
        offset = -0.5 * (projection.max() + projection.min())  # centroid minus box centre
        if abs(offset) > best:
            best, anterior = abs(offset), axis if offset > 0 else -axis
    right = np.cross(anterior, superior)
    return ArchFrame(right, anterior, superior, centre)


def regions_of(points: FloatArray, frame: ArchFrame, anterior_share: float) -> NDArray[np.int64]:
    """Region index per point: 0 right posterior, 1 anterior, 2 left posterior."""
    offset = points - frame.origin
    forward = offset @ frame.anterior
    lateral = offset @ frame.right
    front = forward.max() - anterior_share * np.ptp(forward)
    region = np.where(lateral > 0, 0, 2)
    region[forward > front] = 1
    return region.astype(np.int64)


@dataclass(frozen=True)
class ArchContacts:
    """Contacts of one arch with its antagonist.

    Attributes
    ----------
    distance : (n,) float, millimetres
        Signed distance per vertex (positive gap, negative penetration).
    contact_area_mm2 : float
    area_by_region_mm2 : dict of str -> float
    patches : int
    max_penetration_mm : float
        Deepest penetration (0 when none).
    penetration_area_mm2 : float
    """

    distance: FloatArray
    contact_area_mm2: float
    area_by_region_mm2: dict[str, float]
    patches: int
    max_penetration_mm: float
    penetration_area_mm2: float

    def summary(self) -> dict[str, Any]:
        return {
            "contact_area_mm2": round(self.contact_area_mm2, 4),
            "area_by_region_mm2": {k: round(v, 4) for k, v in self.area_by_region_mm2.items()},
            "patches": self.patches,
            "max_penetration_mm": round(self.max_penetration_mm, 4),
            "penetration_area_mm2": round(self.penetration_area_mm2, 4),
            "min_distance_mm": round(float(self.distance.min()), 4),
        }


def arch_contacts(
    vertices: FloatArray,
    faces: NDArray[np.int64],
    antagonist: SurfaceTarget | None,
    threshold_mm: float,
    region: NDArray[np.int64] | None = None,
    distance: FloatArray | None = None,
) -> ArchContacts:
    """Signed distances of one arch to its antagonist and the contact measures.

    Parameters
    ----------
    vertices : (n, 3) float, millimetres
        The arch, in the antagonist's frame.
    faces : (m, 3) int
    antagonist : SurfaceTarget or None
        The other arch (outward normals); None when ``distance`` is given.
    threshold_mm : float
        Contact when the signed distance is below this.
    region : (n,) int, optional
        Region index per vertex (see :func:`regions_of`); all anterior when absent.
    distance : (n,) float, optional
        The signed distances when already computed (``antagonist`` is then not queried).
    """
    if distance is None:
        if antagonist is None:
            raise ValueError("arch_contacts needs the antagonist or the distances")
        distance, _ = antagonist.signed_distance(vertices)
    # the measures concern the triangles with a corner below the threshold (or inside): the rest have none
    near = faces[with_a_corner(distance < max(threshold_mm, 0.0), faces)]
    area = area_below(vertices, near, distance, threshold_mm)
    face_region = (region if region is not None else np.ones(len(vertices), dtype=np.int64))[near[:, 0]]
    by_region = {name: float(area[face_region == i].sum()) for i, name in enumerate(REGIONS)}
    return ArchContacts(
        distance=distance,
        contact_area_mm2=float(area.sum()),
        area_by_region_mm2=by_region,
        patches=count_patches(near, distance < threshold_mm),
        max_penetration_mm=float(max(0.0, -distance.min())),
        penetration_area_mm2=float(area_below(vertices, near, distance, 0.0).sum()),
    )


def optimise_bite(
    upper: SurfaceTarget, lower_vertices: FloatArray, params: OcclusionParams, distance: FloatArray | None = None
) -> FloatArray:
    """A small rigid correction of the lower arch that removes penetration, keeping contacts.

    Damped Gauss-Newton steps of one rigid motion (a rotation about the centre of the
    lower vertices closer than the contact threshold plus ``REACH_MM``, at most
    ``optimise_band_mm``, and a translation), on those vertices: each brings every vertex
    deeper than ``penetration_tolerance_mm`` back towards it (weight ``DEEP_WEIGHT``)
    while keeping the distance of the vertices in contact (weight 1, falling to 0 at the contact threshold), with the
    distances linearised along their gradients. It stops when no vertex is deeper than
    the tolerance plus ``SETTLED_MM`` or a step moves less than that. A step that would
    take the motion past ``max_correction_mm`` (at the centre) / ``max_correction_deg``
    is not taken. Nothing depends on the frame or the vertex order, and weights change
    continuously with the distances, so the same arches give the same correction.

    Parameters
    ----------
    upper : SurfaceTarget
    lower_vertices : (n, 3) float, millimetres, in the upper's frame
    params : OcclusionParams
    distance : (n,) float, optional
        Signed distances of ``lower_vertices`` to ``upper`` when already computed.

    Returns
    -------
    correction : (4, 4) float
        Applied to the lower arch (in the upper's frame).
    """
    if distance is None:
        distance, _ = upper.signed_distance(lower_vertices)
    tol, threshold = params.penetration_tolerance_mm, params.contact_threshold_mm
    # every vertex that can come into contact: which ones does not depend on the vertex order
    band = lower_vertices[distance < min(params.optimise_band_mm, threshold + REACH_MM)]
    correction = np.eye(4)
    if len(band) == 0:
        return correction
    centre = band.mean(axis=0)
    lever = 25.0  # mm: a rotation of 1 rad moves an arch point about this much
    twist = np.zeros(6)
    for _ in range(params.optimise_iterations):
        moved = transform_points(band, correction)
        d, closest, normals = upper.exact_signed(moved)
        if not (d < -tol - SETTLED_MM).any():
            break
        # the gradient of the signed distance: along the offset from the closest point (the face
        # normal is not, where the closest point lies on an edge or a corner)
        away = np.abs(d) > 1e-6
        normals[away] = (moved[away] - closest[away]) / d[away, None]
        # weights that change continuously with the distance (a vertex crossing a limit does not
        # change the step at once): 10 on penetration past the tolerance, 1 on contacts
        weight = np.interp(d, [-tol - RAMP_MM, -tol, threshold - RAMP_MM, threshold], [DEEP_WEIGHT, 1.0, 1.0, 0.0])
        target = np.minimum(d + tol, 0.0)  # contacts stay; penetration comes back to the tolerance
        rows = np.hstack([np.cross(moved - centre, normals), normals]) * weight[:, None]
        a = np.vstack([rows, np.diag([lever] * 3 + [1.0] * 3) * 0.05])
        b = np.concatenate([-target * weight, np.zeros(6)])
        step, *_ = np.linalg.lstsq(a, b, rcond=None)
        if lever * float(np.linalg.norm(step[:3])) + float(np.linalg.norm(step[3:])) < SETTLED_MM:
            break  # the active set balances: further steps would not move a vertex a micrometre
        if (
            float(np.linalg.norm((twist + step)[3:])) > params.max_correction_mm
            or float(np.degrees(np.linalg.norm((twist + step)[:3]))) > params.max_correction_deg
        ):
            break  # the last step within the bounds stands: never more than the limits allow
        twist = twist + step
        about = np.eye(4)
        about[:3, 3] = centre
        back = np.eye(4)
        back[:3, 3] = -centre
        correction = about @ exp_se3(twist) @ back
    return correction
