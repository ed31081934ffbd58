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
    # Bite-strip search: facing directions every psi_step_deg, positions along
    # the arch (half range, step), heights across the occlusal plane and
    # offsets along the strip normal (mm); probe points per pose; a point scores
    # max(0, 1 - d / search_tau_mm).
    psi_step_deg: float = 5.0
    along_mm: tuple[float, float] = (18.0, 2.5)
    heights_mm: tuple[float, ...] = (-1.5, 0.0, 1.5)
    offsets_mm: tuple[float, ...] = (-1.0, 0.5)
    probe_points: int = 64
    search_tau_mm: float = 1.0
    # Distinct poses of each bite refined (short ICP on the upper), and of those
    # the best by upper fit that go on to place the lower arch.
    bite_candidates: int = 12
    paired_candidates: int = 5
    # Lower-arch grid around its canonical pose: (half range, step) per axis.
    lower_yaw_deg: tuple[float, float] = (4.0, 2.0)
    lower_x_mm: tuple[float, float] = (2.0, 1.0)
    lower_y_mm: tuple[float, float] = (3.0, 1.0)
    lower_z_mm: tuple[float, float] = (3.0, 1.0)
    residual_points: int = 200
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
    max_iterations: int = 20
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
    max_inlier_rmse_mm: float = 0.12
    # The arch fitting a bite worse must stay within this factor of the other's
    # inlier RMSE (plus residual_floor_mm, for very clean scans).
    max_rmse_ratio: float = 1.5
    residual_floor_mm: float = 0.005
    # Margin (share of bite points) between the best and second-best pair of poses.
    min_margin: float = 0.1
    # When that margin is too small, both hypotheses are refined on the exact
    # surfaces and compared again within this distance.
    tight_distance_mm: float = 0.1
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
    # Points within this distance of the antagonist take part in the optimisation.
    optimise_band_mm: float = 0.6
    # At most about this many of them besides the penetrating ones (evenly spaced).
    optimise_points: int = 3000
    # Share of the arch depth (from the front) counted as the anterior region.
    anterior_share: float = 0.3

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
