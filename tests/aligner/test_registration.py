from __future__ import annotations

import numpy as np
import pytest

from mesial.aligner._features import voxel_representatives
from mesial.aligner._icp import SurfaceTarget, refine_joint
from mesial.aligner.params import AlignParams
from mesial.aligner.pipeline import AlignmentResult, align_scans
from mesial.aligner.registration import relative_error
from mesial.aligner.samples import SampleCase
from mesial.aligner.transforms import exp_se3, invert
from mesial.aligner.validate import scan_from_arrays


def test_joint_fine_step_recovers_known_transforms(small_case):
    """From poses 1 mm / 1.5° off, the joint robust ICP recovers the truth."""
    case = small_case
    upper = SurfaceTarget(case.upper.vertices, case.upper.faces)
    lower = SurfaceTarget(case.lower.vertices, case.lower.faces)
    bites = [b.vertices[voxel_representatives(b.vertices, 0.25)] for b in case.bites]
    truth_bite_to_upper = [invert(case.truth["upper"]) @ case.truth[n] for n in ("bite", "bite2")]
    truth_lower_to_upper = invert(case.truth["upper"]) @ case.truth["lower"]
    off = exp_se3(np.array([0.002, -0.0015, 0.001, 0.3, -0.2, 0.3]))
    fit = refine_joint(
        bites,
        upper,
        lower,
        [off @ t for t in truth_bite_to_upper],
        invert(off) @ truth_lower_to_upper,
        AlignParams(),
    )
    assert fit.lower_to_upper is not None
    tre = relative_error(fit.lower_to_upper, truth_lower_to_upper, case.lower.vertices)
    assert np.sqrt(np.mean(tre**2)) < 0.03
    assert all(b.fitness > 0.8 for b in fit.bites)


def test_pipeline_is_never_silently_wrong(small_case):
    """A generated case ends ok with a small TRE, or not_confident with reasons."""
    case = small_case
    upper = scan_from_arrays(case.upper.vertices, case.upper.faces, "upper")
    lower = scan_from_arrays(case.lower.vertices, case.lower.faces, "lower")
    bites = [scan_from_arrays(b.vertices, b.faces, "bite", orient=False) for b in case.bites]
    result = align_scans(upper, lower, bites)
    assert result.status in ("ok", "not_confident")
    if result.status == "ok":
        assert result.registration is not None and result.upper_to_bite is not None
        estimate = invert(result.upper_to_bite) @ result.registration.lower_to_bite
        truth = invert(case.truth["upper"]) @ case.truth["lower"]
        tre = relative_error(estimate, truth, case.lower.vertices)
        assert np.sqrt(np.mean(tre**2)) < 0.1
    else:
        assert result.reasons


def test_truth_occlusion_has_contacts_and_small_penetrations(small_case):
    from mesial.aligner.occlusion import arch_contacts

    case = small_case
    up = case.upper.vertices @ case.truth["upper"][:3, :3].T + case.truth["upper"][:3, 3]
    low = case.lower.vertices @ case.truth["lower"][:3, :3].T + case.truth["lower"][:3, 3]
    contacts = arch_contacts(low, case.lower.faces, SurfaceTarget(up, case.upper.faces), 0.1)
    assert contacts.patches >= 5
    # the generator designs three bite-throughs of 0.03-0.08 mm, between the meshes as written
    assert 0.0 < contacts.max_penetration_mm <= 0.1


