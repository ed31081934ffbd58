"""``_kdtree.py``: SciPy's compiled k-d tree without the rest of ``scipy.spatial``."""

from __future__ import annotations

import subprocess
import sys


def test_the_tree_is_scipys_and_the_package_still_imports_after_it() -> None:
    code = """
import sys
import numpy as np
from mesial.aligner._kdtree import cKDTree, tree_class
points = np.random.default_rng(0).normal(size=(2000, 3))
tree = cKDTree(points, leafsize=32)
assert "scipy.spatial" not in sys.modules and "scipy.spatial._qhull" not in sys.modules
distance, index = tree.query(points[:5] + 0.01, distance_upper_bound=0.5)
import scipy.spatial  # later users of the package get the same, already loaded class
assert scipy.spatial.cKDTree is tree_class()
expected = scipy.spatial.cKDTree(points).query(points[:5] + 0.01, distance_upper_bound=0.5)
assert np.array_equal(distance, expected[0]) and np.array_equal(index, expected[1])
print("ok")
"""
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_sparse_and_array_api_modules_are_not_loaded_and_still_work_later() -> None:
    code = """
import sys
import numpy as np
from mesial.aligner._kdtree import cKDTree
points = np.random.default_rng(0).normal(size=(500, 3))
tree = cKDTree(points, copy_data=True)
# loaded by the extension's initialisation otherwise (0.1-0.15 s): stood in for, and gone again
assert not any(m == "scipy.sparse" or m.startswith("scipy.sparse.") for m in sys.modules)
assert "scipy._lib._util" not in sys.modules and "scipy._lib._array_api" not in sys.modules
import scipy._lib
assert "sparse" not in vars(sys.modules["scipy"]) and "_util" not in vars(scipy._lib)
matrix = tree.sparse_distance_matrix(tree, 0.3)  # finds the real scipy.sparse when called
import scipy.sparse
from scipy._lib._util import copy_if_needed
assert isinstance(matrix, scipy.sparse.dok_matrix) and matrix.shape == (500, 500)
print("ok")
"""
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
