"""Unit conversion for scans: the only place where lengths change unit.

Mesial works in millimetres. A scan exported in metres or inches is refused by
validation with the likely unit named; it is rescaled only when the caller asks.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

# Millimetres per unit.
TO_MILLIMETRES: dict[str, float] = {
    "mm": 1.0,
    "millimetres": 1.0,
    "cm": 10.0,
    "m": 1000.0,
    "metres": 1000.0,
    "in": 25.4,
    "inches": 25.4,
    "um": 1e-3,
}

# A dental scan (one arch, or a buccal bite patch) has a bounding-box diagonal
# within these bounds, in millimetres.
DENTAL_EXTENT_MM: tuple[float, float] = (5.0, 120.0)


def unit_conversion(current: str, desired: str = "mm") -> float:
    """Factor that converts lengths from ``current`` to ``desired`` units.

    Parameters
    ----------
    current, desired : str
        Unit names from :data:`TO_MILLIMETRES`.

    Returns
    -------
    factor : float
        Multiply a length in ``current`` units by this to get ``desired`` units.
    """
    try:
        return TO_MILLIMETRES[current] / TO_MILLIMETRES[desired]
    except KeyError as exc:
        raise ValueError(f"unknown unit {exc.args[0]!r}; known: {sorted(TO_MILLIMETRES)}") from None


def guess_unit(extent: float) -> str | None:
    """The unit a scan of this bounding-box diagonal was most likely written in.

    Parameters
    ----------
    extent : float
        Bounding-box diagonal of the scan in file units.

    Returns
    -------
    unit : str or None
        ``"mm"`` when plausible as it is, ``"m"``, ``"cm"`` or ``"in"`` when the
        scan becomes plausible in that unit, ``None`` when nothing fits.
    """
    low, high = DENTAL_EXTENT_MM
    for unit in ("mm", "m", "in", "cm", "um"):
        if low <= extent * TO_MILLIMETRES[unit] <= high:
            return unit
    return None


def to_millimetres(vertices: NDArray[np.float64], unit: str) -> NDArray[np.float64]:
    """Vertices ``(n, 3)`` in ``unit`` converted to millimetres (a new array)."""
    return np.asarray(vertices, dtype=np.float64) * unit_conversion(unit, "mm")
