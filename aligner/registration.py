"""Bite registration: both arches into the first bite scan's frame, with a confidence.

``preprocess (each arch alone: canonical frame, search field, buccal outline; thinned
bites) → global (per bite scan: exhaustive strip search along one arch's own outline,
short ICP on that arch for the best distinct poses, the bite points it leaves
unexplained searched for along the other arch's own outline, short joint ICP; from the
upper first and, unless that is decisive, from the lower too; ranking by explained share
with the margin to the best distinct alternative; two bites brought to one lower pose)
→ refine (joint robust point-to-plane ICP of every bite scan against both arches:
nearest-vertex planes, then exact closest points)``, then the confidence checks
(:func:`_reasons`, the two bites' agreement). No pose between the two arches is assumed.
See docs/aligner.md for the reasoning and the measured accuracy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._anatomy import arch_frame, buccal_outline
from mesial.aligner._coarse import StripFrame, convex_side, distinct, icp, icp_many, search_along, strip_frame
from mesial.aligner._features import invariant_representatives, spread_points, voxel_representatives
from mesial.aligner._field import DistanceField
from mesial.aligner._icp import (
    JointFit,
    PlaneTarget,
    SurfaceTarget,
    _match,
    lower_position_sd_mm,
    refine_joint,
    refine_pairs,
)
from mesial.aligner.errors import AlignmentError
from mesial.aligner.params import AlignParams
from mesial.aligner.transforms import invert, rotation_angle_deg, transform_points
from mesial.aligner.validate import Scan

FloatArray = NDArray[np.float64]
Progress = Callable[[str, float], None]

ARCHES = ("upper", "lower")


@dataclass(frozen=True)
class BiteEvidence:
    """Global-step evidence for one bite scan.

    Attributes
    ----------
    bite : int
        Index of the bite scan (0 = the reference).
    score : float
        Share of the bite's points explained (within ``pair_distance_mm``) by
        either arch in the best hypothesis (bite pose and lower-arch pose after
        a short joint ICP).
    second_score : float
        The same for the best hypothesis whose bite pose is distinct from the
        best one (0 if none).
    margin : float
        ``score - second_score`` (share of bite points).
    hypotheses : int
        Distinct bite poses refined by a short ICP on one arch.
    paired : int
        Hypotheses of both arches ranked (bite pose and lower pose after the short joint
        ICP): up to ``residual_paired`` for each of the ``paired_candidates`` best bite
        poses, from each arch searched first (for a bite placed on both arches held
        together, one per refined pose: ``hypotheses``).
    tolerance_mm : float
        The distance within which a point counts as explained. When the
        coarse margin (``pair_distance_mm``, on thinned arches) is below
        ``min_margin``, both hypotheses are refined on the exact surfaces and
        scored again within ``tight_distance_mm``: these numbers are then those.
    """

    bite: int
    score: float
    second_score: float
    margin: float
    hypotheses: int
    paired: int
    tolerance_mm: float = 0.0


@dataclass(frozen=True)
class Registration:
    """Both arches in the first bite scan's frame.

    Attributes
    ----------
    upper_to_bite, lower_to_bite : (4, 4) float
        Map each arch file's coordinates (mm) into the frame of bite scan 0.
    bite_to_bite : tuple of (4, 4) float
        Each bite scan's frame into bite scan 0's (identity first). Only bite 0's
        when the result is the reference bite alone (see ``register_bite``).
    evidence : tuple of BiteEvidence
        Per bite used (bite 0 only for a reference-bite-alone result).
    fit : JointFit
        The joint fine step (per-bite fitness and RMSE) of the bites used.
    confident : bool
    reasons : tuple of str
        Why the result is not confident (empty when it is).
    timings : dict of str -> float
        Seconds per stage.
    bite_disagreement_mm : float or None
        With two bites: how far apart (RMS over the lower arch's vertices, mm) each bite
        refined alone from the joint result places the lower arch; None with one bite.
    lower_position_sd_mm : float or None
        How precisely the fit's bites fix the lower arch relative to the upper
        (:func:`~mesial.aligner._icp.lower_position_sd_mm`, mm).
    """

    upper_to_bite: FloatArray
    lower_to_bite: FloatArray
    bite_to_bite: tuple[FloatArray, ...]
    evidence: tuple[BiteEvidence, ...]
    fit: JointFit
    confident: bool
    reasons: tuple[str, ...]
    timings: dict[str, float] = field(default_factory=dict)
    bite_disagreement_mm: float | None = None
    lower_position_sd_mm: float | None = None


def _no_progress(stage: str, fraction: float) -> None:
    return None


def register_bite(
    upper: Scan,
    lower: Scan,
    bites: list[Scan],
    params: AlignParams | None = None,
    progress: Progress | None = None,
    at_global: Callable[[], None] | None = None,
) -> Registration:
    """Register both arches to one or two bite scans, each in an arbitrary pose.

    Parameters
    ----------
    upper, lower : Scan
        Arch scans, millimetres, any pose.
    bites : list of Scan
        One or two buccal bite scans; the first defines the output frame.
    params : AlignParams, optional
    progress : callable (stage, fraction), optional
    at_global : callable, optional
        Called on the calling thread as the global step starts: where a caller starts work of its own
        on another thread (the step's two bite threads leave part of a core idle; the preprocessing
        before it keeps both busy). Nothing here waits for that work.

    Returns
    -------
    registration : Registration
        With two bites that are not confident together, bite 0 is refined alone
        when its own global match is unambiguous and scores higher than bite 1's;
        if its own fit then explains ``strong_bite_min_fitness`` of its points and
        passes every one-bite check, the result is that one-bite registration (confident,
        bite 1 left out of ``evidence``, ``fit`` and ``bite_to_bite``).
    """
    params = params or AlignParams()
    report = progress or _no_progress
    if not 1 <= len(bites) <= 2:
        raise AlignmentError(f"one or two bite scans are needed, got {len(bites)}")
    too_short = _short_bites(bites, params)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    # preprocess: thinned arches, canonical frames, search fields, thinned bites
    report("preprocess", 0.0)
    arch_scans = {"upper": upper, "lower": lower}
    fine = {name: scan.surface() for name, scan in arch_scans.items()}
    # the k-d trees of the arches' vertices (the fine step's nearest-vertex planes and the exact
    # matching's gate) are built on a thread meanwhile: the kernel builds them without the GIL
    trees = in_background(partial(_build_trees, fine, upper.vertices[:1]))
    # each arch alone in its canonical frame: search field and buccal outline (no pose assumed between them)
    # (a thread each: their sorts and distance transforms release the GIL)
    solo = dict(
        zip(arch_scans, _at_once([partial(_arch_alone, scan, params) for scan in arch_scans.values()]), strict=True)
    )
    if len(bites) == 1:
        fine_voxel = params.one_bite_fine_voxel_mm
    else:  # the same number of fine points in all: each of n bites thinned sqrt(n) times coarser
        fine_voxel = params.fine_voxel_mm * float(np.sqrt(len(bites)))
    # the fine step's points do not depend on the bite file's pose or vertex order (nor then does its result)
    fine_points = [bite.vertices[invariant_representatives(bite.vertices, fine_voxel)] for bite in bites]
    rough_points = [bite.vertices[invariant_representatives(bite.vertices, params.rough_voxel_mm)] for bite in bites]
    timings["preprocess"] = time.perf_counter() - clock
    report("preprocess", 1.0)

    # global: per bite scan, the best (bite pose, lower pose) hypothesis and its margin
    clock = time.perf_counter()
    evidence: list[BiteEvidence] = []
    bite_to_upper: list[FloatArray] = []
    candidates: list[tuple[float, FloatArray]] = []
    runners_up: list[tuple[FloatArray, FloatArray] | None] = []
    report("global", 0.0)
    if at_global is not None:
        at_global()
    # the bites' searches are independent: one thread each (see _at_once)
    per_bite = _at_once([partial(_global_one_bite, k, bite, solo, params) for k, bite in enumerate(bites)])
    for item, bite_pose, lower_pose, runner_up in per_bite:
        evidence.append(item)
        runners_up.append(runner_up)
        bite_to_upper.append(bite_pose)
        candidates.append((item.score, lower_pose))
    conflict = ""
    if len(bites) == 1 or not _differ(candidates[0][1], candidates[1][1], solo, params):
        # the lower arch's pose is agreed (or there is one bite): the weaker bite, if below
        # decisive_score, is searched for again on both arches held there, a search with the evidence of
        # both arches at once, and takes that pose when it explains more of it
        weakest = min(range(len(bites)), key=lambda i: (evidence[i].score, evidence[i].margin))
        lead = max(range(len(bites)), key=lambda i: (evidence[i].score, evidence[i].margin))
        if evidence[weakest].score < params.decisive_score:
            found = _place_with_lower(weakest, bites[weakest], candidates[lead][1], solo, params)
            if found is not None and found[0].score > evidence[weakest].score:
                evidence[weakest], bite_to_upper[weakest], runners_up[weakest] = found
                candidates[weakest] = (found[0].score, candidates[lead][1])
    else:
        # each bite, on its own, placed the lower arch elsewhere: each placement is tried with the
        # other bite too (that bite searched for again on both arches held together), and the one
        # explaining more of both bites wins, compared within tight_distance_mm on the exact surfaces:
        # at 0.3 mm a bite's own score, the best of its free search, outweighed the other's (a flat
        # plate fits an arch anywhere: its own 0.89 against 0.64 with the lower held at the real
        # bite's pose, so it led and moved the real bite); the other bite then takes its pose from that search
        placed = _at_once([partial(_place_with_lower, 1 - i, bites[1 - i], candidates[i][1], solo, params)
                           for i in (0, 1)])  # fmt: skip
        joint = [evidence[i].score + (found[0].score if found else 0.0) for i, found in enumerate(placed)]
        close = abs(joint[0] - joint[1]) < params.min_margin
        if placed[0] is not None and placed[1] is not None:
            trees.result()  # the exact comparisons query the trees
            tasks: list[Callable[[], float]] = []
            for i, found in enumerate(placed):
                assert found is not None
                poses = [bite_to_upper[i], found[1]] if i == 0 else [found[1], bite_to_upper[i]]
                tasks.append(partial(_tight_share, fine_points, poses, candidates[i][1], fine, params))
            joint = [2 * share for share in _at_once(tasks)]
        lead = int(np.argmax(joint))
        found = placed[lead]
        if found is not None:
            follower = 1 - lead
            evidence[follower], bite_to_upper[follower], runners_up[follower] = found
            candidates[follower] = (found[0].score, candidates[lead][1])
        if close and abs(joint[0] - joint[1]) < params.min_margin:
            conflict = (
                f"the bite scans support two poses of the lower arch about equally (shares of both bites "
                f"explained {joint[lead] / 2:.2f} and {joint[1 - lead] / 2:.2f})"
            )
    timings["global"] = time.perf_counter() - clock
    report("global", 1.0)

    # refine: every bite against both arches jointly, in the upper frame, at full resolution; beside it
    # the ambiguous bites' two hypotheses, each refined alone on the exact surfaces (_resolve)
    clock = time.perf_counter()
    report("refine", 0.0)
    lower_to_upper = max(candidates, key=lambda item: item[0])[1]
    # nearest-vertex planes until the poses settle, then exact closest points on the triangles
    trees.result()
    planes = {name: fine[name].vertex_planes(scan.vertex_normals) for name, scan in arch_scans.items()}
    ambiguous: list[int] = []
    hypotheses: list[Callable[[], tuple[FloatArray, float]]] = []
    for k, item in enumerate(evidence):
        second = runners_up[k]
        if item.margin < params.min_margin and second is not None:
            ambiguous.append(k)
            for hypothesis in ((bite_to_upper[k], candidates[k][1]), second):
                hypotheses.append(partial(_tight_fit, rough_points[k], fine, hypothesis, params))
    fit, tight = _beside(
        partial(_refine, rough_points, fine_points, planes, fine, bite_to_upper, lower_to_upper, params),
        hypotheses,
        fine,
        rough_points[0][:1],
    )
    for j, k in enumerate(ambiguous):  # each ambiguous bite's best hypothesis, then its runner-up
        evidence[k] = _resolve(evidence[k], rough_points[k], tight[2 * j], tight[2 * j + 1], params)
    timings["refine"] = time.perf_counter() - clock
    report("refine", 1.0)

    position_sd = lower_position_sd_mm(fit, lower.vertices)
    reasons = _reasons(evidence, fit, params, [pose for _, pose in candidates], position_sd)
    reasons += [conflict] if conflict else []
    disagreement = None
    if len(bites) == 2:
        clock = time.perf_counter()
        disagreement = _bite_disagreement(fine_points, fine, fit, lower.vertices, params)
        timings["bite_agreement"] = time.perf_counter() - clock
        if disagreement > params.max_bite_disagreement_mm:
            reasons.append(
                f"the bite scans, each alone, place the lower arch {disagreement:.3f} mm apart "
                f"(> {params.max_bite_disagreement_mm} mm): taken in different occlusions"
            )
    reasons += [too_short[k] for k in sorted(too_short)]
    if (
        reasons
        and len(bites) == 2
        and evidence[0].margin >= params.min_margin
        and evidence[0].score > evidence[1].score
        # bite 1 gives no usable evidence (its own match ambiguous, or the arches explain little of
        # it); a bite 1 that the arches explain well but not in agreement with bite 0 contradicts it
        and (evidence[1].margin < params.min_margin or fit.bites[1].fitness < params.min_fitness)
    ):
        # the two bites together are not confident: the reference bite alone may be (its own
        # global match unambiguous, and every one-bite check passed on its own fit)
        clock = time.perf_counter()
        alone_fine = [bites[0].vertices[invariant_representatives(bites[0].vertices, params.one_bite_fine_voxel_mm)]]
        alone = _refine(rough_points[:1], alone_fine, planes, fine, bite_to_upper[:1], candidates[0][1], params)
        timings["refine_reference_bite"] = time.perf_counter() - clock
        strong = alone.bites[0].fitness >= params.strong_bite_min_fitness
        alone_sd = lower_position_sd_mm(alone, lower.vertices)
        alone_reasons = _reasons(evidence[:1], alone, params, [candidates[0][1]], alone_sd)
        if 0 in too_short:
            alone_reasons.append(too_short[0])
        if strong and not alone_reasons:
            return replace(_registration(alone, evidence[:1], (), timings), lower_position_sd_mm=alone_sd)
    return replace(
        _registration(fit, evidence, tuple(reasons), timings),
        bite_disagreement_mm=disagreement,
        lower_position_sd_mm=position_sd,
    )


T = TypeVar("T")
U = TypeVar("U")


def _at_once(tasks: list[Callable[[], T]]) -> list[T]:
    """The results of independent tasks, run on a thread each when there are several.

    The global step's work is k-d tree queries and NumPy operations on arrays of thousands of
    points, which release the GIL: the two bites' searches overlap on two cores (register_bite's
    global stage on 130 000-vertex generated cases: wall about 40 % shorter at load 9, CPU the same).
    """
    if len(tasks) < 2:
        return [task() for task in tasks]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(tasks)) as pool:
        return list(pool.map(lambda task: task(), tasks))


def in_background(task: Callable[[], T]) -> Future[T]:
    """``task()`` started on a thread of its own; its future (``result()`` waits for it, raises its error)."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(task())
        except BaseException as error:  # handed to whoever waits for the result
            future.set_exception(error)

    threading.Thread(target=run, daemon=True).start()
    return future


