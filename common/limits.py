"""The aligner's input limits, readable without loading the settings' models.

``mesial align`` needs two numbers from the settings (``aligner.max_scan_bytes`` and
``aligner.max_triangles``); building the whole settings object imports pydantic and
pydantic-settings, about 0.2 s of a two-second process. :func:`aligner_limits` builds it
only when something could change those numbers (a ``MESIAL_ALIGNER...`` variable or a
``.env`` file, the sources :class:`mesial.common.settings.Settings` reads); otherwise the
defaults below, which the settings use too, are the answer.
"""

from __future__ import annotations

import os
from pathlib import Path

# Refuse mesh files larger than this before reading them (bytes).
MAX_SCAN_BYTES = 512 << 20
# Refuse meshes with more triangles than this.
MAX_TRIANGLES = 5_000_000
ENV_PREFIX = "MESIAL_ALIGNER"  # the settings' prefix and field name (case-insensitive, as the settings read it)


def aligner_limits() -> tuple[int, int]:
    """``(max_scan_bytes, max_triangles)`` as the settings give them."""
    if Path(".env").exists() or any(name.upper().startswith(ENV_PREFIX) for name in os.environ):
        from mesial.common.settings import get_settings

        limits = get_settings().aligner
        return limits.max_scan_bytes, limits.max_triangles
    return MAX_SCAN_BYTES, MAX_TRIANGLES
