"""The aligner: mesh I/O, bite registration, occlusal analysis and reports (pure library)."""

from mesial.aligner.params import AlignParams, OcclusionParams
from mesial.aligner.pipeline import AlignmentResult, align_scans
from mesial.aligner.validate import Scan, load_scan, scan_from_arrays

__all__ = [
    "AlignParams",
    "AlignmentResult",
    "OcclusionParams",
    "Scan",
    "align_scans",
    "load_scan",
    "scan_from_arrays",
]