def _build_trees(surfaces: dict[str, SurfaceTarget], probe: FloatArray) -> None:
    """Build the vertex k-d tree of each surface (one nearest-vertex query at ``probe`` (1, 3) does) and
    measure its typical edge (the fine step's plane stage needs both; the refine stage then starts
    without them on its one thread)."""
    for surface in surfaces.values():
        surface.nearest_vertex(probe, 0.0)
        _ = surface.typical_edge


def _beside(
    main: Callable[[], T], others: list[Callable[[], U]], surfaces: dict[str, SurfaceTarget], probe: FloatArray
) -> tuple[T, list[U]]:
    """``main()`` on the calling thread and the tasks of ``others`` one after another on one more thread.

    They are independent refinements on the same exact surfaces (the fine step and the ambiguous
    bites' hypotheses, which do not depend on it): their k-d tree queries release the GIL, so they
    overlap on two cores. One thread for all of ``others``, not one each: four hypotheses and the
    fine step on five threads fought over two cores and the GIL (c1-c3, in-process, load about 2:
    0.29 s wall for what one more thread does in 0.25 s, with less CPU). The surfaces' search
    structures are built first, by a query at ``probe`` (a point, ``(1, 3)``): the threads share them.
    """
    if not others:
        return main(), []
    from concurrent.futures import ThreadPoolExecutor

    _build_trees(surfaces, probe)
    for surface in surfaces.values():  # one query builds what the exact matching searches
        surface.closest(probe)
        _ = surface.typical_edge
    with ThreadPoolExecutor(1) as pool:
        rest = pool.submit(lambda: [task() for task in others])
        return main(), rest.result()


