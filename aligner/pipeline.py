"""The whole case: validate, register, analyse, optimise (pure; writing lives in report.py).

``align_scans`` is what the CLI and the Job entrypoint call: paths or
validated scans in, an :class:`AlignmentResult` out, progress reported as
``(stage, fraction)``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._icp import SurfaceTarget
from mesial.aligner.errors import ScanInputError
from mesial.aligner.occlusion import (
    REACH_MM,
    ArchContacts,
    ArchFrame,
    arch_contacts,
    arch_frame,
    optimise_bite,
    regions_of,
    spatial_order,
    with_a_corner,
)
from mesial.aligner.params import AlignParams, OcclusionParams
from mesial.aligner.registration import ARCHES, Registration, in_background, register_bite, summary
from mesial.aligner.transforms import invert, lengths, rotation_angle_deg, transform_points
from mesial.aligner.validate import Scan, load_scan
from mesial.common.limits import MAX_SCAN_BYTES, MAX_TRIANGLES

if TYPE_CHECKING:
    from mesial.aligner._prefetch import FilePrefetch

FloatArray = NDArray[np.float64]
Progress = Callable[[str, float], None]
RESULT_SCHEMA_VERSION = "1.0"


@dataclass(frozen=True)
class Occlusion:
    """Occlusal analysis before and after bite optimisation.

    Attributes
    ----------
    before, after : dict of arch -> ArchContacts
        ``after`` is ``before`` when optimisation is off or changed nothing. The distances
        of ``after`` follow :meth:`SurfaceTarget.signed_distance` (exact within its exact
        band); those of a ``before`` that the optimisation left behind are exact where its
        measures read them (within ``pipeline._read_band``, and the corners of the triangles
        in contact), the nearest vertex's elsewhere.
    correction : (4, 4) float
        Rigid correction applied to the lower arch (bite frame).
    optimised : bool
        Whether the bite optimisation was on (``OcclusionParams.optimise``).
    frame : ArchFrame or None
        The anatomical axes the regions were measured in (before the correction, which moves the
        lower arch a fraction of a millimetre); the pictures look along them.
    """

    before: dict[str, ArchContacts]
    after: dict[str, ArchContacts]
    correction: FloatArray
    optimised: bool
    frame: ArchFrame | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AlignmentResult:
    """Everything a case produced (arrays stay in memory; see report.py to write).

    Attributes
    ----------
    status : str
        ``"ok"``, ``"not_confident"`` or ``"invalid_input"``.
    reasons : tuple of str
    scans : dict of role -> Scan
    registration : Registration or None
    upper_to_bite, lower_to_bite : (4, 4) float or None
        Final transforms (``lower_to_bite`` includes the bite optimisation).
    occlusion : Occlusion or None
    timings : dict of stage -> seconds
    params : dict
        The parameters used (:class:`AlignParams`, with :class:`OcclusionParams` under
        ``"occlusion"`` when analysed; empty for ``invalid_input``): ``result.json``'s ``params``.
    """

    status: str
    reasons: tuple[str, ...]
    scans: dict[str, Scan] = field(repr=False)
    registration: Registration | None = field(repr=False)
    upper_to_bite: FloatArray | None
    lower_to_bite: FloatArray | None
    occlusion: Occlusion | None = field(repr=False)
    timings: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)


def _quiet(stage: str, fraction: float) -> None:
    return None


P = ParamSpec("P")
R = TypeVar("R")


def one_blas_thread(func: Callable[P, R]) -> Callable[P, R]:
    """Run ``func`` with BLAS limited to one thread.

    The registration's linear algebra is many small products ((n, 18) by (18, n));
    OpenBLAS threads gain nothing on them and, when other processes share the cores,
    spin waiting for each other: measured on 2 cores at load 3.5, the fine step took
    4.2 s instead of 0.33 s. The mesh-query kernel's closest points keep their own threads
    (:mod:`._meshquery`: POSIX threads, two by default).
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return func(*args, **kwargs)

    return wrapper


