"""The built image (``make image``), run as the chart runs it: its own entrypoint, UID 10001.

``make image-test`` builds the OCI archive and points ``MESIAL_IMAGE`` at it; elsewhere these
tests skip and say so. Each command runs inside the image's root filesystem with buildah's
chroot isolation (no container runtime starts in the build sandbox) and the host network, so
``mesial api migrate`` reaches the test run's real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from mesial.common import services as svc

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / ".tools" / "image"
UID = "10001:10001"  # the chart's runAsUser / runAsGroup (charts/mesial/templates/_helpers.tpl)


@dataclass
class Container:
    """A working container of the image under test, in the build's own buildah storage."""

    name: str

    @staticmethod
    def buildah(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        command = [
            "buildah",
            "--storage-driver",
            "vfs",
            "--root",
            str(STORE / "storage"),
            "--runroot",
            str(STORE / "run"),
        ]
        return subprocess.run([*command, *args], capture_output=True, text=True, check=check, timeout=timeout)

    def run(self, *argv: str, env: dict[str, str] | None = None, user: str = UID) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` (no shell) inside the image as ``user``."""
        flags = ["--isolation", "chroot", "--network", "host", "--user", user]
        for key, value in (env or {}).items():
            flags += ["--env", f"{key}={value}"]
        return self.buildah("run", *flags, self.name, "--", *argv, check=False)

    def mesial(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        entrypoint: list[str] = self.config()["Entrypoint"]
        return self.run(*entrypoint, *args, env=env)

    def config(self) -> dict[str, Any]:
        inspected = json.loads(self.buildah("inspect", "--type", "container", self.name).stdout)
        config: dict[str, Any] = inspected["OCIv1"]["config"]
        return config


@pytest.fixture(scope="module")
def image() -> Iterator[Container]:
    archive = os.environ.get("MESIAL_IMAGE")
    if not archive:
        pytest.skip("no image under test: `make image-test` builds it and sets MESIAL_IMAGE")
    if os.geteuid() != 0 or shutil.which("buildah") is None:
        pytest.fail("the image tests need root and buildah (`make image` installs buildah)")
    name = f"mesial-image-test-{secrets.token_hex(4)}"
    Container.buildah("from", "--quiet", "--name", name, f"oci-archive:{archive}")
    try:
        yield Container(name)
    finally:
        Container.buildah("rm", name, check=False)


def test_the_image_runs_as_the_charts_user_with_an_exec_form_entrypoint(image: Container) -> None:
    config = image.config()
    assert config["User"] == UID
    assert config["Entrypoint"] == ["/opt/mesial/bin/mesial"]
    version = image.mesial("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "mesial, version 0.1.0"
    # The code and its data are not writable by the user the pods run as.
    probe = image.run("/opt/mesial/bin/python", "-P", "-c", "open('/opt/mesial/probe', 'w')")
    assert probe.returncode != 0 and "Permission denied" in probe.stderr


def test_the_operator_entrypoint_and_its_templates(image: Container) -> None:
    result = image.mesial("operator", "run", "--help")
    assert result.returncode == 0 and "Usage: mesial operator run" in result.stdout, result.stderr
    # The installed package holds policies/ and crds/: the operator renders from them at start.
    render = image.run(
        "/opt/mesial/bin/python",
        "-P",
        "-c",
        "from mesial.common.provisioning import DEFAULT_POLICIES_DIR\n"
        "from pathlib import Path\n"
        "import mesial.crds\n"
        "print(sorted(p.name for p in (DEFAULT_POLICIES_DIR / 'network').glob('*.tmpl')))\n"
        "print(sorted(p.name for p in Path(*mesial.crds.__path__).glob('*.yaml')))",
    )
    assert render.returncode == 0, render.stderr
    assert "'default-deny.yaml.tmpl'" in render.stdout
    assert "['organization.yaml', 'retentionpolicy.yaml', 'scanjob.yaml']" in render.stdout


def test_align_a_generated_case_inside_the_image(image: Container) -> None:
    case = f"/tmp/case-{secrets.token_hex(3)}"
    made = image.mesial("samples", "generate", "--out", case, "--vertices", "30000", "--seed", "3")
    assert made.returncode == 0, made.stderr
    aligned = image.mesial(
        "align", "--upper", f"{case}/upper.ply", "--lower", f"{case}/lower.ply",
        "--bite", f"{case}/bite.stl", "--bite", f"{case}/bite2.stl", "--out", f"{case}/out", "--json",
    )  # fmt: skip
    assert aligned.returncode == 0, aligned.stdout[-2000:] + aligned.stderr[-2000:]
    result = json.loads(aligned.stdout)
    assert result["status"] == "ok" and result["software"]["version"] == "0.1.0"


def test_api_migrate_inside_the_image_against_postgresql(image: Container, postgres: svc.ServiceInfo) -> None:
    name = f"img_{secrets.token_hex(4)}"

    async def create() -> None:
        admin = await asyncpg.connect(postgres.url)
        try:
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()

    asyncio.run(create())
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    env = {"MESIAL_MODE": "cluster", "MESIAL_DATABASE_URL": url}
    first = image.mesial("api", "migrate", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.startswith("applied: ") and "nothing" not in first.stdout
    again = image.mesial("api", "migrate", env=env)
    assert again.returncode == 0 and "nothing (up to date)" in again.stdout, again.stderr[-3000:]


def test_the_sbom_in_the_image_is_the_one_beside_it_and_lists_every_installed_package(image: Container) -> None:
    inside = image.run(
        "/opt/mesial/bin/python", "-P", "-c", "print(open('/usr/share/doc/mesial/sbom.cdx.json').read())"
    )
    assert inside.returncode == 0, inside.stderr
    sbom = json.loads(inside.stdout)
    beside = Path(os.environ["MESIAL_IMAGE"]).with_name("mesial.cdx.json")
    assert json.loads(beside.read_text()) == sbom
    assert sbom["bomFormat"] == "CycloneDX"
    listed = {(c["name"].lower().replace("_", "-"), c["version"]) for c in sbom["components"]}
    installed = image.run(
        "/opt/mesial/bin/python",
        "-P",
        "-c",
        "import importlib.metadata as m, json\n"
        "print(json.dumps(sorted({(d.metadata['Name'], d.version) for d in m.distributions()})))",
    )
    assert installed.returncode == 0, installed.stderr
    packages = {(n.lower().replace("_", "-"), v) for n, v in json.loads(installed.stdout)}
    missing = (
        packages
        - listed
        - {("pip", v) for _, v in packages}
        - {("setuptools", v) for _, v in packages}
        - {("wheel", v) for _, v in packages}
    )
    assert not missing, missing
    assert any(name in ("open3d", "open3d-cpu") for name, _ in listed) and any(name == "kopf" for name, _ in listed)


def test_the_digest_beside_the_archive_is_its_manifests() -> None:
    archive = os.environ.get("MESIAL_IMAGE")
    if not archive:
        pytest.skip("no image under test: `make image-test` builds it and sets MESIAL_IMAGE")
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        index = json.load(member)
    (manifest,) = index["manifests"]
    digest = Path(archive).with_name("mesial.digest").read_text().strip()
    assert manifest["digest"] == digest and re.fullmatch(r"sha256:[0-9a-f]{64}", digest)


WRITABLE = """
import os
for root, dirs, _ in os.walk("/"):
    if root in ("/proc", "/sys", "/dev"):
        dirs.clear()
        continue
    if os.access(root, os.W_OK):
        print(root)
        dirs.clear()
"""


def test_the_user_can_write_only_the_temporary_directories(image: Container) -> None:
    # The chart mounts /tmp as an emptyDir on a read-only root: the commands the other tests
    # ran as this user (align, migrate, ...) could not have written anywhere else.
    found = image.run("/opt/mesial/bin/python", "-P", "-c", WRITABLE)
    assert found.returncode == 0, found.stderr
    assert set(found.stdout.split()) <= {"/tmp", "/var/tmp", "/run/lock"}, found.stdout