def _short_bites(bites: list[Scan], params: AlignParams) -> dict[int, str]:
    """Bites too short to place the arches, by index, each with its reason.

    A bite's length is the extent (mm) of its vertices along their longest principal axis:
    independent of the file's pose and vertex order.
    """
    short: dict[int, str] = {}
    for k, bite in enumerate(bites):
        length = principal_length(bite.vertices)
        if length < params.min_bite_length_mm:
            short[k] = (
                f"bite {k} spans only {length:.1f} mm (< {params.min_bite_length_mm:.0f} mm): "
                "too little of the arches to place them"
            )
    return short


def principal_length(points: FloatArray) -> float:
    """Extent (mm) of ``points`` (n, 3) along their longest principal axis; 0 for fewer than 2."""
    if len(points) < 2:
        return 0.0
    centred = points - points.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    along = centred @ vectors[:, -1]
    return float(along.max() - along.min())


def _refine(
    rough_points: list[FloatArray],
    fine_points: list[FloatArray],
    planes: dict[str, Any],
    fine: dict[str, SurfaceTarget],
    bite_to_upper: list[FloatArray],
    lower_to_upper: FloatArray,
    params: AlignParams,
) -> JointFit:
    """Joint fine step: nearest-vertex planes until the poses settle, then exact closest points.

    The result is the exact stage's fit, with the plane stage's in ``plane_stage`` (whether
    each stage converged is checked by :func:`_reasons`).
    """
    rough = refine_joint(
        rough_points, planes["upper"], planes["lower"], bite_to_upper, lower_to_upper, params,
        threshold_mm=params.plane_threshold_mm, evaluate=False,
    )  # fmt: skip
    fit = refine_joint(
        fine_points, fine["upper"], fine["lower"], list(rough.bite_to_upper), rough.lower_to_upper, params,
        max_distance_mm=max(params.fine_gate_floor_mm, params.fine_gate_sigmas * rough.sigma_mm),
        max_iterations=params.exact_iterations,
    )  # fmt: skip
    if fit.lower_to_upper is None:  # pragma: no cover - refine_joint always returns it with a lower arch
        raise AlignmentError("the joint fine step returned no lower pose")
    return replace(fit, plane_stage=rough)