@one_blas_thread
def align_scans(
    upper: str | Path | Scan,
    lower: str | Path | Scan,
    bites: Sequence[str | Path | Scan],
    *,
    params: AlignParams | None = None,
    occlusion: OcclusionParams | None = None,
    max_bytes: int = MAX_SCAN_BYTES,
    max_triangles: int = MAX_TRIANGLES,
    unit: str | None = None,
    progress: Progress | None = None,
    prefetched: FilePrefetch | None = None,
) -> AlignmentResult:
    """Align two arches into occlusion through one or two bite scans and measure the contacts.

    Parameters
    ----------
    upper, lower : path or Scan
        Arch scans (STL, PLY, OBJ; millimetres) in any pose.
    bites : sequence of path or Scan
        One or two buccal bite scans; the first defines the output frame.
    params, occlusion : optional
    max_bytes, max_triangles : int
        Input limits (files only).
    unit : str, optional
        Rescale files from this unit (``"m"``, ``"in"``); refused otherwise.
    progress : callable (stage, fraction), optional
    prefetched : FilePrefetch, optional
        Files already read and hashed (:mod:`._prefetch`; see :func:`~.io.read_mesh`).

    Returns
    -------
    result : AlignmentResult
        ``status`` is ``invalid_input`` (with the reason) instead of raising for bad scans.
    """
    params = params or AlignParams()
    occlusion = occlusion or OcclusionParams()
    report = progress or _quiet
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    report("validate", 0.0)
    roles = ["upper", "lower"] + ["bite" if i == 0 else f"bite{i + 1}" for i in range(len(bites))]
    scans: dict[str, Scan] = {}

    def load(role: str, source: str | Path | Scan) -> Scan:
        if isinstance(source, Scan):
            return source
        orient = not role.startswith("bite")
        return load_scan(
            source, role, max_bytes=max_bytes, max_triangles=max_triangles, unit=unit, orient=orient,
            prefetched=prefetched,
        )  # fmt: skip

    # the files on two threads (hashing, NumPy's sorts and copies release the GIL); the verdict and the
    # progress in the roles' order, the first bad file in that order is the one reported
    with ThreadPoolExecutor(max_workers=2) as pool:
        loading = [pool.submit(load, role, source) for role, source in zip(roles, [upper, lower, *bites], strict=True)]
        try:
            for i, (role, future) in enumerate(zip(roles, loading, strict=True)):
                scans[role] = future.result()
                report("validate", (i + 1) / len(roles))
        except ScanInputError as exc:
            for future in loading:
                future.cancel()
            timings["validate"] = time.perf_counter() - clock
            return AlignmentResult("invalid_input", (str(exc),), scans, None, None, None, None, timings)
    timings["validate"] = time.perf_counter() - clock

    bite_scans = [scans[role] for role in roles[2:]]
    # the occlusal analysis' search structures of the arches (they do not depend on the poses) are built on a
    # thread of their own from the start of the registration's global step, which leaves part of a core idle
    # (its two bites' threads: 1.7 cores; the preprocessing before it keeps both busy)
    prepared: list[Future[None]] = []

    def prepare() -> None:
        prepared.append(in_background(functools.partial(prepare_analysis, scans["upper"], scans["lower"])))

    registration = register_bite(scans["upper"], scans["lower"], bite_scans, params, report, at_global=prepare)
    timings.update(registration.timings)
    if not registration.confident:
        for building in prepared:
            building.exception()  # (waited for, not needed: nothing is left running)
        return AlignmentResult(
            "not_confident",
            registration.reasons,
            scans,
            registration,
            registration.upper_to_bite,
            registration.lower_to_bite,
            None,
            timings,
            params.as_dict(),
        )

    clock = time.perf_counter()
    report("occlusion", 0.0)
    for building in prepared:
        building.result()
    result = analyse(scans["upper"], scans["lower"], registration.upper_to_bite, registration.lower_to_bite, occlusion)
    timings["occlusion"] = time.perf_counter() - clock
    report("occlusion", 1.0)
    return AlignmentResult(
        "ok",
        (),
        scans,
        registration,
        registration.upper_to_bite,
        result.correction @ registration.lower_to_bite,
        result,
        timings,
        {**params.as_dict(), "occlusion": occlusion.as_dict()},
    )


def prepare_analysis(upper: Scan, lower: Scan) -> None:
    """Build the arches' search structures :func:`analyse` queries, each in its scan's own frame (the
    exact queries' pseudonormals, the distance field, the local spread): what its first queries would build.

    Nothing may query the arches' signed distances meanwhile (the structures are built without a lock).
    """
    for scan in (upper, lower):
        scan.surface().prepare_signed_distance()