def test_a_bad_second_bite_leaves_the_reference_bite_alone(small_case):
    """Two bites where the second shows no teeth: the reference bite alone places the lower arch.

    The joint fit fails the second bite's checks; the first bite, refined on its own, passes every
    one-bite check, so the result is ``ok`` as a one-bite result (one evidence, one bite transform)
    and within 0.05 mm of the truth.
    """
    from tests.aligner.conftest import grid_plane

    case = small_case
    upper = scan_from_arrays(case.upper.vertices, case.upper.faces, "upper")
    lower = scan_from_arrays(case.lower.vertices, case.lower.faces, "lower")
    bite = scan_from_arrays(case.bites[0].vertices, case.bites[0].faces, "bite", orient=False)
    flat = scan_from_arrays(*grid_plane(20.0, 0.3), "bite2", orient=False)
    result = align_scans(upper, lower, [bite, flat])
    assert result.status == "ok", result.reasons
    assert result.registration is not None and result.upper_to_bite is not None
    assert len(result.registration.evidence) == 1 and len(result.registration.bite_to_bite) == 1
    estimate = invert(result.upper_to_bite) @ result.registration.lower_to_bite
    truth = invert(case.truth["upper"]) @ case.truth["lower"]
    tre = relative_error(estimate, truth, case.lower.vertices)
    assert np.sqrt(np.mean(tre**2)) < 0.05


@pytest.mark.parametrize("slide_mm", [0.0, 0.5])
def test_two_bites_in_different_occlusions_are_not_confident(small_case, slide_mm):
    """Bite 1 scanned with the lower arch slid forward (the patient bit differently): not ``ok``.

    The joint fit of both bites lies between the two occlusions and fits both about as well as
    one would (fitness, residuals and the 8°/3 mm agreement all passed on real pairs, 0.3 mm off
    for a 0.5 mm slide); each bite refined alone returns to its own occlusion, and the two place
    the lower arch ``bite_disagreement_mm`` apart. Unslid, the two bites agree within 0.05 mm.
    """
    from mesial.aligner.samples import Mesh, build_arches, scan_bite
    from mesial.aligner.transforms import random_rigid, transform_points

    case = small_case  # generate_case(3, vertices=20_000): the same arches and arch curve
    upper, lower, arch = build_arches(3, 20_000)
    slid = Mesh(lower.vertices + np.array([0.0, slide_mm, 0.0]), lower.faces)
    canine = next(t for t in arch.lower if t["kind"] == "canine" and t["side"] < 0)
    left = (1.5, canine["centre"] + 0.5 * canine["length"])
    rng = np.random.default_rng(8)
    second = scan_bite(upper, slid, arch, left, rng, noise_mm=0.02, spacing_mm=0.25)
    posed = transform_points(second.vertices, random_rigid(rng, translation_mm=40.0))
    result = align_scans(
        scan_from_arrays(case.upper.vertices, case.upper.faces, "upper"),
        scan_from_arrays(case.lower.vertices, case.lower.faces, "lower"),
        [scan_from_arrays(case.bites[0].vertices, case.bites[0].faces, "bite", orient=False),
         scan_from_arrays(posed, second.faces, "bite2", orient=False)],
    )  # fmt: skip
    assert result.registration is not None and result.registration.bite_disagreement_mm is not None
    disagreement = result.registration.bite_disagreement_mm
    if slide_mm:
        assert result.status == "not_confident"
        assert 0.3 < disagreement < 0.7
        assert any("different occlusions" in reason for reason in result.reasons)
    else:
        assert result.status == "ok", result.reasons
        assert disagreement < 0.05


def test_a_bite_fragment_is_never_enough(small_case):
    """A bite scan of about one tooth (10 mm) fits many places of an arch: never ``ok``.

    Found on a real arch pair: a 10 mm range-image fragment was placed 27 mm off with 97 % of its
    points on the arches. The reason names the measured span.
    """
    from mesial.aligner.registration import principal_length

    case = small_case
    source = case.bites[0]
    centre = source.vertices.mean(axis=0)
    keep = np.linalg.norm(source.vertices - centre, axis=1) < 5.0
    faces = source.faces[keep[source.faces].all(axis=1)]
    used = np.unique(faces)
    index = np.full(len(source.vertices), -1)
    index[used] = np.arange(len(used))
    fragment = scan_from_arrays(source.vertices[used], index[faces], "bite", orient=False)
    assert principal_length(fragment.vertices) < 10.5
    upper = scan_from_arrays(case.upper.vertices, case.upper.faces, "upper")
    lower = scan_from_arrays(case.lower.vertices, case.lower.faces, "lower")
    result = align_scans(upper, lower, [fragment])
    assert result.status == "not_confident"
    assert any("spans only" in reason and "< 20 mm" in reason for reason in result.reasons), result.reasons