def _bite_disagreement(
    points: list[FloatArray],
    surfaces: dict[str, SurfaceTarget],
    fit: JointFit,
    lower_vertices: FloatArray,
    params: AlignParams,
) -> float:
    """How far apart (RMS over ``lower_vertices``, mm) two bites, each refined alone, place the lower arch.

    Each bite (its fine points) is refined with the lower arch free on the exact surfaces, from
    the joint result (a start 0.5 mm gate: a bite in another occlusion sits that far from the
    compromise). The joint fit of two bites taken in different occlusions lies between them and
    fits both about as well as one occlusion would (a sliding offset is mostly along the buccal
    surfaces): fitness, residuals and the global agreement (8°, 3 mm) do not see it; each bite
    alone returns to its own occlusion within 3-5 iterations.
    """
    assert fit.lower_to_upper is not None
    start = fit.lower_to_upper

    def alone(cloud: FloatArray, pose: FloatArray) -> FloatArray:
        refined = refine_joint(
            [cloud], surfaces["upper"], surfaces["lower"], [pose], start, params,
            max_distance_mm=0.5, max_iterations=params.exact_iterations, evaluate=False,
        )  # fmt: skip
        assert refined.lower_to_upper is not None
        return refined.lower_to_upper

    # the two refinements are independent: a thread each (their closest-point queries run without the GIL)
    placed = _at_once([partial(alone, cloud, pose) for cloud, pose in zip(points, fit.bite_to_upper, strict=True)])
    return float(np.sqrt(np.mean(relative_error(placed[0], placed[1], lower_vertices) ** 2)))


def _registration(
    fit: JointFit, evidence: list[BiteEvidence], reasons: tuple[str, ...], timings: dict[str, float]
) -> Registration:
    """Both arches in the frame of the fit's first bite (bite scan 0)."""
    assert fit.lower_to_upper is not None
    upper_to_bite = invert(fit.bite_to_upper[0])
    lower_to_bite = upper_to_bite @ fit.lower_to_upper
    bite_to_bite = tuple(upper_to_bite @ pose for pose in fit.bite_to_upper)
    return Registration(upper_to_bite, lower_to_bite, bite_to_bite, tuple(evidence), fit, not reasons, reasons, timings)


@dataclass(frozen=True)
class _Alone:
    """One arch on its own: canonical frame, search field and buccal outline in it, thinned surface (file frame)."""

    to_canonical: FloatArray
    field: DistanceField
    path: FloatArray  # (2, k, 3): outline points and their buccal directions, canonical frame
    target: PlaneTarget


def _arch_alone(scan: Scan, params: AlignParams) -> _Alone:
    """One arch on its own: its canonical frame (from its vertices thinned to ``frame_voxel_mm``), the
    search field and buccal outline of those points there, and its vertices thinned to
    ``coarse_voxel_mm`` as the short ICPs' target (file frame)."""
    pick = voxel_representatives(scan.vertices, params.frame_voxel_mm)
    frame = arch_frame(scan.vertices[pick], scan.vertex_normals[pick], scan.vertices, scan.faces)
    points = transform_points(scan.vertices[pick], frame.to_canonical)
    pick = voxel_representatives(scan.vertices, params.coarse_voxel_mm)
    target = PlaneTarget(scan.vertices[pick], scan.vertex_normals[pick], params.coarse_voxel_mm)
    # a band of 5 mm about the occlusal table: a curve of Spee or a tilted frame leaves the molars
    # outside 3 mm (the upper's outline stopped at the canines on 7 of 40 train pairs)
    return _Alone(
        frame.to_canonical,
        # look-ups farther than the score's reach all score 0
        DistanceField(points, 0.6, params.search_tau_mm + 0.6),
        buccal_outline(points, band_mm=params.path_band_mm, step_mm=params.path_step_mm),
        target,
    )


