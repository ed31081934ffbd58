"""The global step on generated cases: anatomical frames, then the whole registration from random poses."""

from __future__ import annotations

import numpy as np
import pytest

from mesial.aligner._anatomy import FLIP, arch_frame
from mesial.aligner._features import voxel_representatives
from mesial.aligner.pipeline import align_scans
from mesial.aligner.registration import relative_error
from mesial.aligner.samples import SampleCase, generate_case
from mesial.aligner.transforms import invert, rotation_angle_deg
from mesial.aligner.validate import scan_from_arrays


def _lower_tre(case: SampleCase, lower_to_upper: np.ndarray) -> float:
    truth = invert(case.truth["upper"]) @ case.truth["lower"]
    return float(np.sqrt(np.mean(relative_error(lower_to_upper, truth, case.lower.vertices) ** 2)))


def test_canonical_frames_put_the_arches_face_to_face(small_case: SampleCase) -> None:
    """From shape alone, the lower arch lands within a few mm and degrees of its occlusion pose."""
    frames = {}
    for name, mesh in (("upper", small_case.upper), ("lower", small_case.lower)):
        scan = scan_from_arrays(mesh.vertices, mesh.faces, name)
        pick = voxel_representatives(scan.vertices, 1.0)
        frames[name] = arch_frame(scan.vertices[pick], scan.vertex_normals[pick], scan.vertices, scan.faces)
        assert frames[name].anterior_evidence > 0.9
    start = invert(frames["upper"].to_canonical) @ FLIP @ frames["lower"].to_canonical
    truth = invert(small_case.truth["upper"]) @ small_case.truth["lower"]
    assert rotation_angle_deg(invert(truth) @ start) < 6.0
    assert _lower_tre(small_case, start) < 4.0


@pytest.mark.parametrize(("seed", "one_sided", "limit_mm"), [(5, False, 0.06), (2, True, 0.15)])
def test_registration_recovers_random_poses(seed: int, one_sided: bool, limit_mm: float) -> None:
    """Arches and bites in random poses: ok, with the lower arch's TRE (relative to the upper) asserted.

    60 000-vertex arches keep the test fast; the k-d tree's nearest-vertex planes
    limit the accuracy at this resolution (150 000 vertices: see docs/aligner.md).
    """
    case = generate_case(seed, vertices=60_000, one_sided=one_sided)
    upper = scan_from_arrays(case.upper.vertices, case.upper.faces, "upper")
    lower = scan_from_arrays(case.lower.vertices, case.lower.faces, "lower")
    bites = [scan_from_arrays(b.vertices, b.faces, "bite", orient=False) for b in case.bites]
    result = align_scans(upper, lower, bites)
    assert result.status == "ok", result.reasons
    assert result.registration is not None and result.upper_to_bite is not None
    estimate = invert(result.upper_to_bite) @ result.registration.lower_to_bite
    assert _lower_tre(case, estimate) < limit_mm
    assert all(item.margin >= 0.1 for item in result.registration.evidence)


def test_wrong_lower_arch_is_not_confident(small_case: SampleCase) -> None:
    """A lower arch from another patient (another seed) must not be reported as aligned."""
    other = generate_case(11, vertices=20_000)
    upper = scan_from_arrays(small_case.upper.vertices, small_case.upper.faces, "upper")
    lower = scan_from_arrays(other.upper.vertices, other.upper.faces, "lower")  # an upper arch as the lower
    bites = [scan_from_arrays(b.vertices, b.faces, "bite", orient=False) for b in small_case.bites]
    result = align_scans(upper, lower, bites)
    assert result.status == "not_confident"
    assert result.reasons