def test_principal_length_is_the_extent_along_the_longest_axis():
    rng = np.random.default_rng(1)
    line = np.stack([np.linspace(0, 30, 200), rng.normal(0, 0.5, 200), rng.normal(0, 0.5, 200)], axis=1)
    from mesial.aligner.registration import principal_length
    from mesial.aligner.transforms import exp_se3

    turned = line @ exp_se3(np.array([0.4, -1.1, 0.7, 5.0, 3.0, -2.0]))[:3, :3].T
    assert abs(principal_length(line) - principal_length(turned)) < 1e-9
    assert 29.5 < principal_length(line) < 30.5
    assert principal_length(line[:1]) == 0.0


def _align(case: SampleCase, params: AlignParams | None = None) -> AlignmentResult:
    upper = scan_from_arrays(case.upper.vertices, case.upper.faces, "upper")
    lower = scan_from_arrays(case.lower.vertices, case.lower.faces, "lower")
    bites = [scan_from_arrays(b.vertices, b.faces, "bite", orient=False) for b in case.bites]
    return align_scans(upper, lower, bites, params=params)


def test_a_fine_step_stopped_at_its_cap_is_not_confident(small_case):
    """Never confidently wrong: a plane stage cut off after 1 iteration reports that it did not converge."""
    result = _align(small_case, AlignParams(max_iterations=1))
    assert result.status == "not_confident"
    assert result.registration is not None
    stage = result.registration.fit.plane_stage
    assert stage is not None and not stage.converged and stage.iterations == 1
    assert any("plane stage did not converge" in reason for reason in result.reasons), result.reasons


def test_the_fine_step_converges_on_a_generated_case(small_case):
    """Both fine stages stop because the update became small, not at their caps, and the result is ok."""
    result = _align(small_case)
    assert result.status == "ok", result.reasons
    assert result.registration is not None
    fit = result.registration.fit
    assert fit.plane_stage is not None and fit.plane_stage.converged
    assert fit.plane_stage.iterations < AlignParams().max_iterations
    assert fit.converged and fit.update_mm < AlignParams().threshold_mm


def test_independent_tasks_run_at_once_give_their_results_in_order_and_their_errors() -> None:
    import threading

    from mesial.aligner.registration import _at_once

    both = threading.Barrier(2, timeout=30)  # passes only when the two tasks run at the same time

    def task(value: int) -> int:
        both.wait()
        return value * 10

    assert _at_once([lambda: task(1), lambda: task(2)]) == [10, 20]
    assert _at_once([lambda: 7]) == [7]

    def fails() -> int:
        raise ValueError("bad bite")

    with pytest.raises(ValueError, match="bad bite"):
        _at_once([lambda: 1, fails])


def test_the_callers_work_starts_as_the_global_step_starts(small_case):
    """``register_bite(at_global=...)`` calls it once, on the calling thread, between the global stage's start
    and its end (where the pipeline starts building the occlusal analysis' structures)."""
    import threading

    from mesial.aligner.registration import register_bite

    case = small_case
    upper = scan_from_arrays(case.upper.vertices, case.upper.faces, "upper")
    lower = scan_from_arrays(case.lower.vertices, case.lower.faces, "lower")
    bites = [scan_from_arrays(b.vertices, b.faces, "bite", orient=False) for b in case.bites]
    events: list[object] = []
    register_bite(
        upper, lower, bites,
        progress=lambda stage, fraction: events.append((stage, fraction)),
        at_global=lambda: events.append(threading.current_thread()),
    )  # fmt: skip
    assert events.count(threading.current_thread()) == 1
    called = events.index(threading.current_thread())
    assert events[called - 1] == ("global", 0.0) and ("global", 1.0) in events[called + 1 :]


