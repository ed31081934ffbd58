"""Unit conversion for scans.

Mesial works in millimetres. A scan exported in metres or inches is refused by
validation with the likely unit named; it is rescaled only when the caller asks. The
unit table and the dental size bounds live in :mod:`mesial.common.meshformat` (the API's
upload check uses them too) and are re-exported here.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from mesial.common.meshformat import DENTAL_EXTENT_MM, TO_MILLIMETRES, guess_unit, unit_conversion

__all__ = ["DENTAL_EXTENT_MM", "TO_MILLIMETRES", "guess_unit", "to_millimetres", "unit_conversion"]


def to_millimetres(vertices: NDArray[np.float64], unit: str) -> NDArray[np.float64]:
    """Vertices ``(n, 3)`` in ``unit`` converted to millimetres (a new array)."""
    return np.asarray(vertices, dtype=np.float64) * unit_conversion(unit, "mm")
