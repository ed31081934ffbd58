"""Open3D, imported on first use and typed as ``Any`` (its stubs lack the defaults it has)."""

from __future__ import annotations

import importlib
from typing import Any


def open3d() -> Any:
    """The ``open3d`` module (heavy: imported only when a function needs it)."""
    return importlib.import_module("open3d")
