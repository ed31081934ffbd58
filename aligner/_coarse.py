"""Global step: a bite strip's own axes, its search along one arch's buccal outline, short ICPs.

Bite scan: a strip seen from the cheek. Its long axis (first principal axis)
follows the arch; its mean normal faces out of the mouth (its sign is set by the
side the surface is convex to, :func:`convex_side`, so a file with inward winding
works too); the third axis crosses the occlusal plane. :func:`search_along` places it
in one arch's canonical frame (:mod:`._anatomy`; the upper's for both arches held
together), with no pose assumed between the arches: its centre at every sample of
that arch's buccal outline, moved across the occlusal plane and along the facing
direction, its normal facing the sample's buccal direction turned by a few degrees
(``psi``), tilted about its long axis, either way up (``sigma``). Every pose is scored with one
distance-field look-up per probe point; the best distinct poses (:func:`distinct`) get
a short robust point-to-plane ICP on that arch's thinned points (:func:`icp_many`).
How hypotheses of both arches are built from these (the other arch sought from the
bite points the first leaves unexplained), ranked and given a margin is
:mod:`.registration`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._anatomy import principal_axes
from mesial.aligner._field import DistanceField
from mesial.aligner._icp import PlaneTarget, exp_se3_many

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class StripFrame:
    """A bite scan's own axes (columns ``long, vertical, normal``) and centre, in its file frame."""

    axes: FloatArray
    centre: FloatArray
    depth: float  # largest offset of a point along the normal from the centre (mm)
    flipped: bool  # the mean normal was reversed (the normals point into the mouth)


def convex_side(vertices: FloatArray, normals: FloatArray, faces: NDArray[np.int64]) -> float:
    """+1 when a mesh's vertex normals point to the side its surface is convex to, else -1.

    The sum over the mesh's edges of ``(n_i - n_j) . (p_i - p_j)`` is the surface's mean
    curvature integrated over its area (positive where the normals spread apart). A bite scan
    seen from the cheek is convex towards the camera: every crown bulges out of the mouth from
    its occlusal edge to the gingiva, even where the row of teeth is straight or curves the
    other way along its length. Independent of the file's pose and vertex order; the sign
    follows the winding. On 483 simulated bite scans of the 3D-IOSSeg train constructions
    (both simulators, ~8 000 and ~130 000 vertices) the outward normals gave +0.048 to +0.23 /mm
    (normalised by the squared edge lengths), every one positive.
    """
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    step = vertices[edges[:, 0]] - vertices[edges[:, 1]]
    turn = normals[edges[:, 0]] - normals[edges[:, 1]]
    return 1.0 if float(np.einsum("ij,ij->", turn, step)) >= 0.0 else -1.0


def strip_frame(points: FloatArray, normals: FloatArray, outward: float = 1.0) -> StripFrame:
    """Axes of a bite strip from its thinned points and normals.

    ``outward`` (+1 or -1, :func:`convex_side` of the whole scan) says whether the normals
    point out of the mouth: the strip's normal is their mean times it. (The former test, the
    sign of the strip's bulge along its long axis, failed on a nearly straight real strip, the
    normal then facing the tongue: its true pose was outside the search.)
    """
    centre = points.mean(axis=0)
    axes = principal_axes(points)
    long_axis = axes[:, 0]
    normal = normals.sum(axis=0) * outward
    normal -= long_axis * float(long_axis @ normal)
    if np.linalg.norm(normal) < 1e-9:
        normal = axes[:, 2]
    normal /= np.linalg.norm(normal)
    vertical = np.cross(normal, long_axis)
    frame = np.stack([long_axis, vertical, normal], axis=1)
    return StripFrame(frame, centre, float(((points - centre) @ normal).max()), outward < 0)


@dataclass(frozen=True)
class Candidate:
    """A pose of a bite scan in the canonical frame it was searched in (one arch's) with its coarse score."""

    bite_to_canonical: FloatArray
    score: float
    sigma: float = 1.0


def _rotations(psi: FloatArray, sigma: float, strip: StripFrame, tilt: float = 0.0) -> FloatArray:
    """Rotations ``(k, 3, 3)``: strip normal to ``(sin psi, cos psi, 0)``, vertical to ``sigma z``.

    ``tilt`` (radians) turns the strip about its long axis first: a bite's mean normal
    leans off the occlusal plane by the inclination of the buccal surfaces.
    """
    t_n = np.stack([np.sin(psi), np.cos(psi), np.zeros_like(psi)], axis=1)
    t_v = np.tile(np.array([0.0, 0.0, sigma]), (len(psi), 1))
    t_l = np.cross(t_v, t_n)
    target = np.stack([t_l, t_v, t_n], axis=2)  # columns
    long_axis, vertical, normal = strip.axes.T
    c, s = np.cos(tilt), np.sin(tilt)
    axes = np.stack([long_axis, c * vertical + s * normal, c * normal - s * vertical], axis=1)
    return np.asarray(target @ axes.T, dtype=np.float64)


