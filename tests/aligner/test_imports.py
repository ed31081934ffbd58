"""``mesial align`` imports only what its stages use (issue 10, goal 4).

Checked in fresh interpreters: after the command's import path, and after a whole
case (reading, registration, occlusion, every output).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mesial.aligner.io import write_ply, write_stl
from mesial.aligner.samples import SampleCase

# Never needed by the aligner: plotting, Open3D's visualization/ML layers (Plotly, Dash), a
# second mesh library, the web and database stacks.
NEVER = ("matplotlib", "trimesh", "open3d.visualization", "open3d.ml", "dash", "plotly", "starlette", "tortoise")
# SciPy: none in a case (the k-d trees, distance fields and patch counts are the aligner's own); these
# parts of it would be the heaviest.
UNUSED_SCIPY = (
    "scipy.ndimage",
    "scipy.sparse",
    "scipy.spatial._qhull",
    "scipy.special",
    "scipy.linalg",
    "scipy._lib._util",
    "scipy._lib._array_api",
)


def _modules_after(code: str, cwd: Path | None = None) -> set[str]:
    # no MESIAL_ALIGNER... variable (nor, with ``cwd``, a .env file): the input limits are the defaults
    env = {name: value for name, value in os.environ.items() if not name.upper().startswith("MESIAL_ALIGNER")}
    done = subprocess.run(
        [sys.executable, "-P", "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        cwd=cwd,
        env=env,
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


def test_the_align_command_imports_no_heavy_module_before_it_runs() -> None:
    modules = _modules_after(
        "from mesial.cli import root\nroot.get_command(None, 'align')\n"
        "import mesial.aligner.pipeline, mesial.aligner.report"
    )
    assert "mesial.aligner.cli" in modules
    assert [name for name in (*NEVER, "open3d", "scipy") if _loaded(modules, name)] == []


def test_a_whole_case_imports_nothing_a_stage_does_not_use(tmp_path: Path, small_case: SampleCase) -> None:
    write_ply(tmp_path / "upper.ply", small_case.upper.vertices, small_case.upper.faces)
    write_ply(tmp_path / "lower.ply", small_case.lower.vertices, small_case.lower.faces)
    bites = []
    for i, bite in enumerate(small_case.bites):
        bites.append(str(tmp_path / f"bite{i}.stl"))
        write_stl(bites[-1], bite.vertices, bite.faces)
    code = (
        "import sys\nfrom mesial.cli import main\n"
        f"sys.argv = ['mesial', 'align', '--upper', {str(tmp_path / 'upper.ply')!r}, '--lower', "
        f"{str(tmp_path / 'lower.ply')!r}, " + ", ".join(f"'--bite', {b!r}" for b in bites)
        + f", '--out', {str(tmp_path / 'out')!r}, '--json']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    )  # fmt: skip
    modules = _modules_after(code, cwd=tmp_path)
    document = json.loads((tmp_path / "out" / "result.json").read_text())
    assert document["status"] == "ok"
    assert (tmp_path / "out" / "upper_occlusal.png").read_bytes().startswith(b"\x89PNG")
    # no Open3D at all: closest points and ray casts are the aligner's own kernel (_meshquery)
    assert [name for name in (*NEVER, "open3d", *UNUSED_SCIPY) if _loaded(modules, name)] == []
    assert not _loaded(modules, "rich")  # --json: no progress bar, no console
    # the input limits without the settings' models (common/limits.py): no pydantic at all
    assert not _loaded(modules, "pydantic_settings") and not _loaded(modules, "pydantic")
    assert not _loaded(modules, "scipy")  # the k-d trees are the aligner's own too (_nearest.c)
