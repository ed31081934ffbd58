"""Parameters of the aligner: frozen, in millimetres, derived from a few scales.

The global step works on thinned arches (voxel sizes) and anatomical frames;
the fine step's gates derive from the robust residual scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class AlignParams:
    """How scans are registered and when a result is trusted.

    Every length is in millimetres.
    """

    # Global step (see docs/aligner.md). Arches are thinned to one point per
    # voxel: 1 mm for the canonical frames and the search, 0.5 mm for the short ICPs.
    frame_voxel_mm: float = 1.0
    coarse_voxel_mm: float = 0.5
    # Bite-strip search along one arch alone (its canonical frame): the strip's centre at
    # every path_step_mm of the arch's buccal outline (the outline of its points within
    # path_band_mm of the occlusal table), moved by heights_mm across the occlusal plane and
    # offsets_mm along the facing direction; the strip faces the outline's buccal direction
    # turned by turns_deg, turned about its long axis by tilts_deg, either way up.
    # probe_points bite points per pose, spread evenly; a point scores max(0, 1 - d / search_tau_mm).
    path_step_mm: float = 2.0
    path_band_mm: float = 5.0
    heights_mm: tuple[float, ...] = (-1.5, 0.0, 1.5, 3.0)
    offsets_mm: tuple[float, ...] = (-4.5, -3.0, -1.5, 0.0, 1.5)
    turns_deg: tuple[float, ...] = (-25.0, -20.0, -15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
    tilts_deg: tuple[float, ...] = (-10.0, 0.0, 10.0)
    probe_points: int = 64
    # Coarse to fine: every pose is scored on the first coarse_probes probes (farthest-point
    # order: the first ones are spread evenly too), the best rescore_share of the poses on all.
    coarse_probes: int = 24
    rescore_share: float = 0.05
    search_tau_mm: float = 1.5
    # Distinct poses of each bite refined (short ICP on that arch; half of each way up), and
    # of those the best by that arch's fit that go on to look for the other arch. (With 6 of each
    # way up, generated one-sided bites of seeds 3000 and 3001 at 60 000 vertices lost their true
    # pose on the upper: beyond the 6th distinct grid pose, though the best fit once refined.)
    # 3 paired and 5 residual candidates below (5 and 8 until 2026-12-07): the same verdicts on the
    # train split with its negatives and the quick relations, the global step about a third cheaper
    # (docs/aligner.md, "Fewer hypotheses paired").
    bite_candidates: int = 24
    paired_candidates: int = 3
    # The bite points the first arch leaves unexplained are searched for on the other arch
    # alone (its own canonical frame and outline): heights and offsets of their centre from
    # its outline; only the way up and the part of the outline that face the first arch
    # (occlusal normals opposed, anterior directions alike within facing_tolerance_deg).
    # residual_candidates distinct poses get a short ICP on that arch, the
    # residual_paired best go on to a short joint ICP.
    residual_heights_mm: tuple[float, ...] = (-6.0, -4.5, -3.0, -1.5, 0.0)
    residual_offsets_mm: tuple[float, ...] = (-3.0, -1.5, 0.0, 1.5)
    residual_candidates: int = 5
    residual_paired: int = 2
    facing_tolerance_deg: float = 35.0
    # The short ICPs of the global step use the bite thinned to this voxel size.
    icp_voxel_mm: float = 1.6
    # The bite is searched for on the upper first; when the best hypothesis then explains
    # decisive_score of its points, decisive_margin more than any distinct one, the search
    # starting from the lower is skipped.
    decisive_score: float = 0.9
    decisive_margin: float = 0.3
    # A bite point is explained by an arch within this distance when poses are compared.
    pair_distance_mm: float = 0.3
    # Two poses of a bite are the same hypothesis within these.
    distinct_rotation_deg: float = 8.0
    distinct_translation_mm: float = 3.0
    # Fine step: bite points are thinned to one per voxel of this size, sqrt(n) times
    # this with n bite scans (the same number of points in all) ...
    fine_voxel_mm: float = 0.2
    # ... but a single bite keeps about every point of a 0.15 mm scan: it holds the lower
    # arch from one side only, so its noise reaches the far side magnified (one-sided TRE
    # 0.0200 -> 0.0134 mm on the worst generated case, +0.03 s).
    one_bite_fine_voxel_mm: float = 0.1
    # Correspondences farther than this are ignored at the start of the fine
    # step; the gate shrinks to ``fine_gate_sigmas`` robust sigmas (not below the floor).
    fine_max_distance_mm: float = 1.5
    fine_gate_sigmas: float = 4.0
    fine_gate_floor_mm: float = 0.15
    # Tukey biweight constant in robust sigmas (4.685 = 95 % efficiency).
    tukey_constant: float = 4.685
    # (a cap: the plane stage stops when settled; a bite placed by its own evidence only can start
    # 0.5 mm off on the far side and then needs 20-40 iterations to slide home)
    max_iterations: int = 60
    # The fine step runs on nearest-vertex planes (cheap) until an update moves
    # the arch less than plane_threshold_mm, then at most exact_iterations on
    # exact closest points of the triangles (the nearest vertex's plane is off
    # the surface by curvature x spacing², which low-resolution arches show).
    plane_threshold_mm: float = 0.02
    exact_iterations: int = 8
    # The plane stage uses bite points thinned to this voxel size (fewer, it only has to converge).
    rough_voxel_mm: float = 0.5
    # Stop when the largest update moves no point of a 50 mm arch more than this
    # (2 µm; float32 closest-point queries leave a ~0.1 µm jitter between iterations).
    threshold_mm: float = 2e-3
    # Confidence: a bite point is explained when within this distance of an arch.
    inlier_distance_mm: float = 0.25
    min_fitness: float = 0.6
    # Two bites not confident together: bite 0 alone may stand in only when it is the stronger
    # (higher global score) and its own fit explains at least this share of its points.
    strong_bite_min_fitness: float = 0.9
    # Each arch must explain at least this share of every bite scan.
    min_arch_share: float = 0.12
    # A bite scan must span at least this along its longest principal axis: a fragment of one or
    # two teeth fits many places of an arch equally well (a 10 mm range-image fragment was placed
    # 27 mm off with fitness 0.97); buccal bite scans span canine to molar (32-62 mm on the
    # 3D-IOSSeg train constructions, generated strips alike).
    min_bite_length_mm: float = 20.0
    max_inlier_rmse_mm: float = 0.12
    # How precisely the bites must fix the lower arch relative to the upper (RMS over its vertices of the
    # standard deviation the fit's normal equations give, registration.lower_position_sd_mm): half the 0.05 mm
    # a result may be off. Right results: at most 0.010 mm on the 3D-IOSSeg train constructions (274), 0.0135
    # mm over their occlusal relations (1 617), 0.020 mm on the held-out set (235); that set's closest calls
    # (a single bite showing 14-18 % of a small upper, 0.039-0.045 mm off) 0.039-0.060 mm.
    max_lower_position_sd_mm: float = 0.025
    # The arch fitting a bite worse must stay within this factor of the other's
    # inlier RMSE (plus residual_floor_mm, for very clean scans).
    max_rmse_ratio: float = 1.5
    residual_floor_mm: float = 0.005
    # Two bites: each refined alone from the joint result (lower arch free) must place the lower
    # arch within this (RMS over its vertices, mm) of where the other alone places it. Two bites
    # each within the 0.05 mm goal agree within 0.1 mm; a second bite taken in another occlusion
    # (the lower slid 0.5 mm) passed every other check with the joint fit halfway (0.3 mm off).
    max_bite_disagreement_mm: float = 0.1
    # Margin (share of bite points) between the best and second-best pair of poses.
    min_margin: float = 0.1
    # When that margin is too small, both hypotheses are refined on the exact
    # surfaces and compared again within this distance.
    tight_distance_mm: float = 0.1
    # Recorded in result.json's params. No step draws at random (the search is exhaustive, the probe
    # points farthest-point samples), so it changes no result.
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OcclusionParams:
    """How contacts are measured and how the bite is optimised (mm)."""

    # Contact when the signed distance is below this (Medit/3Shape default 0.1 mm).
    contact_threshold_mm: float = 0.1
    # Bite optimisation removes penetration deeper than this ...
    penetration_tolerance_mm: float = 0.02
    optimise: bool = True
    # ... with a rigid correction of the lower arch no larger than these.
    max_correction_mm: float = 0.5
    max_correction_deg: float = 1.5
    optimise_iterations: int = 15
    # Upper bound on the band of lower-arch vertices the optimisation uses: every vertex closer
    # to the upper than min(this, contact threshold + occlusion.REACH_MM) takes part (all of
    # them, so which ones does not depend on the vertex order).
    optimise_band_mm: float = 0.6
    # Share of the arch depth (from the front) counted as the anterior region.
    anterior_share: float = 0.3

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