def _global_one_bite(
    k: int, bite: Scan, solo: dict[str, _Alone], params: AlignParams
) -> tuple[BiteEvidence, FloatArray, FloatArray, tuple[FloatArray, FloatArray] | None]:
    """Best hypothesis for one bite scan: ``(evidence, bite_to_upper, lower_to_upper, runner_up)``.

    The bite is searched for on each arch alone; for each of the best poses on one arch, the
    bite points that arch leaves unexplained are searched for on the other arch alone
    (:func:`_other_arch`), and the bite is placed again on the first arch from the points the other
    arch does not explain (:func:`_own_part`). Every pair gets a short joint ICP and is ranked by
    the share of bite points either arch explains. ``runner_up`` is the best hypothesis whose bite pose is distinct
    from the best one, if any.
    """
    pick = voxel_representatives(bite.vertices, params.frame_voxel_mm)
    thin, thin_normals = bite.vertices[pick], bite.vertex_normals[pick]
    strip = strip_frame(thin, thin_normals, convex_side(bite.vertices, bite.vertex_normals, bite.faces))
    probe = thin[spread_points(thin, params.probe_points)]
    # the short ICPs run on fewer points (a coarser grid fixed to the bite itself)
    sparse = thin[invariant_representatives(thin, params.icp_voxel_mm)]
    tau = params.pair_distance_mm
    coarse = {name: item.target for name, item in solo.items()}
    scored: list[tuple[float, FloatArray, FloatArray]] = []
    tried = 0
    for first, then in (("upper", "lower"), ("lower", "upper")):
        if scored and _decisive(scored, strip.centre, params):
            break  # the bite placed on the upper first already stands out: no need to start from the lower
        arch, other = solo[first], solo[then]
        found = search_along(
            probe, strip, arch.field, arch.path[0], arch.path[1], turns_deg=params.turns_deg,
            heights_mm=params.heights_mm, offsets_mm=params.offsets_mm, tilts_deg=params.tilts_deg,
            tau_mm=params.search_tau_mm, keep=300, coarse_probes=params.coarse_probes,
            rescore_share=params.rescore_share,
        )  # fmt: skip
        poses = [candidate.bite_to_canonical for candidate in found]
        keep: list[int] = []
        for way in (1.0, -1.0):  # the best distinct poses of each way up
            index = [i for i, candidate in enumerate(found) if candidate.sigma == way]
            chosen = distinct([poses[i] for i in index], strip.centre, params.distinct_rotation_deg,
                              params.distinct_translation_mm, params.bite_candidates // 2)  # fmt: skip
            keep += [index[i] for i in chosen]
        from_canonical = invert(arch.to_canonical)
        refined = []
        for pose in icp_many(sparse, arch.target, _starts(from_canonical, [poses[kept] for kept in keep]), GATES):
            on_arch = _on_surface(arch.target, transform_points(sparse, pose), tau)
            refined.append((float(on_arch.mean()), pose, on_arch))
        tried += len(refined)
        refined.sort(key=lambda item: -item[0])
        pairs: list[tuple[FloatArray, FloatArray]] = []
        for _, pose, _ in refined[: params.paired_candidates]:
            # the residual from the 1 mm points: a one-sided bite may show little of the other arch
            on_arch = _on_surface(arch.target, transform_points(thin, pose), tau)
            for other_to_arch in _other_arch(thin[~on_arch], strip, pose, other, arch, params):
                bite_pose, other_to_arch = _own_part(sparse, pose, other_to_arch, arch.target, other.target, tau)
                if first == "upper":
                    pairs.append((bite_pose, other_to_arch))
                else:  # the upper found on the bite placed on the lower: bring both into the upper's file frame
                    lower_pose = invert(other_to_arch)
                    pairs.append((lower_pose @ bite_pose, lower_pose))
        # every pair: a short joint ICP, then the share of the bite explained. On the 1 mm points: on the
        # 1.6 mm ones the scores of close hypotheses came out of order, and a shuffled vertex order
        # (other 1 mm points) turned a generated case not_confident
        if pairs:
            bite_poses, lower_poses = refine_pairs(
                thin, coarse["upper"], coarse["lower"], np.array([bite for bite, _ in pairs]),
                np.array([lower for _, lower in pairs]), params, max_distance_mm=1.0, max_iterations=8,
                threshold_mm=params.plane_threshold_mm,
            )  # fmt: skip
            for bite_pose, lower_pose in zip(bite_poses, lower_poses, strict=True):
                scored.append((_explained(thin, bite_pose, lower_pose, coarse, tau), bite_pose, lower_pose))
    if not scored:
        return BiteEvidence(k, 0.0, 0.0, 0.0, tried, 0, tau), np.eye(4), np.eye(4), None
    best_score, best_pose, best_lower, second, runner_up = _best_and_runner_up(scored, strip.centre, params)
    item = BiteEvidence(k, best_score, second, best_score - second, tried, len(scored), tau)
    return item, best_pose, best_lower, runner_up


# The short ICPs of the global step: three iterations at each of these gates (mm).
GATES = (2.0, 1.0, 0.5)


def _starts(from_canonical: FloatArray, poses: list[FloatArray]) -> FloatArray:
    """Poses ``(4, 4)`` found in an arch's canonical frame, brought to its file frame: ``(m, 4, 4)``."""
    return np.asarray(from_canonical @ np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4), dtype=np.float64)


def _differ(first: FloatArray, second: FloatArray, solo: dict[str, _Alone], params: AlignParams) -> bool:
    """Two lower-arch poses (lower file -> upper file) are distinct hypotheses."""
    centre = invert(solo["lower"].to_canonical)[:3, 3]  # the lower's canonical origin, in its file
    return len(distinct([first, second], centre, params.distinct_rotation_deg, params.distinct_translation_mm)) == 2