def analyse(
    upper: Scan, lower: Scan, upper_to_bite: FloatArray, lower_to_bite: FloatArray, params: OcclusionParams
) -> Occlusion:
    """Contacts of both arches placed by the given transforms, before and after optimisation.

    Each arch's search structures (built once per scan) are placed by its
    transform instead of being rebuilt. Before the optimisation exact queries go only
    where the contact measures and the optimisation read them (:func:`_distances`);
    after it, the vertices within the near band are measured again, exact within the
    exact band; when nothing moved, the first distances are completed to that instead.
    The two arches' distances are independent (each queries the other's structures): they are
    measured on two threads (:func:`_per_arch`), and the anatomical frame and the contacts before
    the optimisation beside the work that does not need them: the same values as one after the other.
    """
    scans = {"upper": upper, "lower": lower}
    points = {
        "upper": transform_points(upper.vertices, upper_to_bite),
        "lower": transform_points(lower.vertices, lower_to_bite),
    }
    upper_surface = upper.surface().placed(upper_to_bite)
    lower_surface = lower.surface().placed(lower_to_bite)
    antagonist = {"upper": lower_surface, "lower": upper_surface}
    threshold = params.contact_threshold_mm

    def contacts(arch: str, vertices: FloatArray, distance: FloatArray, region: NDArray[np.int64]) -> ArchContacts:
        return arch_contacts(vertices, scans[arch].faces, None, threshold, region, distance)

    def first(arch: str) -> tuple[NDArray[np.int64], FloatArray]:
        # the vertices queried in space order (the same values, faster: see spatial_order)
        order = spatial_order(scans[arch].vertices)
        return order, _distances(antagonist[arch], points[arch], scans[arch].faces, params, order)

    with _helper() as beside:
        # the frame is computed after the upper arch's first pass, on its thread: the lower's is the longer
        # (c1-c3: 83 000-84 000 nearest-vertex queries against 73 000-74 000, 20 000 exact against 13 000)
        upper_first = beside.submit(first, "upper")
        framing = beside.submit(arch_frame, points["upper"], points["lower"])
        measured = {"lower": first("lower"), "upper": upper_first.result()}
        order = {arch: m[0] for arch, m in measured.items()}
        distances = {arch: m[1] for arch, m in measured.items()}

        def measure_before() -> tuple[dict[str, NDArray[np.int64]], dict[str, ArchContacts]]:
            region = {arch: regions_of(points[arch], framing.result(), params.anterior_share) for arch in ARCHES}
            return region, {arch: contacts(arch, points[arch], distances[arch], region[arch]) for arch in ARCHES}

        # the regions and the contacts before the optimisation are measured beside it (it needs neither)
        measuring = beside.submit(measure_before)
        correction = np.eye(4)
        # (the lower arch's deepest penetration: ArchContacts.max_penetration_mm of its distances)
        if params.optimise and max(0.0, -float(distances["lower"].min())) > params.penetration_tolerance_mm:
            correction = optimise_bite(upper_surface, points["lower"], params, distances["lower"])
        regions, before = measuring.result()
        frame = framing.result()
        if np.allclose(correction, np.eye(4)):
            # the distances are the result's own: measured as the full exact band measures them
            def complete(arch: str) -> ArchContacts:
                distance = _complete(antagonist[arch], points[arch], distances[arch], params, order[arch])
                return contacts(arch, points[arch], distance, regions[arch])

            before = _per_arch(complete, beside)
            return Occlusion(before, before, correction, params.optimise, frame)
        low = points["lower"]
        moved = transform_points(low, correction)
        # vertices farther than the band plus the largest displacement stay far: their
        # (approximate, >= band) distances are kept
        reach = SurfaceTarget.near_band_mm + float(np.linalg.norm(moved - low, axis=1).max()) + 1e-6
        after_points = {"upper": points["upper"], "lower": moved}
        after_antagonist = {"upper": lower.surface().placed(correction @ lower_to_bite), "lower": upper_surface}
        band = SurfaceTarget.exact_band_mm - 1e-9

        def after(arch: str) -> ArchContacts:
            # how far each vertex moved against its antagonist; a distance changes by at most that, so a vertex
            # whose first distance (exact, or an upper bound: the nearest vertex's) plus it is within the exact
            # band is within it after the motion: queried exactly without the k-d tree's filter (the same answer)
            if arch == "upper":
                shift = lengths(transform_points(points["upper"], invert(correction)) - points["upper"])
            else:
                shift = lengths(moved - low)
            previous = distances[arch]
            within = np.abs(previous) + shift < band
            distance = _signed(
                after_antagonist[arch], after_points[arch], order[arch], previous < reach, previous, within=within
            )
            return contacts(arch, after_points[arch], distance, regions[arch])

        return Occlusion(before, _per_arch(after, beside), correction, True, frame)


T = TypeVar("T")


