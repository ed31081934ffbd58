"""Build a folder of real arch pairs ``NNN_U.ply`` / ``NNN_L.ply`` from arches of *different* patients.

    python bench/heldout_pairs.py --upper U1.vtp U2.obj ... --lower L1.ply ... --out DIR [--start 101]

For an independent held-out check of the aligner (``bench_aligner.py --real DIR``, or
``_real_cases.occlude`` in-process) on real scans the project was never tuned on, when the
public sources hold upper arches without their patient's lower (docs/aligner.md, "Independent
held-out set"). Each upper is seated on a lower of another patient of similar size: the pairing
minimises, over all uppers at once (an assignment, each lower used at most once), the difference
of the occlusal tables' width plus half the difference of their depth (``crown_span``). The
intercuspal position itself is built later by ``_real_cases.occlude``, which also reports whether
the seated pair has posterior contact on both sides.

Reads VTK XML PolyData (``.vtp``: appended data, base64 or raw, zlib-compressed or not; e.g. the
MeshSegNet-style decimated arches of Alsheghri et al.) and whatever trimesh reads (PLY, OBJ, STL).
Nothing read here is committed: the meshes stay where they were fetched, the folder written here
and its ``manifest.json`` (source path of every file) live outside the repository.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mesial.aligner.samples import Mesh
from mesial.aligner.transforms import transform_points

_TYPES: dict[str, type[np.generic]] = {
    "Float32": np.float32,
    "Float64": np.float64,
    "Int8": np.int8,
    "UInt8": np.uint8,
    "Int16": np.int16,
    "UInt16": np.uint16,
    "Int32": np.int32,
    "UInt32": np.uint32,
    "Int64": np.int64,
    "UInt64": np.uint64,
}


def _appended_array(
    blob: bytes, offset: int, dtype: str, *, encoded: bool, compressed: bool, header: str
) -> NDArray[Any]:
    """One data array of a VTK XML file's appended section, starting at ``offset``."""
    word = np.dtype(_TYPES[header])
    size = word.itemsize

    def take(start: int, count: int) -> tuple[bytes, int]:
        """``count`` decoded bytes from ``start`` (in the blob's own units) and the blob length they used."""
        if not encoded:
            return blob[start : start + count], count
        length = 4 * math.ceil(count / 3)
        return base64.b64decode(blob[start : start + length])[:count], length

    if not compressed:  # raw only (read_vtp refuses base64 without compression)
        nbytes = int(np.frombuffer(blob[offset : offset + size], word)[0])
        return np.frombuffer(blob[offset + size : offset + size + nbytes], _TYPES[dtype])
    first, _ = take(offset, 3 * size)
    blocks = int(np.frombuffer(first, word)[0])
    head, used = take(offset, (3 + blocks) * size)
    sizes = np.frombuffer(head, word)[3:]
    data, _ = take(offset + used, int(sizes.sum()))
    parts, at = [], 0
    for compressed_size in sizes:
        parts.append(zlib.decompress(data[at : at + int(compressed_size)]))
        at += int(compressed_size)
    return np.frombuffer(b"".join(parts), _TYPES[dtype])


def read_vtp(path: Path) -> Mesh:
    """The triangles of a VTK XML PolyData file with appended data (``ValueError`` if it is anything else)."""
    text = path.read_bytes()
    start = text.find(b"<AppendedData")
    head = text[: start if start >= 0 else 4096].decode("latin1")
    if "<VTKFile" not in head or 'type="PolyData"' not in head:
        raise ValueError(f"{path}: not a VTK XML PolyData file")
    if start < 0:
        raise ValueError(f"{path}: no appended data section (only .vtp files with appended data are read)")
    encoding = re.search(r'encoding="(\w+)"', text[start : start + 200].decode("latin1"))
    encoded = encoding is None or encoding.group(1) == "base64"
    compressed = re.search(r'compressor="\w+"', head) is not None
    if encoded and not compressed:
        raise ValueError(f"{path}: base64 appended data without compression is not read (write it raw or compressed)")
    header_match = re.search(r'header_type="(\w+)"', head)
    header_type = header_match.group(1) if header_match else "UInt32"
    underscore = text.index(b"_", start) + 1
    blob = text[underscore : text.rfind(b"</AppendedData>")]
    if encoded:
        blob = blob.strip()

    def array(section: str, name: str) -> NDArray[Any]:
        found = re.search(rf"<{section}>(.*?)</{section}>", head, re.S)
        if found is None:
            raise ValueError(f"{path}: no <{section}> section")
        tag = re.search(rf'<DataArray\b[^>]*\bName="{name}"[^>]*>', found.group(1))
        if tag is None:
            raise ValueError(f"{path}: no {section} array {name!r}")
        kind = re.search(r'type="(\w+)"', tag.group(0))
        offset = re.search(r'offset="(\d+)"', tag.group(0))
        if kind is None or offset is None or 'format="appended"' not in tag.group(0):
            raise ValueError(f"{path}: {section}/{name} is not an appended array")
        return _appended_array(
            blob, int(offset.group(1)), kind.group(1), encoded=encoded, compressed=compressed, header=header_type
        )

    points = array("Points", "Points").astype(np.float64).reshape(-1, 3)
    connectivity = array("Polys", "connectivity").astype(np.int64)
    offsets = array("Polys", "offsets").astype(np.int64)
    if len(offsets) == 0 or np.any(np.diff(np.concatenate([[0], offsets])) != 3):
        raise ValueError(f"{path}: the polygons are not all triangles")
    faces = connectivity.reshape(-1, 3)
    if faces.size and (faces.min() < 0 or faces.max() >= len(points)):
        raise ValueError(f"{path}: a triangle refers to a point that does not exist")
    return Mesh(points, faces)