def _place_with_lower(
    k: int, bite: Scan, lower_to_upper: FloatArray, solo: dict[str, _Alone], params: AlignParams
) -> tuple[BiteEvidence, FloatArray, tuple[FloatArray, FloatArray] | None] | None:
    """A bite placed on both arches held together (the lower at ``lower_to_upper``).

    The same search as on one arch, on both arches as one surface (upper canonical
    frame, their joint buccal outline), then a short ICP on both. Returns
    ``(evidence, bite_to_upper, runner_up)`` or None when nothing was found.
    """
    upper, lower = solo["upper"], solo["lower"]
    to_canonical = upper.to_canonical
    lower_in_canonical = to_canonical @ lower_to_upper
    both = np.vstack([transform_points(upper.target.points, to_canonical),
                      transform_points(lower.target.points, lower_in_canonical)])  # fmt: skip
    both = both[voxel_representatives(both, params.frame_voxel_mm)]
    field = DistanceField(both, 0.6, params.search_tau_mm + 0.6)
    outline = buccal_outline(both, band_mm=params.path_band_mm, step_mm=params.path_step_mm)
    rotation = lower_to_upper[:3, :3]
    target = PlaneTarget(
        np.vstack([upper.target.points, transform_points(lower.target.points, lower_to_upper)]),
        np.vstack([upper.target.normals, lower.target.normals @ rotation.T]),
        upper.target.spacing,
    )
    pick = voxel_representatives(bite.vertices, params.frame_voxel_mm)
    thin = bite.vertices[pick]
    strip = strip_frame(thin, bite.vertex_normals[pick], convex_side(bite.vertices, bite.vertex_normals, bite.faces))
    probe = thin[spread_points(thin, params.probe_points)]
    sparse = thin[invariant_representatives(thin, params.icp_voxel_mm)]
    found = search_along(
        probe, strip, field, outline[0], outline[1], turns_deg=params.turns_deg, heights_mm=params.heights_mm,
        offsets_mm=params.offsets_mm, tilts_deg=params.tilts_deg, tau_mm=params.search_tau_mm, keep=300, coarse_probes=params.coarse_probes,
            rescore_share=params.rescore_share,
    )  # fmt: skip
    poses = [candidate.bite_to_canonical for candidate in found]
    from_canonical = invert(to_canonical)
    coarse = {"upper": upper.target, "lower": lower.target}
    scored: list[tuple[float, FloatArray, FloatArray]] = []
    for way in (1.0, -1.0):
        index = [i for i, candidate in enumerate(found) if candidate.sigma == way]
        chosen = distinct([poses[i] for i in index], strip.centre, params.distinct_rotation_deg,
                          params.distinct_translation_mm, params.bite_candidates // 2)  # fmt: skip
        starts = _starts(from_canonical, [poses[index[i]] for i in chosen])
        for pose in icp_many(sparse, target, starts, GATES):
            scored.append(
                (_explained(thin, pose, lower_to_upper, coarse, params.pair_distance_mm), pose, lower_to_upper)
            )
    if not scored:
        return None
    best, pose, _, second, runner_up = _best_and_runner_up(scored, strip.centre, params)
    item = BiteEvidence(k, best, second, best - second, len(scored), len(scored), params.pair_distance_mm)
    return item, pose, runner_up


def _best_and_runner_up(
    scored: list[tuple[float, FloatArray, FloatArray]], centre: FloatArray, params: AlignParams
) -> tuple[float, FloatArray, FloatArray, float, tuple[FloatArray, FloatArray] | None]:
    """The best hypothesis ``(score, bite pose, lower pose)`` and the best one whose bite pose is distinct."""
    scored.sort(key=lambda item: -item[0])
    best_score, best_pose, best_lower = scored[0]
    for value, pose, lower in scored[1:]:
        if len(distinct([best_pose, pose], centre, params.distinct_rotation_deg, params.distinct_translation_mm)) == 2:
            return best_score, best_pose, best_lower, value, (pose, lower)
    return best_score, best_pose, best_lower, 0.0, None


def _decisive(scored: list[tuple[float, FloatArray, FloatArray]], centre: FloatArray, params: AlignParams) -> bool:
    """The best hypothesis so far explains ``decisive_score`` of the bite, ``decisive_margin`` more than any distinct one."""
    best, _, _, second, _ = _best_and_runner_up(scored, centre, params)
    return best >= params.decisive_score and best - second >= params.decisive_margin


def _own_part(
    sparse: FloatArray,
    bite_to_arch: FloatArray,
    other_to_arch: FloatArray,
    arch: PlaneTarget,
    other: PlaneTarget,
    tau: float,
) -> tuple[FloatArray, FloatArray]:
    """A pair placed again on the first arch from the bite points the other arch does not explain.

    The short ICP that placed the bite on the first arch alone used every bite point, and the
    other arch's crowns (about half of them on real bites) hold it 1-3 mm off: the other arch is
    then sought from a wrong residual, or found right relative to the bite with the bite still
    beyond the 1 mm gate of the pair's joint ICP (train pairs 081 and 085, range-image one-sided).
    Once the other arch is placed (``other_to_arch``, other file -> first arch file), the first
    arch's short ICP runs again on the rest of the bite (``sparse``, bite frame; ``tau``: the
    distance within which the other arch explains a point), and the other arch keeps its pose
    relative to the bite. Returns ``(bite_to_arch, other_to_arch)``, unchanged when fewer than 20
    points are left.
    """
    bite_to_other = invert(other_to_arch) @ bite_to_arch
    own = sparse[~_on_surface(other, transform_points(sparse, bite_to_other), tau)]
    if len(own) < 20:
        return bite_to_arch, other_to_arch
    moved = icp(own, arch, bite_to_arch, GATES)
    return moved, moved @ invert(bite_to_other)


def _other_arch(
    residual: FloatArray,
    bite_strip: StripFrame,
    bite_to_arch: FloatArray,
    other: _Alone,
    arch: _Alone,
    params: AlignParams,
) -> list[FloatArray]:
    """Poses of the other arch (its file -> the first arch's file) from the bite points the first leaves unexplained.

    Those points are searched for along the other arch's own buccal outline (no prior
    on the occlusion beyond the arches facing each other), refined by a short ICP on
    that arch alone and ranked by the share of them it explains; a pose is kept if the
    arches then face each other (occlusal normals opposed and anterior directions alike
    within ``facing_tolerance_deg``).
    """
    if len(residual) < 20:
        return []
    # the whole bite's axes (its normal faces the cheek; the residual part alone, mostly the other
    # arch's crowns seen from the side and above, has a mean normal tilted by up to 45°), centred on
    # the residual
    centre = residual.mean(axis=0)
    strip = StripFrame(bite_strip.axes, centre, float(((residual - centre) @ bite_strip.axes[:, 2]).max()), False)
    probe = residual[spread_points(residual, params.probe_points)]
    # the arches face each other: the other arch's crowns point against the first's, so in its own
    # frame the strip is the other way up, and it faces about the direction it faces on the first
    # arch (mirrored across the midline): only that way up, on the outline within facing_tolerance_deg
    arch_axes, other_axes = arch.to_canonical[:3, :3], other.to_canonical[:3, :3]
    in_arch = arch_axes @ bite_to_arch[:3, :3] @ strip.axes
    way = -1.0 if float(in_arch[2, 1]) >= 0 else 1.0
    expected = np.array([-in_arch[0, 2], in_arch[1, 2], 0.0])
    expected /= max(float(np.linalg.norm(expected)), 1e-9)
    near = other.path[1] @ expected > np.cos(np.radians(params.facing_tolerance_deg + max(params.turns_deg)))
    if not near.any():
        return []
    found = search_along(
        probe, strip, other.field, other.path[0][near], other.path[1][near], turns_deg=params.turns_deg,
        heights_mm=params.residual_heights_mm, offsets_mm=params.residual_offsets_mm, tilts_deg=params.tilts_deg,
        tau_mm=params.search_tau_mm, keep=100, ways=(way,), coarse_probes=params.coarse_probes,
        rescore_share=params.rescore_share,
    )  # fmt: skip
    poses = [candidate.bite_to_canonical for candidate in found]
    from_canonical = invert(other.to_canonical)
    limit = float(np.cos(np.radians(params.facing_tolerance_deg)))
    out: list[tuple[float, FloatArray]] = []
    chosen = distinct(
        poses, strip.centre, params.distinct_rotation_deg, params.distinct_translation_mm, params.residual_candidates
    )
    starts = _starts(from_canonical, [poses[i] for i in chosen])
    # the short ICP on the residual thinned as the bite's sparse points are (its share then on all of it)
    sparse = residual[invariant_representatives(residual, params.icp_voxel_mm)]
    for pose in icp_many(sparse, other.target, starts, GATES):
        other_pose = bite_to_arch @ invert(pose)
        rotation = other_pose[:3, :3]
        if float((rotation @ other_axes[2]) @ -arch_axes[2]) < limit:
            continue
        if float((rotation @ other_axes[1]) @ arch_axes[1]) < limit:
            continue
        share = float(_on_surface(other.target, transform_points(residual, pose), params.pair_distance_mm).mean())
        out.append((share, other_pose))
    out.sort(key=lambda item: -item[0])
    return [pose for _, pose in out[: params.residual_paired]]


def _tight_fit(
    points: FloatArray,
    surfaces: dict[str, SurfaceTarget],
    poses: tuple[FloatArray, FloatArray],
    params: AlignParams,
) -> tuple[FloatArray, float]:
    """One hypothesis ``(bite pose, lower pose)`` of a bite refined alone on the exact surfaces:
    its refined bite pose and the share of ``points`` within ``tight_distance_mm`` of either arch."""
    bite_pose, lower_pose = poses
    fit = refine_joint(
        [points], surfaces["upper"], surfaces["lower"], [bite_pose], lower_pose, params,
        max_distance_mm=0.5, max_iterations=params.exact_iterations, evaluate=False,
    )  # fmt: skip
    assert fit.lower_to_upper is not None
    x, _, closest, normals, distance, _ = _match(
        points, fit.bite_to_upper[0], surfaces["upper"], surfaces["lower"], fit.lower_to_upper,
        params.tight_distance_mm,
    )  # fmt: skip
    plane = np.abs(np.einsum("ij,ij->i", x - closest, normals))
    return fit.bite_to_upper[0], float((np.isfinite(distance) & (plane < params.tight_distance_mm)).mean())


def _resolve(
    item: BiteEvidence,
    points: FloatArray,
    best: tuple[FloatArray, float],
    runner_up: tuple[FloatArray, float],
    params: AlignParams,
) -> BiteEvidence:
    """Evidence of a bite whose two best hypotheses explain it almost equally at the coarse tolerance.

    ``best`` and ``runner_up`` are those hypotheses refined alone on the exact surfaces (same
    points, same iterations: :func:`_tight_fit`) with the share of ``points`` each puts within
    ``tight_distance_mm`` of either arch: a pose shifted along a repetitive row of teeth explains
    most points within 0.3 mm but far fewer within 0.1 mm. When both end in the same pose
    (within ``distinct_rotation_deg`` and ``distinct_translation_mm``), the runner-up was no
    alternative and scores 0.
    """
    refined = [best[0], runner_up[0]]
    scores = [best[1], runner_up[1]]
    centre = points.mean(axis=0)
    if len(distinct(refined, centre, params.distinct_rotation_deg, params.distinct_translation_mm)) == 1:
        scores[1] = 0.0  # both ended in the same pose: there was no distinct alternative after all
    return BiteEvidence(
        item.bite, scores[0], scores[1], scores[0] - scores[1], item.hypotheses, item.paired, params.tight_distance_mm
    )


def _tight_share(
    points: list[FloatArray],
    bite_to_upper: list[FloatArray],
    lower_to_upper: FloatArray,
    surfaces: dict[str, SurfaceTarget],
    params: AlignParams,
) -> float:
    """Share of all bites' points within ``tight_distance_mm`` of either arch after a joint exact refinement."""
    fit = refine_joint(
        points, surfaces["upper"], surfaces["lower"], bite_to_upper, lower_to_upper, params,
        max_distance_mm=0.5, max_iterations=params.exact_iterations, evaluate=False,
    )  # fmt: skip
    assert fit.lower_to_upper is not None
    hits, total = 0, 0
    for cloud, pose in zip(points, fit.bite_to_upper, strict=True):
        x, _, closest, normals, distance, _ = _match(
            cloud, pose, surfaces["upper"], surfaces["lower"], fit.lower_to_upper, params.tight_distance_mm
        )
        plane = np.abs(np.einsum("ij,ij->i", x - closest, normals))
        hits += int((np.isfinite(distance) & (plane < params.tight_distance_mm)).sum())
        total += len(cloud)
    return hits / max(total, 1)


def _edge_length(scan: Scan) -> float:
    """Median edge length (mm) of a scan: how far a surface point can be from its nearest vertex."""
    corners = scan.vertices[scan.faces[:: max(1, len(scan.faces) // 20000)]]
    return float(np.median(np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=2)))


def _on_surface(target: PlaneTarget, x: FloatArray, tau: float) -> NDArray[np.bool_]:
    """Which points ``(n, 3)`` lie within ``tau`` of the thinned surface (nearest sample's tangent plane)."""
    return target.on_plane(x, tau)


def _explained(
    points: FloatArray, pose: FloatArray, lower_pose: FloatArray, coarse: dict[str, PlaneTarget], tau: float
) -> float:
    """Share of bite points within ``tau`` of either arch (nearest thinned sample's plane)."""
    x = transform_points(points, pose)
    hit = coarse["upper"].on_plane(x, tau)
    rest = np.flatnonzero(~hit)  # the lower arch asked only about the points the upper does not explain
    hit[rest] = coarse["lower"].on_plane(transform_points(x, invert(lower_pose))[rest], tau)
    return float(hit.mean())


def _reasons(
    evidence: list[BiteEvidence],
    fit: JointFit,
    params: AlignParams,
    candidates: list[FloatArray],
    position_sd_mm: float,
) -> list[str]:
    """Why the fit is not confident (empty when it is); ``position_sd_mm``: :func:`lower_position_sd_mm` of it."""
    reasons = []
    stages = (("plane", fit.plane_stage, params.max_iterations, params.plane_threshold_mm),
              ("exact", fit, params.exact_iterations, params.threshold_mm))  # fmt: skip
    for name, stage, cap, tolerance in stages:
        if stage is not None and not stage.converged:
            reasons.append(
                f"the fine step's {name} stage did not converge: it stopped after {stage.iterations} "
                f"iterations (cap {cap}) with the last update still moving the arches "
                f"{stage.update_mm:.4f} mm (tolerance {tolerance} mm)"
            )
    for item in evidence:
        if item.margin < params.min_margin:
            reasons.append(
                f"bite {item.bite}: ambiguous global match (score {item.score:.2f}, "
                f"second-best {item.second_score:.2f}, margin {item.margin:.2f} < {params.min_margin})"
            )
    for k, bite in enumerate(fit.bites):
        if bite.fitness < params.min_fitness:
            reasons.append(
                f"bite {k}: only {bite.fitness:.0%} of its points lie on the arches (< {params.min_fitness:.0%})"
            )
        for arch, count in (("upper", bite.upper_inliers), ("lower", bite.lower_inliers)):
            if count < params.min_arch_share * bite.points:
                reasons.append(f"bite {k} shows too little of the {arch} arch ({count / bite.points:.0%})")
        if bite.inlier_rmse_mm > params.max_inlier_rmse_mm:
            reasons.append(f"bite {k}: inlier RMSE {bite.inlier_rmse_mm:.3f} mm > {params.max_inlier_rmse_mm} mm")
        low, high = sorted((bite.upper_rmse_mm, bite.lower_rmse_mm))
        if high > params.max_rmse_ratio * low + params.residual_floor_mm:
            reasons.append(
                f"bite {k}: the arches fit it unequally (inlier RMSE upper {bite.upper_rmse_mm:.3f} mm, "
                f"lower {bite.lower_rmse_mm:.3f} mm): a nearby wrong pose"
            )
    if position_sd_mm > params.max_lower_position_sd_mm:
        reasons.append(
            f"the bites fix the lower arch relative to the upper only to {position_sd_mm:.3f} mm "
            f"(> {params.max_lower_position_sd_mm} mm): they show too little of an arch, or surfaces it can slide along"
        )
    if len(candidates) > 1:
        spread = rotation_angle_deg(invert(candidates[0]) @ candidates[1])
        if spread > params.distinct_rotation_deg:
            reasons.append(f"the bite scans disagree on the lower arch's pose ({spread:.1f}°)")
    return reasons


def relative_error(estimate: FloatArray, truth: FloatArray, points: FloatArray) -> FloatArray:
    """Per-point distance (mm) between two placements of ``points (n, 3)``."""
    return np.asarray(
        np.linalg.norm(transform_points(points, estimate) - transform_points(points, truth), axis=1),
        dtype=np.float64,
    )


def summary(registration: Registration) -> dict[str, Any]:
    """JSON-ready metrics of a registration."""
    return {
        "evidence": [item.__dict__ for item in registration.evidence],
        "bites": [bite.__dict__ for bite in registration.fit.bites],
        "iterations": registration.fit.iterations,
        "converged": registration.fit.converged,
        "plane_stage": None
        if registration.fit.plane_stage is None
        else {
            "iterations": registration.fit.plane_stage.iterations,
            "converged": registration.fit.plane_stage.converged,
        },
        "sigma_mm": registration.fit.sigma_mm,
        "bite_disagreement_mm": registration.bite_disagreement_mm,
        "lower_position_sd_mm": registration.lower_position_sd_mm,
    }