def _helper() -> Executor:
    """The analysis' second thread (one worker: tasks submitted to it run in turn)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="occlusion")


def _per_arch(task: Callable[[str], T], beside: Executor) -> dict[str, T]:
    """``{"upper": task("upper"), "lower": task("lower")}``, the upper's on ``beside`` (another thread).

    The analysis of one arch queries the other arch's search structures (built on first use by
    the thread that queries them) and nothing the other thread touches. Most of the time is in
    the kernel's queries and NumPy's loops, which release the GIL: on two cores the two arches
    take little more than the slower one.
    """
    upper = beside.submit(task, "upper")
    lower = task("lower")
    return {"upper": upper.result(), "lower": lower}


def _read_band(params: OcclusionParams) -> float:
    """Within this distance (mm) the measures before optimisation read exact distances: contacts and the
    vertices the bite optimisation moves (at most the exact band)."""
    moved = min(params.optimise_band_mm, params.contact_threshold_mm + REACH_MM) if params.optimise else 0.0
    return min(max(params.contact_threshold_mm, moved), SurfaceTarget.exact_band_mm)


def _signed(
    surface: SurfaceTarget,
    points: FloatArray,
    order: NDArray[np.int64],
    subset: NDArray[np.bool_] | None = None,
    previous: FloatArray | None = None,
    *,
    band_mm: float | None = None,
    within: NDArray[np.bool_] | None = None,
) -> FloatArray:
    """``surface.signed_distance(points, subset, previous, band_mm=band_mm, within_band=within)[0]``, the points
    queried in ``order`` (a permutation, see :func:`spatial_order`): the same values, in the points' own order."""
    distance = np.empty(len(points))
    ordered = surface.signed_distance(
        np.take(points, order, axis=0),  # (np.take: rows gathered faster than by indexing)
        None if subset is None else np.take(subset, order),
        None if previous is None else np.take(previous, order),
        band_mm=band_mm,
        within_band=None if within is None else np.take(within, order),
    )[0]
    np.put(distance, order, ordered)
    return distance


def _distances(
    antagonist: SurfaceTarget,
    vertices: FloatArray,
    faces: NDArray[np.int64],
    params: OcclusionParams,
    order: NDArray[np.int64],
) -> FloatArray:
    """Signed distances (mm) of ``vertices (n, 3)`` to ``antagonist``, equal to the full exact band's where the
    measures before optimisation read them (see :func:`_read_band`), elsewhere the nearest vertex's.

    Exact within the read band and behind the surface; the corners of every triangle in contact
    (whose areas interpolate them) as the full band measures them. With no vertex within the read
    band, the nearest vertices are measured as the full band measures them (the least distance is
    reported). The vertices are queried in ``order`` (:func:`spatial_order`).
    """
    band = _read_band(params)
    distance = _signed(antagonist, vertices, order, band_mm=band)
    if distance.min() >= band:
        return _signed(antagonist, vertices, order)
    corners = np.unique(faces[with_a_corner(distance < max(params.contact_threshold_mm, 0.0), faces)])
    if len(corners):
        distance[corners] = antagonist.signed_distance(vertices[corners])[0]
    return distance


def _complete(
    antagonist: SurfaceTarget,
    vertices: FloatArray,
    distance: FloatArray,
    params: OcclusionParams,
    order: NDArray[np.int64],
) -> FloatArray:
    """:func:`_distances`' values brought to the full exact band's everywhere (the result's own distances)."""
    band = _read_band(params)
    # only these can be exact in the full band and not in the read one (their value is the nearest vertex's)
    return _signed(
        antagonist, vertices, order, (distance >= band) & (distance < antagonist.widest_exact_mm()), distance
    )


def result_document(result: AlignmentResult, version: str) -> dict[str, Any]:
    """The JSON document of ``result.json`` (schema: docs/result-schema.md)."""
    doc: dict[str, Any] = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "software": {"name": "mesial", "version": version},
        "status": result.status,
        "reasons": list(result.reasons),
        "frame": "bite",
        "inputs": {
            role: {
                "sha256": scan.sha256,
                "format": scan.file_format,
                "vertices": len(scan.vertices),
                "triangles": len(scan.faces),
                "cleaning": scan.cleaning.as_dict(),
            }
            for role, scan in result.scans.items()
        },
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
    }
    if result.upper_to_bite is not None and result.lower_to_bite is not None:
        doc["transforms"] = {"upper": result.upper_to_bite.tolist(), "lower": result.lower_to_bite.tolist()}
    if result.registration is not None:
        doc["registration"] = summary(result.registration)
        doc["confidence"] = {"confident": result.registration.confident, "reasons": list(result.registration.reasons)}
        doc["transforms_bites"] = [m.tolist() for m in result.registration.bite_to_bite]
    if result.occlusion is not None:
        occ = result.occlusion
        doc["occlusion"] = {
            "before": {arch: c.summary() for arch, c in occ.before.items()},
            "after": {arch: c.summary() for arch, c in occ.after.items()},
            "optimised": occ.optimised,
            "correction": {
                "matrix": occ.correction.tolist(),
                "translation_mm": round(float(np.linalg.norm(occ.correction[:3, 3])), 4),
                "rotation_deg": round(rotation_angle_deg(occ.correction), 4),
            },
        }
    if result.params:
        doc["params"] = {k: list(v) if isinstance(v, tuple) else v for k, v in result.params.items()}
    return doc


__all__ = ["AlignmentResult", "Occlusion", "align_scans", "analyse", "invert", "result_document"]
