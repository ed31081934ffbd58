"""Files read and hashed ahead (``_prefetch.FilePrefetch``): the same mesh, digest and errors as reading them then."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mesial.aligner._prefetch import FilePrefetch
from mesial.aligner.errors import CorruptScan, ScanTooLarge
from mesial.aligner.io import read_mesh, write_stl
from mesial.aligner.pipeline import align_scans

from .conftest import grid_plane

LIMITS: dict[str, Any] = {"max_bytes": 50 << 20, "max_triangles": 1_000_000}


@pytest.fixture
def plane_file(tmp_path: Path) -> Path:
    vertices, faces = grid_plane(20.0, 1.0)
    write_stl(tmp_path / "p.stl", vertices, faces)
    return tmp_path / "p.stl"


def test_a_prefetched_file_is_the_file_read_then(plane_file: Path) -> None:
    prefetched = FilePrefetch([plane_file], LIMITS["max_bytes"])
    ahead = read_mesh(plane_file, **LIMITS, prefetched=prefetched)
    now = read_mesh(plane_file, **LIMITS)
    assert ahead.sha256 == now.sha256 == hashlib.sha256(plane_file.read_bytes()).hexdigest()
    assert ahead.file_format == now.file_format and ahead.size_bytes == now.size_bytes
    assert np.array_equal(ahead.vertices, now.vertices) and np.array_equal(ahead.faces, now.faces)


def test_each_file_is_handed_over_once_and_only_if_unchanged(plane_file: Path, tmp_path: Path) -> None:
    prefetched = FilePrefetch([plane_file], LIMITS["max_bytes"])
    data = plane_file.read_bytes()
    assert prefetched.take(plane_file, plane_file.stat()) == (data, hashlib.sha256(data).hexdigest())
    assert prefetched.take(plane_file, plane_file.stat()) is None  # once (its memory is let go)
    assert prefetched.take(tmp_path / "other.stl", plane_file.stat()) is None  # not one of its files

    prefetched = FilePrefetch([plane_file], LIMITS["max_bytes"])
    prefetched.ready()
    before = plane_file.stat()
    smaller, faces = grid_plane(10.0, 1.0)
    write_stl(plane_file, smaller, faces)  # another mesh in the file after it was read
    os.utime(plane_file, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    # not handed over: read_mesh reads the file as it is now
    assert len(read_mesh(plane_file, **LIMITS, prefetched=prefetched).faces) == len(faces)


def test_files_it_does_not_read_are_read_and_refused_as_before(plane_file: Path, tmp_path: Path) -> None:
    small = plane_file.stat().st_size - 1
    prefetched = FilePrefetch([plane_file, tmp_path / "missing.stl", tmp_path], small)
    assert prefetched.take(plane_file, plane_file.stat()) is None  # above its limit: not read
    assert prefetched.take(tmp_path, tmp_path.stat()) is None  # not a regular file
    prefetched = FilePrefetch([plane_file, tmp_path / "missing.stl"], small)
    with pytest.raises(ScanTooLarge, match="the limit is"):
        read_mesh(plane_file, max_bytes=small, max_triangles=1_000_000, prefetched=prefetched)
    with pytest.raises(CorruptScan, match=r"cannot read missing\.stl"):
        read_mesh(tmp_path / "missing.stl", **LIMITS, prefetched=prefetched)
    (tmp_path / "cut.stl").write_bytes(plane_file.read_bytes()[:-7])
    prefetched = FilePrefetch([tmp_path / "cut.stl"], LIMITS["max_bytes"])
    with pytest.raises(CorruptScan, match="truncated"):  # the parser's own checks on the bytes it hands over
        read_mesh(tmp_path / "cut.stl", **LIMITS, prefetched=prefetched)


def test_the_pipeline_reads_prefetched_files(tmp_path: Path, small_case: Any) -> None:
    paths = []
    for name, mesh in (("upper", small_case.upper), ("lower", small_case.lower), ("bite", small_case.bites[0])):
        write_stl(tmp_path / f"{name}.stl", mesh.vertices, mesh.faces)
        paths.append(tmp_path / f"{name}.stl")
    prefetched = FilePrefetch(paths, LIMITS["max_bytes"])
    taken = []
    take = prefetched.take

    def counted(path: Any, status: os.stat_result) -> Any:
        answer = take(path, status)
        taken.append(answer is not None)
        return answer

    prefetched.take = counted  # type: ignore[method-assign]
    ahead = align_scans(paths[0], paths[1], [paths[2]], **LIMITS, prefetched=prefetched)
    now = align_scans(paths[0], paths[1], [paths[2]], **LIMITS)
    assert taken == [True, True, True]
    assert ahead.status == now.status and ahead.reasons == now.reasons
    for role, scan in now.scans.items():
        assert ahead.scans[role].sha256 == scan.sha256
        assert np.array_equal(ahead.scans[role].vertices, scan.vertices)
    assert ahead.upper_to_bite is not None and now.upper_to_bite is not None
    assert np.array_equal(ahead.upper_to_bite, now.upper_to_bite)


def test_the_align_command_module_does_not_import_numpy() -> None:
    # mesial align starts its prefetch before NumPy and the pipeline are imported (the package's names are lazy)
    code = "import sys, mesial.aligner.cli; print('numpy' in sys.modules, 'mesial.aligner.pipeline' in sys.modules)"
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
    code = (
        "import mesial.aligner as a; print(a.align_scans.__module__, a.Scan.__module__, set(a.__all__) <= set(dir(a)))"
    )
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["mesial.aligner.pipeline", "mesial.aligner.validate", "True"]
