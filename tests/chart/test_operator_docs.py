"""docs/operator.md's upgrade and uninstall procedures: the finalizer release runs with kubectl
against the emulator on Organizations and ScanJobs left in Terminating; the upgrade renders."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
from pathlib import Path

import kmock
import yaml

from mesial.common.settings import OperatorSettings
from mesial.operator.k8s import K8s
from mesial.operator.testing import CRDS_DIR, Emulator, declare_resources
from tests.chart.test_chart import CHART, ROOT, helm

DOC = ROOT / "docs" / "operator.md"


def section_commands(heading: str) -> list[str]:
    """The shell commands of the ```sh blocks under ``## heading`` (up to the next ``## ``)."""
    text = DOC.read_text()
    body = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", body, re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_upgrade_applies_the_chart_crds_then_renders(k8s_tools: dict[str, Path]) -> None:
    commands = section_commands("Upgrading")
    (apply,) = [c for c in commands if c.startswith("kubectl apply")]
    folder = ROOT / shlex.split(apply)[-1]
    assert sorted(p.read_text() for p in folder.glob("*.yaml")) == sorted(
        p.read_text() for p in CRDS_DIR.glob("*.yaml")
    )
    (upgrade,) = [c for c in commands if c.startswith("helm upgrade")]
    args = shlex.split(upgrade)
    assert args[2:4] == ["mesial", "charts/mesial"] and "--namespace" not in args
    rendered = helm(k8s_tools, "template", "mesial", str(CHART), "-n", "mesial-system").stdout
    deployments = {d["metadata"]["name"] for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"}
    (status,) = [c for c in commands if "rollout status" in c]
    assert shlex.split(status)[-1].removeprefix("deploy/") in deployments


def test_uninstall_names_the_crds_and_the_finalizer() -> None:
    commands = section_commands("Uninstalling")
    (delete_crds,) = [c for c in commands if c.startswith("kubectl delete crd")]
    names = {yaml.safe_load(p.read_text())["metadata"]["name"] for p in CRDS_DIR.glob("*.yaml")}
    assert set(shlex.split(delete_crds)[3:]) == names
    assert f"`{OperatorSettings().finalizer}`" in DOC.read_text()


async def test_releasing_the_finalizers_after_helm_uninstall(k8s_tools: dict[str, Path], tmp_path: Path) -> None:
    release = [c for c in section_commands("Uninstalling") if "finalizers" in c]
    assert len(release) == 2
    emulator = Emulator()
    declare_resources(emulator)
    async with emulator, kmock.Server(emulator):
        url = str(emulator.url).rstrip("/")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "emu", "cluster": {"server": url}}],
                    "users": [{"name": "emu", "user": {"token": "emulated"}}],
                    "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "emu"}}],
                    "current-context": "emu",
                }
            )
        )
        k8s = K8s.for_server(url, "emulated")
        finalizer = OperatorSettings().finalizer
        try:
            # what `helm uninstall` leaves when the operator went first: objects stuck in Terminating
            for name in ("left-a", "left-b"):
                await k8s.create(
                    {
                        "apiVersion": "mesial.dev/v1alpha1",
                        "kind": "Organization",
                        "metadata": {"name": name, "finalizers": [finalizer]},
                        "spec": {"displayName": name, "tier": "small"},
                    }
                )
                await k8s.delete("mesial.dev/v1alpha1", "Organization", name)
            await k8s.create(
                {
                    "apiVersion": "mesial.dev/v1alpha1",
                    "kind": "ScanJob",
                    "metadata": {"name": "stuck", "namespace": "mesial-org-left-a", "finalizers": [finalizer]},
                    "spec": {"scans": {"upper": "u", "lower": "l", "bites": ["b"]}},
                }
            )
            await k8s.delete("mesial.dev/v1alpha1", "ScanJob", "stuck", "mesial-org-left-a")
            stuck = await k8s.get("mesial.dev/v1alpha1", "Organization", "left-a")
            assert stuck is not None and stuck["metadata"].get("deletionTimestamp")
            env = {
                **os.environ,
                "KUBECONFIG": str(kubeconfig),
                "PATH": f"{k8s_tools['kubectl'].parent}:{os.environ['PATH']}",
            }
            for command in release:
                result = await asyncio.to_thread(
                    subprocess.run,
                    ["bash", "-euo", "pipefail", "-c", command],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert result.returncode == 0, result.stderr
            assert await k8s.list("mesial.dev/v1alpha1", "Organization") == []
            assert await k8s.list("mesial.dev/v1alpha1", "ScanJob") == []
        finally:
            await k8s.close()
