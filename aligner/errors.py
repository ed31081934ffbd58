"""The aligner's typed errors.

::

    MesialError
    ├── InputError (ValueError)
    │   └── ScanInputError            a scan file or array refused before any work
    │       ├── ScanTooLarge          file size or triangle count over the limit
    │       ├── UnsupportedScanFormat not STL (binary/ASCII), PLY or OBJ
    │       ├── CorruptScan           truncated, unparsable, inconsistent, NaN/inf
    │       ├── EmptyScan             no usable triangle
    │       └── ImplausibleScale      not the size of a dental arch in millimetres
    │   └── InvalidScanShape          an array that is not (n, 3) / (m, 3)
    └── AlignmentError                registration could not run to an answer
"""

from __future__ import annotations

from mesial.common.errors import InputError, MesialError


class ScanInputError(InputError):
    """A scan refused before any work, with the reason and the scan's role."""

    def __init__(self, reason: str, role: str = "") -> None:
        self.reason = reason
        self.role = role
        super().__init__(reason, role)

    def __str__(self) -> str:
        return f"{self.role} scan: {self.reason}" if self.role else self.reason


class ScanTooLarge(ScanInputError):
    """The file or its triangle count exceeds the configured limit."""


class UnsupportedScanFormat(ScanInputError):
    """The file is not an STL (binary or ASCII), PLY or OBJ mesh."""


class CorruptScan(ScanInputError):
    """Truncated, unparsable or inconsistent data, or non-finite coordinates."""


class EmptyScan(ScanInputError):
    """No usable triangle after cleaning."""


class ImplausibleScale(ScanInputError):
    """The bounding box is not that of a dental scan in millimetres."""

    def __init__(self, reason: str, role: str = "", suggested_unit: str | None = None) -> None:
        self.suggested_unit = suggested_unit
        super().__init__(reason, role)


class InvalidScanShape(InputError):
    """An array argument that does not have the documented shape."""


class AlignmentError(MesialError):
    """Registration could not produce an answer (not the same as a non-confident answer)."""