def distinct(
    poses: list[FloatArray],
    centre: FloatArray,
    rotation_deg: float,
    translation_mm: float,
    limit: int | None = None,
) -> list[int]:
    """Indices of poses (in order) that differ from every earlier kept one (the first ``limit`` of them).

    Two poses are the same when the rotation between them is below
    ``rotation_deg`` and they place ``centre`` within ``translation_mm``.
    """
    if not poses or (limit is not None and limit <= 0):
        return []
    stack = np.asarray(poses, dtype=np.float64)
    rotations = stack[:, :3, :3]
    moved = rotations @ centre + stack[:, :3, 3]
    # rotation angle between R_i and R_j: trace(R_j^T R_i) = sum of the elementwise product
    cos_limit = float(np.cos(np.radians(rotation_deg)))
    kept: list[int] = []
    for i in range(len(poses)):
        if kept:
            index = np.asarray(kept)
            cos = (np.einsum("kab,ab->k", rotations[index], rotations[i]) - 1.0) / 2.0
            close = np.linalg.norm(moved[index] - moved[i], axis=1) < translation_mm
            if np.any((cos > cos_limit) & close):
                continue
        kept.append(i)
        if len(kept) == limit:
            break
    return kept


def icp(
    source: FloatArray,
    target: PlaneTarget,
    pose: FloatArray,
    gates: tuple[float, ...],
    iterations: int = 3,
) -> FloatArray:
    """Point-to-plane ICP of ``source`` onto ``target`` from ``pose``, with shrinking hard gates.

    Points farther than the current gate from the target are ignored; the
    rest are weighted by ``(1 - (r / gate)^2)^2`` (Tukey) on the plane residual.
    One start of :func:`icp_many`.
    """
    return np.asarray(icp_many(source, target, np.asarray(pose, dtype=np.float64)[None], gates, iterations)[0])


def icp_many(
    source: FloatArray,
    target: PlaneTarget,
    poses: FloatArray,
    gates: tuple[float, ...],
    iterations: int = 3,
) -> FloatArray:
    """:func:`icp` of one cloud from several starting poses at once (one k-d tree query per iteration).

    Each start runs exactly as alone: the same gates, weights and steps; a start whose
    matched points fall below 12 keeps its last pose (it stops there).

    Parameters
    ----------
    source : (n, 3) float, millimetres
    target : PlaneTarget
    poses : (m, 4, 4) float
        Starting poses (source -> target frame).
    gates : tuple of float, millimetres
    iterations : int
        Iterations per gate.

    Returns
    -------
    poses : (m, 4, 4) float
    """
    poses = np.array(poses, dtype=np.float64).reshape(-1, 4, 4)
    active = np.arange(len(poses))
    for gate in gates:
        for _ in range(iterations):
            if not len(active):
                return poses
            x = source @ poses[active, :3, :3].transpose(0, 2, 1) + poses[active, None, :3, 3]  # (m, n, 3)
            # matched or not (unmatched points: sample 0, zero weight), rows (x × normal, normal) (m, n, 6),
            # the rows times the Tukey weight on the plane residual, weight times residual: one kernel pass
            use, rows, weighted, wr = target.plane_rows(x, gate)
            going = use.sum(axis=1) >= 12
            if not going.all():  # too few matches: that start stops where it is
                active, rows, weighted, wr = active[going], rows[going], weighted[going], wr[going]
                if not len(active):
                    return poses
            transposed = rows.transpose(0, 2, 1)  # batched matrix products (BLAS), not einsum's loops
            hessian = transposed @ weighted + 1e-9 * np.eye(6)
            step = np.asarray(np.linalg.solve(hessian, -(transposed @ wr[..., None]))[..., 0], dtype=np.float64)
            poses[active] = exp_se3_many(step) @ poses[active]
    return poses


