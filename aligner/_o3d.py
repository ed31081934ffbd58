"""Open3D's compiled core, loaded on first use and typed as ``Any`` (its stubs lack the defaults it has).

``import open3d`` runs the package's ``__init__``, which also imports its visualization
(Plotly and Dash: about 1.7 s of a 3 s import on a loaded 2-core machine) and its ML
modules; the aligner uses none of them. :func:`open3d` loads only the compiled extension
``open3d.pybind`` (the same ``core``, ``t``, ``geometry``, ``pipelines``, ``io`` and
``utility`` modules the package re-exports, with the environment the package's
``__init__`` sets for it), and falls back to the full import if that is not possible.
A later ``import open3d`` elsewhere (the benchmark's Open3D baseline) still works: the
package finds its extension already loaded.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import threading
from pathlib import Path
from typing import Any

_core: Any = None
_loading = threading.Lock()  # two threads must not load the extension twice


def open3d() -> Any:
    """Open3D's compiled core (``open3d.pybind``), or the full package when that cannot be loaded alone."""
    global _core
    if _core is None:
        with _loading:
            if _core is None:
                _core = sys.modules.get("open3d.pybind") or _load_core() or importlib.import_module("open3d")
    return _core


def _load_core() -> Any:
    package = importlib.util.find_spec("open3d")
    if package is None or package.origin is None:
        return None
    folder = Path(package.origin).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / f"pybind{suffix}"
        if path.is_file():
            break
    else:
        return None
    os.environ.setdefault("TCM_ENABLE", "1")  # as open3d/__init__.py sets before loading it
    spec = importlib.util.spec_from_file_location("open3d.pybind", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules["open3d.pybind"] = module
    try:
        spec.loader.exec_module(module)
    except ImportError:
        del sys.modules["open3d.pybind"]
        return None
    return module