def read_arch(path: Path) -> Mesh:
    """An arch scan as a welded triangle mesh (duplicate vertices merged, degenerate faces dropped)."""
    import trimesh

    if path.suffix.lower() == ".vtp":
        mesh = read_vtp(path)
        vertices, faces = mesh.vertices, mesh.faces
    else:
        loaded: Any = trimesh.load(path, process=False, force="mesh")
        vertices, faces = np.asarray(loaded.vertices, dtype=np.float64), np.asarray(loaded.faces, dtype=np.int64)
    welded = trimesh.Trimesh(vertices, faces, process=True)
    return Mesh(np.asarray(welded.vertices, dtype=np.float64), np.asarray(welded.faces, dtype=np.int64))


def crown_span(mesh: Mesh) -> tuple[float, float]:
    """Width and depth of the occlusal table in the arch's canonical frame (99 % of its points), to 0.1 mm.

    Rounded so that the pairing does not hang on digits below the measurement's precision (many
    assignments are nearly as good as the best).
    """
    from _real_cases import _frame, _outward, _table

    up = np.array([0.0, 0.0, 1.0])
    canonical = _outward(Mesh(transform_points(mesh.vertices, _frame(mesh)), mesh.faces), up)
    table = _table(canonical, up)
    low, high = np.percentile(table[:, :2], [0.5, 99.5], axis=0)
    return round(float(high[0] - low[0]), 1), round(float(high[1] - low[1]), 1)


def pair_by_span(uppers: Sequence[tuple[float, float]], lowers: Sequence[tuple[float, float]]) -> list[tuple[int, int]]:
    """(upper index, lower index) pairs minimising the summed |width difference| + 0.5 |depth difference|.

    Every upper gets a lower and no lower is used twice, so there must be at least as many lowers.
    """
    from scipy.optimize import linear_sum_assignment

    if len(lowers) < len(uppers):
        raise ValueError(f"{len(uppers)} uppers but only {len(lowers)} lowers: each lower is used at most once")
    upper, lower = np.asarray(uppers, dtype=np.float64), np.asarray(lowers, dtype=np.float64)
    cost = np.abs(upper[:, None, 0] - lower[None, :, 0]) + 0.5 * np.abs(upper[:, None, 1] - lower[None, :, 1])
    rows, columns = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, columns, strict=True)]


def main() -> None:
    import trimesh

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upper", type=Path, nargs="+", required=True, help="upper arch scans (one patient each)")
    parser.add_argument("--lower", type=Path, nargs="+", required=True, help="lower arch scans (other patients)")
    parser.add_argument("--out", type=Path, required=True, help="folder for NNN_U.ply / NNN_L.ply and manifest.json")
    parser.add_argument("--start", type=int, default=101, help="number of the first pair (default 101)")
    args = parser.parse_args()
    uppers = [read_arch(p) for p in args.upper]
    lowers = [read_arch(p) for p in args.lower]
    pairs = pair_by_span([crown_span(m) for m in uppers], [crown_span(m) for m in lowers])
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for number, (u, lo) in enumerate(pairs, start=args.start):
        name = f"{number:03d}"
        for mesh, tag in ((uppers[u], "U"), (lowers[lo], "L")):
            trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).export(args.out / f"{name}_{tag}.ply")
        manifest[name] = {"upper": str(args.upper[u]), "lower": str(args.lower[lo])}
        print(f"{name}: upper {args.upper[u].name}, lower {args.lower[lo].name}")
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
