"""The chart's global.image.digest: every pod and the aligner Jobs run repository@digest."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mesial"
DIGEST = "sha256:" + "0123456789abcdef" * 4


def render(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), "template", "rel", str(CHART), "--namespace", "mesial-system", *args],
        capture_output=True,
        text=True,
        check=check,
    )


def images(docs: list[dict[str, Any]]) -> list[str]:
    found = []
    for doc in docs:
        spec = doc["spec"]["template"]["spec"] if doc["kind"] in ("Deployment", "Job") else doc.get("spec", {})
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            found.append(container["image"])
            found += [e["value"] for e in container.get("env", []) if e["name"] == "MESIAL_OPERATOR__ALIGNER_IMAGE"]
    return found


def test_a_digest_pins_every_image_and_the_aligner_jobs(k8s_tools: dict[str, Path]) -> None:
    out = render(k8s_tools["helm"], "--set", f"global.image.digest={DIGEST}", "--set", "global.image.tag=9.9").stdout
    found = images([doc for doc in yaml.safe_load_all(out) if doc])
    assert len(found) >= 4 and set(found) == {f"ghcr.io/mesial/mesial@{DIGEST}"}
    # aligner.tag still names the aligner's own image.
    out = render(k8s_tools["helm"], "--set", f"global.image.digest={DIGEST}", "--set", "aligner.tag=1.2.3").stdout
    found = images([doc for doc in yaml.safe_load_all(out) if doc])
    assert set(found) == {f"ghcr.io/mesial/mesial@{DIGEST}", "ghcr.io/mesial/mesial:1.2.3"}


def test_without_a_digest_the_tag_is_used_and_a_malformed_digest_is_refused(k8s_tools: dict[str, Path]) -> None:
    out = render(k8s_tools["helm"], "--set", "global.image.tag=2.0.0").stdout
    assert set(images([doc for doc in yaml.safe_load_all(out) if doc])) == {"ghcr.io/mesial/mesial:2.0.0"}
    refused = render(k8s_tools["helm"], "--set", "global.image.digest=latest", check=False)
    assert refused.returncode != 0 and "global/image/digest" in refused.stderr
