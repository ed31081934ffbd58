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
