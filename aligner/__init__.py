"""The aligner: mesh I/O, bite registration, occlusal analysis and reports (pure library).

Its linear algebra runs on one BLAS thread (:func:`.pipeline.one_blas_thread`). Unless the process
has chosen (``OPENBLAS_NUM_THREADS`` set) or NumPy is already loaded, OpenBLAS is started with one
thread: the others it would start at NumPy's import cost about 50 ms of CPU there (they spin before
they sleep) and would never run an aligner product.
"""

import os
import sys

if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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
