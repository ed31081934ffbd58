"""SciPy's compiled k-d tree, loaded without the rest of ``scipy.spatial``.

``from scipy.spatial import cKDTree`` runs the package's ``__init__``, which imports
Qhull, the distance functions, ``scipy.special``, ``scipy.linalg`` and the rotations
(about 0.2 s of a ``mesial align`` process on a 2-core machine); the aligner uses the
k-d tree alone. :func:`cKDTree` loads only the extension ``scipy.spatial._ckdtree``
(the same class the package re-exports), and falls back to the package import when
that is not possible. A later ``import scipy.spatial`` elsewhere (tests, the benchmark)
still works: the package finds its extension already loaded.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_tree_class: Any = None
_loading = threading.Lock()  # two threads must not load the extension twice
NAME = "scipy.spatial._ckdtree"


def cKDTree(*args: Any, **kwargs: Any) -> Any:
    """``scipy.spatial.cKDTree(*args, **kwargs)``."""
    return tree_class()(*args, **kwargs)


def tree_class() -> Any:
    """The ``cKDTree`` class of ``scipy.spatial._ckdtree``."""
    global _tree_class
    if _tree_class is None:
        with _loading:
            if _tree_class is None:
                module = sys.modules.get(NAME) or _load_extension()
                if module is None:
                    from scipy.spatial import cKDTree as tree

                    _tree_class = tree
                else:
                    _tree_class = module.cKDTree
    return _tree_class


def _load_extension() -> Any:
    scipy = importlib.util.find_spec("scipy")
    if scipy is None or scipy.origin is None:
        return None
    folder = Path(scipy.origin).parent / "spatial"
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / f"_ckdtree{suffix}"
        if path.is_file():
            break
    else:
        return None
    spec = importlib.util.spec_from_file_location(NAME, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    try:
        with _stand_ins():
            spec.loader.exec_module(module)
    except (ImportError, AttributeError):  # (a SciPy that needs more of the stood-in modules)
        del sys.modules[NAME]
        return None
    return module


@contextlib.contextmanager
def _stand_ins() -> Iterator[None]:
    """``scipy.sparse`` and ``scipy._lib._util``, when not imported yet, stood in for while the block runs."""
    import numpy as np

    importlib.import_module("scipy._lib")  # the stand-ins' parents (light: no submodule of scipy is loaded)

    # scipy._lib._util's value: NumPy 2 takes copy=None for "copy only if needed", NumPy 1 False
    util = types.ModuleType("scipy._lib._util")
    util.__dict__["copy_if_needed"] = None if int(np.__version__.split(".")[0]) >= 2 else False
    candidates = {"scipy.sparse": types.ModuleType("scipy.sparse"), "scipy._lib._util": util}
    stand_ins = {name: module for name, module in candidates.items() if name not in sys.modules}
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
            parent, _, child = name.rpartition(".")
            if vars(sys.modules[parent]).get(child) is stand_in:  # (an import may have bound it there)
                delattr(sys.modules[parent], child)
