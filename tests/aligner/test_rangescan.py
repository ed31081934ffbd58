"""The range-image bite simulator: what a real scanner would and would not return."""

from __future__ import annotations

import numpy as np
import pytest

from mesial.aligner.pipeline import align_scans
from mesial.aligner.rangescan import GRAZING_DEG, ArchPath, range_image_bite
from mesial.aligner.registration import relative_error
from mesial.aligner.samples import build_arches, generate_case
from mesial.aligner.transforms import invert
from mesial.aligner.validate import scan_from_arrays


def test_range_bites_see_only_front_facing_surfaces_within_the_grazing_limit() -> None:
    upper, lower, arch = build_arches(4, 20_000)
    arches = [(upper.vertices, upper.faces), (lower.vertices, lower.faces)]
    rng = np.random.default_rng(0)
    right = (arch.length / 2 + 8.0, arch.length - 1.5)
    vertices, faces = range_image_bite(arches, arch, right, rng, noise_mm=0.0, spacing_mm=0.25)
    assert len(faces) > 1000
    # noise-free samples lie on the arches, on surfaces facing the buccal side
    from mesial.aligner._o3d import open3d

    o3d = open3d()
    scene = o3d.t.geometry.RaycastingScene()
    for v, f in arches:
        scene.add_triangles(v.astype(np.float32), f.astype(np.uint32))
    answer = scene.compute_closest_points(o3d.core.Tensor(vertices.astype(np.float32)))
    gap = np.linalg.norm(answer["points"].numpy() - vertices, axis=1)
    assert np.percentile(gap, 99) < 1e-3
    normals = answer["primitive_normals"].numpy()
    _, buccal = arch.frame(np.linspace(*right, 50))
    # every sample faces outwards (towards the cheek side), none more oblique than the limit to its ray
    outward = normals[:, :2] @ buccal[:, :2].mean(axis=0)
    assert np.mean(outward > -0.2) > 0.97
    assert GRAZING_DEG == 78.0
    # an irregular crop: the covered height varies along the arch
    heights = vertices[:, 2]
    assert heights.max() - heights.min() < 14.0


def test_arch_path_follows_the_buccal_outline() -> None:
    upper, lower, arch = build_arches(4, 20_000)
    path = ArchPath.from_points(np.vstack([upper.vertices, lower.vertices]))
    s = np.linspace(0.1, 0.9, 9) * path.length
    points, buccal = path.frame(s)
    truth_points, _ = arch.frame(np.linspace(0.1, 0.9, 9) * arch.length)
    # the outline lies outside the arch curve (on the buccal surfaces), a few millimetres from it
    radial = np.linalg.norm(points[:, :2] - [0, -5], axis=1) - np.linalg.norm(truth_points[:, :2] - [0, -5], axis=1)
    assert np.all(np.abs(radial) < 8.0)
    assert np.allclose(np.linalg.norm(buccal, axis=1), 1.0)
    assert buccal[len(s) // 2, 1] > 0.9  # at the front the buccal side is anterior


@pytest.mark.parametrize("one_sided", [False, True])
def test_aligner_registers_range_image_bites(one_sided: bool) -> None:
    case = generate_case(6, vertices=20_000, simulator="range", one_sided=one_sided)
    scans = [scan_from_arrays(m.vertices, m.faces, role) for m, role in ((case.upper, "upper"), (case.lower, "lower"))]
    bites = [
        scan_from_arrays(b.vertices, b.faces, role, orient=False)
        for b, role in zip(case.bites, ("bite", "bite2"), strict=False)
    ]
    result = align_scans(scans[0], scans[1], bites)
    assert result.registration is not None
    estimate = invert(result.registration.upper_to_bite) @ result.registration.lower_to_bite
    error = relative_error(estimate, invert(case.truth["upper"]) @ case.truth["lower"], case.lower.vertices)
    if result.status == "ok":
        assert float(np.sqrt(np.mean(error**2))) < 0.05
    assert result.status == "ok", result.reasons


def test_unknown_simulator_is_refused() -> None:
    with pytest.raises(ValueError, match="simulator"):
        generate_case(1, vertices=20_000, simulator="laser")
