"""The aligner's typed errors (the scan input errors live in :mod:`mesial.common.errors`,
shared with the API's upload check, and are re-exported here).

::

    MesialError
    ├── InputError (ValueError)
    │   ├── ScanInputError            a scan file or array refused before any work
    │   │   ├── ScanTooLarge          file size or triangle count over the limit
    │   │   ├── UnsupportedScanFormat not STL (binary/ASCII), PLY or OBJ
    │   │   ├── CorruptScan           truncated, malformed (line named), NaN/inf
    │   │   ├── EmptyScan             no usable triangle
    │   │   ├── ImplausibleScale      not the size of a dental scan in millimetres
    │   │   └── NotADentalArch        an arch too small, too sparse, too flat or not U-shaped
    │   └── InvalidScanShape          an array that is not (n, 3) / (m, 3)
    └── AlignmentError                registration could not run to an answer
"""

from __future__ import annotations

from mesial.common.errors import (
    CorruptScan,
    EmptyScan,
    ImplausibleScale,
    InputError,
    MesialError,
    NotADentalArch,
    ScanInputError,
    ScanTooLarge,
    UnsupportedScanFormat,
)

__all__ = [
    "AlignmentError",
    "CorruptScan",
    "EmptyScan",
    "ImplausibleScale",
    "InvalidScanShape",
    "NotADentalArch",
    "ScanInputError",
    "ScanTooLarge",
    "UnsupportedScanFormat",
]


class InvalidScanShape(InputError):
    """An array argument that does not have the documented shape."""


class AlignmentError(MesialError):
    """Registration could not produce an answer (not the same as a non-confident answer)."""
