"""Parameters of the aligner: frozen, in millimetres, derived from a few scales.

As in Open3D's registration examples, the global step's radii derive from one
voxel size (normals 2x, features 5x, inlier distance 1.5x), and the fine step
from the scanner's noise level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class AlignParams:
    """How scans are registered and when a result is trusted.

    Every length is in millimetres.
    """

    # Global step: voxel of the downsampled clouds. 1 mm keeps cusps and
    # embrasures (1.5-3 mm features) while an arch drops to ~5 000 points.
    global_voxel_mm: float = 1.0
    # Normal radius = 2 voxels, FPFH radius = 5 voxels (Open3D's tutorial values).
    normal_radius_factor: float = 2.0
    feature_radius_factor: float = 5.0
    # A feature correspondence agrees with a hypothesis within 1.5 voxels.
    distance_factor: float = 1.5
    # Arch wall points tried as the bite's anchor, one per cube of this size.
    anchor_spacing_mm: float = 2.5
    # Tilts about the anchor normal tried for each anchor (degrees).
    anchor_tilts_deg: tuple[float, ...] = (-12.0, 0.0, 12.0)
    # Bite points used to score each pose (a seeded random subset).
    score_points: int = 150
    # The two halves of a bite scan across its height leave out this band (mm)
    # around the median height, where the arches meet.
    half_gap_mm: float = 0.5
    # Best hypotheses kept for evaluation, and how different two must be to count
    # as distinct (rotation degrees, translation of the bite centre mm).
    hypotheses: int = 4
    # Hypotheses per arch refined by a short ICP (iterations) and paired.
    refined_hypotheses: int = 3
    coarse_iterations: int = 12
    # A bite point is explained by an arch pose within this distance (pairing).
    pair_distance_mm: float = 0.4
    distinct_rotation_deg: float = 5.0
    distinct_translation_mm: float = 2.0
    # Fine step: bite points are thinned to one per voxel of this size.
    fine_voxel_mm: float = 0.25
    # Correspondences farther than this are ignored at the start of the fine
    # step; the gate shrinks to ``fine_gate_sigmas`` robust sigmas (not below the floor).
    fine_max_distance_mm: float = 1.5
    fine_gate_sigmas: float = 4.0
    fine_gate_floor_mm: float = 0.15
    # Tukey biweight constant in robust sigmas (4.685 = 95 % efficiency).
    tukey_constant: float = 4.685
    max_iterations: int = 40
    # Stop when the largest update moves no point of a 50 mm arch more than this.
    threshold_mm: float = 1e-5
    # Confidence: a bite point is explained when within this distance of an arch.
    inlier_distance_mm: float = 0.25
    min_fitness: float = 0.6
    # Each arch must explain at least this share of every bite scan.
    min_arch_share: float = 0.12
    max_inlier_rmse_mm: float = 0.12
    # Margin (share of bite points) between the best and second-best pair of poses.
    min_margin: float = 0.1
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
    # Share of the arch depth (from the front) counted as the anterior region.
    anterior_share: float = 0.3

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
