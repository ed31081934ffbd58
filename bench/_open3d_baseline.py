"""Open3D's standard registration pipeline on a bite case, as the aligner benchmark's baseline.

The recipe is Open3D's registration tutorial (``pipelines/global_registration`` and
``icp_registration``): voxel downsampling, normals, FPFH, RANSAC on FPFH matches
(or Fast Global Registration), point-to-plane ICP; a bite scan against each arch,
the lower pose relative to the upper follows from the two (``upper @ inv(lower)``
of the two bite -> arch transforms).

Configurations the benchmark runs (see ``bench_aligner.py``'s docstring for why):

* :data:`TUTORIAL`: the tutorial as written, voxel 1 mm, the first bite scan.
* :data:`STRONGEST`: the most favourable configuration of the same recipe found by
  the study behind the benchmark on generated cases: mutual filter, 4 million RANSAC
  iterations at 0.9999 confidence, coarse-to-fine point-to-plane ICP with a Tukey
  kernel, run on every bite scan and ranked by the ICP fits (no ground truth).
* :data:`FINE`: the tutorial with a 0.5 mm voxel (so FPFH radius 2.5 mm, RANSAC and ICP
  distances 0.75 and 0.2 mm), the first bite scan. On real anatomy (3D-IOSSeg arches)
  it registers about half of the two-bite cases and a few one-sided ones, where no 1 mm
  configuration registers any (docs/aligner.md, "On real anatomy"); on generated arches
  none.
* :data:`FINE_STRONGEST`: :data:`STRONGEST`'s search at a 0.5 mm voxel. On the 36
  real strip-bite cases of that study it registers 25 (within 0.05 mm; issue 10's reviewer
  counted 24/36 for Open3D), at several times :data:`FINE`'s cost.
* :func:`icp_from_truth`: not a baseline (it starts from the true poses): what
  Open3D's local stage reaches, and costs, given a perfect global step.

Every function returns its own wall and CPU time (the process's CPU time: Open3D's
worker threads count).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mesial.aligner._o3d import open3d
from mesial.aligner.transforms import invert

FloatArray = NDArray[np.float64]
# (voxel mm, correspondence distance mm): the coarse-to-fine ICP of the strongest configuration
MULTISCALE_ICP = ((1.0, 1.0), (0.5, 0.4), (0.25, 0.15))
# ICP from the truth: voxel 0.5 mm, 0.2 mm, Tukey kernel (the best of the schedules tried from the truth)
TRUTH_ICP = ((0.5, 0.2),)


@dataclass(frozen=True)
class Config:
    """One configuration of the recipe (the defaults are the tutorial's)."""

    name: str
    voxel: float = 1.0
    normal_radius: float = 2.0  # x voxel
    feature_radius: float = 5.0  # x voxel
    mutual_filter: bool = True
    ransac_n: int = 3
    iterations: int = 100_000
    confidence: float = 0.999
    edge_length: float = 0.9
    distance: float = 1.5  # x voxel: RANSAC inlier distance and distance checker
    every_bite: bool = False  # False: the first bite scan only
    multiscale_icp: bool = False  # False: the tutorial's ICP (0.4 voxel, point-to-plane, no kernel)


TUTORIAL = Config("tutorial (1 mm voxel, first bite)")
STRONGEST = Config(
    "strongest (1 mm, mutual, 4M it. at 0.9999, coarse-to-fine Tukey ICP, every bite)",
    iterations=4_000_000,
    confidence=0.9999,
    every_bite=True,
    multiscale_icp=True,
)
FINE = Config("voxel 0.5 mm (else the tutorial), first bite", voxel=0.5)
FINE_STRONGEST = Config(
    "voxel 0.5 mm, the strongest's search (4M it. at 0.9999, coarse-to-fine Tukey ICP, every bite)",
    voxel=0.5,
    iterations=4_000_000,
    confidence=0.9999,
    every_bite=True,
    multiscale_icp=True,
)


@dataclass
class Outcome:
    """Lower-to-upper estimate(s) of one configuration on one case."""

    pose: FloatArray  # the one a user would pick (best ICP fit)
    candidates: list[tuple[str, float, FloatArray]]  # (bite role, badness, pose), one per bite scan tried
    wall: float
    cpu: float


class _Clouds:
    """Each file read once, downsampled and given normals once per voxel size."""

    def __init__(self, o3d: Any, paths: dict[str, Path], normal_radius: float) -> None:
        self._o3d, self._paths, self._normal_radius = o3d, paths, normal_radius
        self._raw: dict[str, Any] = {}
        self._down: dict[tuple[str, float], Any] = {}

    def get(self, role: str, voxel: float) -> Any:
        if (role, voxel) not in self._down:
            if role not in self._raw:
                mesh = self._o3d.io.read_triangle_mesh(str(self._paths[role]))
                self._raw[role] = self._o3d.geometry.PointCloud(mesh.vertices)
            down = self._raw[role].voxel_down_sample(voxel)
            search = self._o3d.geometry.KDTreeSearchParamHybrid(radius=self._normal_radius * voxel, max_nn=30)
            down.estimate_normals(search)
            self._down[(role, voxel)] = down
        return self._down[(role, voxel)]


def _icp(o3d: Any, source: Any, target: Any, distance: float, start: FloatArray, tukey: bool) -> Any:
    reg = o3d.pipelines.registration
    if not tukey:  # the tutorial's
        return reg.registration_icp(source, target, distance, start, reg.TransformationEstimationPointToPlane())
    estimation = reg.TransformationEstimationPointToPlane(reg.TukeyLoss(k=distance / 2))
    return reg.registration_icp(source, target, distance, start, estimation, reg.ICPConvergenceCriteria(1e-7, 1e-7, 30))


def _bite_to_arch(o3d: Any, clouds: _Clouds, bite: str, arch: str, features: dict[str, Any], config: Config) -> Any:
    """RANSAC on FPFH matches, then ICP: the final ICP result (bite -> arch)."""
    reg = o3d.pipelines.registration
    voxel = config.voxel
    distance = config.distance * voxel
    source, target = clouds.get(bite, voxel), clouds.get(arch, voxel)
    ransac = reg.registration_ransac_based_on_feature_matching(
        source, target, features[bite], features[arch], config.mutual_filter, distance,
        reg.TransformationEstimationPointToPoint(False), config.ransac_n,
        [reg.CorrespondenceCheckerBasedOnEdgeLength(config.edge_length),
         reg.CorrespondenceCheckerBasedOnDistance(distance)],
        reg.RANSACConvergenceCriteria(config.iterations, config.confidence),
    )  # fmt: skip
    if not config.multiscale_icp:
        return _icp(o3d, source, target, 0.4 * voxel, np.asarray(ransac.transformation), tukey=False)
    pose = np.asarray(ransac.transformation)
    for level_voxel, level_distance in MULTISCALE_ICP:
        fit = _icp(o3d, clouds.get(bite, level_voxel), clouds.get(arch, level_voxel), level_distance, pose, tukey=True)
        pose = np.asarray(fit.transformation)
    return fit


def register(paths: dict[str, Path], config: Config) -> Outcome:
    """The recipe in ``config`` on one case's files (read from disk inside the timing)."""
    o3d = open3d()  # typed Any: Open3D's stubs lack its defaults
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)  # "too few mutual matches": every case
    reg = o3d.pipelines.registration
    start, cpu_start = time.perf_counter(), time.process_time()
    clouds = _Clouds(o3d, paths, config.normal_radius)
    roles: tuple[str, ...] = ("bite", "bite2")
    bites = [role for role in roles if role in paths][: None if config.every_bite else 1]
    search = o3d.geometry.KDTreeSearchParamHybrid(radius=config.feature_radius * config.voxel, max_nn=100)
    features = {role: reg.compute_fpfh_feature(clouds.get(role, config.voxel), search)
                for role in ("upper", "lower", *bites)}  # fmt: skip
    candidates: list[tuple[str, float, FloatArray]] = []
    for bite in bites:
        fits = {arch: _bite_to_arch(o3d, clouds, bite, arch, features, config) for arch in ("upper", "lower")}
        # what a user without ground truth can rank by: ICP inlier RMSE / fitness, summed over the arches
        badness = sum(f.inlier_rmse / f.fitness if f.fitness > 0 else np.inf for f in fits.values())
        pose = np.asarray(fits["upper"].transformation) @ invert(np.asarray(fits["lower"].transformation))
        candidates.append((bite, float(badness), pose))
    best = min(candidates, key=lambda item: item[1])[2]
    return Outcome(best, candidates, time.perf_counter() - start, time.process_time() - cpu_start)


def icp_from_truth(paths: dict[str, Path], bite_to_arch: dict[str, FloatArray]) -> Outcome:
    """Open3D's point-to-plane ICP (Tukey kernel) started at the true bite -> arch poses (first bite).

    Not a baseline: it is given the answer. It measures the local stage alone: the
    TRE it keeps (the bite's other-arch half and the downsampling bias pull it off
    the truth) and its time (a lower bound for any pipeline that ends with it).
    """
    o3d = open3d()
    start, cpu_start = time.perf_counter(), time.process_time()
    clouds = _Clouds(o3d, paths, 2.0)
    poses = {}
    for arch in ("upper", "lower"):
        pose = bite_to_arch[arch]
        for voxel, distance in TRUTH_ICP:
            fit = _icp(o3d, clouds.get("bite", voxel), clouds.get(arch, voxel), distance, pose, tukey=True)
            pose = np.asarray(fit.transformation)
        poses[arch] = pose
    estimate = poses["upper"] @ invert(poses["lower"])
    return Outcome(estimate, [("bite", 0.0, estimate)], time.perf_counter() - start, time.process_time() - cpu_start)