def _lower_sd_brute_force(covariance: np.ndarray, points: np.ndarray) -> float:
    """RMS over ``points (n, 3)`` of sqrt(trace) of the covariance of ``ω × p + t``, ``(ω, t)`` of ``covariance``."""
    a = np.zeros((len(points), 3, 6))
    a[:, 0, 1], a[:, 0, 2] = points[:, 2], -points[:, 1]
    a[:, 1, 0], a[:, 1, 2] = -points[:, 2], points[:, 0]
    a[:, 2, 0], a[:, 2, 1] = points[:, 1], -points[:, 0]
    a[:, :, 3:] = np.eye(3)
    return float(np.sqrt(np.einsum("nij,jk,nik->", a, covariance, a) / len(points)))


def test_lower_position_sd_is_the_rms_deviation_of_the_lower_vertices():
    """``lower_position_sd_mm`` (moments of the vertices) equals the per-vertex sum, for any pose of the lower
    arch; a bite explained only by flat surfaces leaves the lower arch free to slide: no finite precision."""
    from mesial.aligner._icp import JointFit, _plane_rows, lower_position_sd_mm

    rng = np.random.default_rng(5)
    lower_vertices = rng.normal([3.0, 20.0, -4.0], [20.0, 15.0, 5.0], (500, 3))
    lower_to_upper = exp_se3(np.array([0.1, -0.05, 0.2, 1.0, -2.0, 3.0]))
    blocks = []
    for _ in range(2):  # two bites: points on both arches, normals every way
        x = rng.normal(0.0, 20.0, (300, 3))
        normals = rng.normal(size=(300, 3))
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        rows = _plane_rows(x, x + 0.01, normals, rng.random(300) < 0.5, True)
        blocks.append(rows.T @ rows / 0.02**2)
    fit = JointFit((np.eye(4), np.eye(4)), lower_to_upper, (), 1, 0.02, information=tuple(blocks))
    normal = np.zeros((18, 18))
    for k, block in enumerate(blocks):  # the joint normal equations, written out
        index = np.r_[6 * k : 6 * k + 6, 12:18]
        normal[np.ix_(index, index)] += block
    covariance = np.linalg.inv(normal)[12:, 12:]
    placed = lower_vertices @ lower_to_upper[:3, :3].T + lower_to_upper[:3, 3]
    expected = _lower_sd_brute_force(covariance, placed)
    assert lower_position_sd_mm(fit, lower_vertices) == pytest.approx(expected, rel=1e-9)

    flat = _plane_rows(rng.normal(0.0, 20.0, (300, 3)) * [1, 1, 0], np.zeros((300, 3)), np.tile([0.0, 0.0, 1.0], (300, 1)),
                       rng.random(300) < 0.5, True)  # fmt: skip
    sliding = JointFit((np.eye(4),), lower_to_upper, (), 1, 0.02, information=(flat.T @ flat / 0.02**2,))
    assert not lower_position_sd_mm(sliding, lower_vertices) < 1.0


def test_a_loosely_fixed_lower_arch_is_not_confident(small_case):
    """A result is ``ok`` only when its bites fix the lower arch to ``max_lower_position_sd_mm``; the generated case
    is fixed to a few micrometres, and a bound below that makes it ``not_confident`` with the reason."""
    from dataclasses import replace

    case = small_case
    upper = scan_from_arrays(case.upper.vertices, case.upper.faces, "upper")
    lower = scan_from_arrays(case.lower.vertices, case.lower.faces, "lower")
    bites = [scan_from_arrays(b.vertices, b.faces, "bite", orient=False) for b in case.bites]
    result = align_scans(upper, lower, bites)
    assert result.status == "ok" and result.registration is not None
    sd = result.registration.lower_position_sd_mm
    assert sd is not None and 0.0 < sd < AlignParams().max_lower_position_sd_mm
    # result.json reports it (docs/result-schema.md)
    from mesial.aligner.pipeline import result_document

    assert result_document(result, "test")["registration"]["lower_position_sd_mm"] == sd
    strict = align_scans(upper, lower, bites, params=replace(AlignParams(), max_lower_position_sd_mm=sd / 2))
    assert strict.status == "not_confident"
    assert any("fix the lower arch relative to the upper only to" in reason for reason in strict.reasons)
