"""The built wheel carries what the code reads at run time: policies/ and crds/.

The editable install of the development checkout finds these folders beside the source;
an installed wheel (the image) has only what the wheel holds. Each test builds the wheel,
unpacks it and runs the code from the unpacked copy, not from the checkout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IGNORED = (".git", ".venv", ".tools", ".mesial", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "demo-out")


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # From a copy of the sources: setuptools reuses the checkout's build/ folder, which may
    # hold files of an earlier build that the current configuration would leave out.
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*IGNORED))
    subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            ".",
        ],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("mesial-*.whl")
    target = out / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def test_the_wheel_holds_every_source_file(unpacked_wheel: Path) -> None:
    # A subpackage missing from pyproject's list is silently left out of the wheel; the
    # editable install of the checkout would never show it.
    for folder in ("cli", "common", "aligner", "api", "operator"):
        source = sorted(p.relative_to(ROOT / folder) for p in (ROOT / folder).rglob("*.py"))
        packed = sorted(
            p.relative_to(unpacked_wheel / "mesial" / folder)
            for p in (unpacked_wheel / "mesial" / folder).rglob("*.py")
        )
        assert packed == source, folder


def test_the_wheel_holds_every_policy_template_and_crd(unpacked_wheel: Path) -> None:
    for folder in ("policies", "crds"):
        source = sorted(p.relative_to(ROOT / folder) for p in (ROOT / folder).rglob("*") if p.is_file())
        packed = sorted(
            p.relative_to(unpacked_wheel / "mesial" / folder)
            for p in (unpacked_wheel / "mesial" / folder).rglob("*")
            if p.is_file()
        )
        assert source and packed == source, folder


# Run from the unpacked wheel only: the checkout must not be importable, so the code
# finds its templates where the wheel put them or fails as the issue describes.
PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import mesial.common.provisioning as provisioning
assert provisioning.__file__.startswith(sys.argv[1]), provisioning.__file__
from mesial.common.settings import OperatorSettings, VaultSettings
from mesial.common.provisioning import TenantProvisioner
from mesial.operator.sync.organization.model import OrgView
from mesial.operator.sync.organization.networkpolicies import desired_networkpolicies
from mesial.operator.testing import CRDS_DIR

class Keys:  # no Vault call is made here
    client = None

settings = OperatorSettings()
role = TenantProvisioner(Keys(), VaultSettings(transit_mount="kms"), settings).desired_role("acme", "mesial-aligner")
org = OrgView(name="acme", namespace="mesial-org-acme", key_name="mesial-org-acme", tier="standard", extra_egress=(),
              rotation_period="720h", force_delete=False, generation=1, uid="u")
print(json.dumps({
    "role": role,
    "networkpolicies": [p["metadata"]["name"] for p in desired_networkpolicies(org, settings)],
    "crds": sorted(p.name for p in CRDS_DIR.glob("*.yaml")),
}))
"""


def test_the_installed_wheel_renders_its_templates(unpacked_wheel: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-P", "-c", PROBE, str(unpacked_wheel)], cwd=unpacked_wheel, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["role"]["policies"] == ["mesial-aligner"]
    assert sorted(out["networkpolicies"]) == [
        "mesial-allow-egress",
        "mesial-allow-egress-aligner",
        "mesial-default-deny",
    ]
    assert out["crds"] == ["organization.yaml", "retentionpolicy.yaml", "scanjob.yaml"]


KERNEL_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from mesial.aligner import _meshquery
assert _meshquery.__file__.startswith(sys.argv[1]), _meshquery.__file__
mesh = _meshquery.MeshQuery(np.eye(3), [[0, 1, 2]])
print(round(float(mesh.closest([[0.0, 0.0, 0.0]]).distances[0]) ** 2 * 3, 9))
"""


def test_the_wheel_carries_the_compiled_mesh_query_kernel(unpacked_wheel: Path) -> None:
    # setup.py's extension: compiled when the wheel is built, loaded with ctypes from the wheel's copy
    (library,) = (unpacked_wheel / "mesial" / "aligner").glob("_meshquery_lib*.so")
    assert b"mq_closest" in library.read_bytes()
    run = subprocess.run(
        [sys.executable, "-P", "-c", KERNEL_PROBE, str(unpacked_wheel)],
        cwd=unpacked_wheel,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "1.0"