def search_along(
    probe: FloatArray,
    strip: StripFrame,
    field: DistanceField,
    path_points: FloatArray,
    path_buccal: FloatArray,
    *,
    turns_deg: tuple[float, ...],
    heights_mm: tuple[float, ...],
    offsets_mm: tuple[float, ...],
    tilts_deg: tuple[float, ...],
    tau_mm: float,
    keep: int,
    ways: tuple[float, ...] = (1.0, -1.0),
    coarse_probes: int = 64,
    rescore_share: float = 1.0,
) -> list[Candidate]:
    """Exhaustive coarse search of a bite strip's pose along one arch's buccal outline.

    The strip's centre goes to every sample of the outline (``path_points``,
    canonical frame, ``z = 0``) moved by each of ``offsets_mm`` along the facing
    direction and ``heights_mm`` along ``z``; its normal faces the outline's
    buccal direction turned by each of ``turns_deg`` about ``z``, turned about
    its long axis by each of ``tilts_deg``, either way up. (A bite's centre lies
    between the two arches' buccal surfaces: about on the lower's outline and
    3 mm inside the upper's, which is wider; its deepest point belongs to
    whichever arch overhangs.) Unlike placing the strip at the outline's support point in
    its facing direction (the former search), this follows any arch shape: a strip on the
    canine-premolar curve of a real arch faces a direction whose support point lies on the
    molars.

    Every pose is scored on the first ``coarse_probes`` probes; the best ``rescore_share``
    of them (at least ``keep``) again on all. Returns the best ``keep`` poses of each way up
    (a strip upside down on one arch fits it about as well: neither may crowd out the other).
    """
    base_psi = np.arctan2(path_buccal[:, 0], path_buccal[:, 1])
    turns = np.radians(np.asarray(turns_deg))
    psi = (base_psi[:, None] + turns[None, :]).ravel()  # (p * t,)
    anchor = np.repeat(path_points, len(turns), axis=0)
    direction = np.stack([np.sin(psi), np.cos(psi), np.zeros_like(psi)], axis=1)
    local = probe - strip.centre
    heights = np.asarray(heights_mm)
    offsets = np.asarray(offsets_mm)
    # the translations, the same for every (way, tilt) pass: (a, h, o, 3)
    translation = (
        anchor[:, None, None, :]
        + heights[None, :, None, None] * np.array([0.0, 0.0, 1.0])
        + offsets[None, None, :, None] * direction[:, None, None, :]
    )
    a = len(psi)
    flat_t = translation.reshape(a, -1, 3)
    # a translation's x and y do not depend on its height (z only) nor its z on its offset (along a
    # horizontal direction): (a, o), (a, o) and (a, h), every (height, offset) pose's mean at once
    x, y, z = translation[:, 0, :, 0], translation[:, 0, :, 1], translation[:, :, 0, 2]
    # per (way, tilt) pass, its best poses: scores, sigma, rotations (k, 3, 3), translations (k, 3)
    passes: list[tuple[FloatArray, FloatArray, FloatArray, FloatArray]] = []
    for sigma, tilt in ((sigma, tilt) for sigma in ways for tilt in np.radians(tilts_deg)):
        rotations = _rotations(psi, sigma, strip, float(tilt))  # (a, 3, 3)
        moved = local @ rotations.transpose(0, 2, 1)  # (a, n, 3): every probe turned by every rotation
        # coarse to fine: every pose scored on the first coarse_probes probes (evenly spread when the
        # probes come from farthest-point sampling), the best rescore_share of them on all probes
        few = min(max(1, coarse_probes), moved.shape[1])
        rough = field.mean_score_axes(moved, few, x, y, z, tau_mm).ravel()  # (a * h*o,)
        count = min(len(rough), max(keep, int(rescore_share * len(rough))))
        chosen = np.argpartition(-rough, count - 1)[:count] if count < len(rough) else np.arange(len(rough))
        ai, ti = np.divmod(chosen, flat_t.shape[1])
        score = field.mean_score(moved, ai, flat_t[ai, ti], tau_mm)  # (count,)
        best = np.argsort(-score, kind="stable")[:keep]
        i, j = ai[best], ti[best]
        passes.append((score[best], np.full(len(best), sigma), rotations[i], flat_t[i, j]))
    scores, sigmas, rotations, translations = (np.concatenate(column) for column in zip(*passes, strict=True))
    order = np.argsort(-scores, kind="stable")  # best first; ties in the order the passes found them
    out: list[Candidate] = []
    for way in ways:
        picked = order[sigmas[order] == way][:keep]
        matrices = np.zeros((len(picked), 4, 4))
        matrices[:, :3, :3] = rotations[picked]
        matrices[:, :3, 3] = translations[picked] - rotations[picked] @ strip.centre
        matrices[:, 3, 3] = 1.0
        out += [Candidate(matrix, float(scores[k]), way) for matrix, k in zip(matrices, picked, strict=True)]
    return out
