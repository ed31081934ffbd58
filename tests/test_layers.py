"""Import boundaries between the components (what .importlinter contracts would say).

- common is the bottom layer: it imports no other Mesial component;
- api and operator are independent of each other;
- the aligner library knows nothing of the API, the operator, Kubernetes, Vault or S3;
  only its Job entrypoint (`aligner/job.py`) and its CLI (`aligner/cli.py`) do the I/O;
- the Kubernetes clients are imported only under operator/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"common": "common", "aligner": "aligner", "api": "api", "operator": "operator", "cli": "cli"}

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "common": ("mesial.aligner", "mesial.api", "mesial.operator", "mesial.cli", "kopf", "kubernetes"),
    "api": ("mesial.operator", "mesial.cli", "kopf"),
    "operator": ("mesial.api", "mesial.cli", "starlette", "tortoise"),
    "aligner": (
        "mesial.api",
        "mesial.operator",
        "mesial.cli",
        "kopf",
        "kubernetes",
        "kubernetes_asyncio",
        "starlette",
        "tortoise",
        "hvac",
        "aiobotocore",
        "botocore",
        "mesial.common.vault",
        "mesial.common.objectstore",
    ),
}
# The aligner's I/O edges may use the storage core.
IO_EDGES = {"aligner/job.py", "aligner/cli.py"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def violations(component: str) -> list[str]:
    found = []
    for path in sorted((ROOT / FOLDERS[component]).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for name in imports_of(path):
            for banned in FORBIDDEN[component]:
                if (
                    component == "aligner"
                    and relative in IO_EDGES
                    and banned.startswith(("mesial.common", "hvac", "aiobotocore", "botocore"))
                ):
                    continue
                if name == banned or name.startswith(banned + "."):
                    found.append(f"{relative} imports {name}")
    return found


@pytest.mark.parametrize("component", sorted(FORBIDDEN))
def test_component_respects_its_layer(component: str) -> None:
    assert violations(component) == []


def test_the_check_can_fail(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("import kopf\nfrom mesial.api import app\n")
    assert imports_of(module) == {"kopf", "mesial.api"}
