"""The aligner: mesh I/O, bite registration, occlusal analysis and reports (pure library).

Its linear algebra runs on one BLAS thread (:func:`.pipeline.one_blas_thread`). Unless the process
has chosen (``OPENBLAS_NUM_THREADS`` set) or NumPy is already loaded, OpenBLAS is started with one
thread: the others it would start at NumPy's import cost about 50 ms of CPU there (they spin before
they sleep) and would never run an aligner product.

The public names below are imported on first use (PEP 562): importing a submodule such as
:mod:`.cli` does not import NumPy and the pipeline, so ``mesial align`` can start reading its files
(:mod:`._prefetch`) while it imports them.
"""

import os
import sys
from importlib import import_module
from typing import TYPE_CHECKING, Any

if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

if TYPE_CHECKING:
    from mesial.aligner.params import AlignParams, OcclusionParams
    from mesial.aligner.pipeline import AlignmentResult, align_scans
    from mesial.aligner.validate import Scan, load_scan, scan_from_arrays

# public name -> the module that defines it
_EXPORTS = {
    "AlignParams": "mesial.aligner.params",
    "OcclusionParams": "mesial.aligner.params",
    "AlignmentResult": "mesial.aligner.pipeline",
    "align_scans": "mesial.aligner.pipeline",
    "Scan": "mesial.aligner.validate",
    "load_scan": "mesial.aligner.validate",
    "scan_from_arrays": "mesial.aligner.validate",
}

__all__ = [
    "AlignParams",
    "AlignmentResult",
    "OcclusionParams",
    "Scan",
    "align_scans",
    "load_scan",
    "scan_from_arrays",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once: later look-ups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
