"""The CRDs and their examples: apiextensions schema, kubectl's client dry run, and each example
against its CRD's own openAPIV3Schema (with defaults, enums, patterns, bounds)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kmock
import kubernetes_validate
import pytest
import yaml

from mesial.operator.testing import CRDS_DIR, Emulator, declare_resources

CRD_FILES = sorted(CRDS_DIR.glob("*.yaml"))
EXAMPLES = sorted((CRDS_DIR / "examples").glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def crd_for(kind: str) -> dict[str, Any]:
    for path in CRD_FILES:
        crd = load(path)
        if crd["spec"]["names"]["kind"] == kind:
            return crd
    raise AssertionError(f"no CRD for {kind}")


def to_jsonschema(schema: Any) -> Any:
    """An openAPIV3Schema as JSON Schema: Kubernetes extensions dropped, structure kept."""
    if isinstance(schema, dict):
        out = {k: to_jsonschema(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema:
            out["additionalProperties"] = False  # structural schemas prune unknown fields: treat them as errors
        return out
    if isinstance(schema, list):
        return [to_jsonschema(v) for v in schema]
    return schema


def validator(kind: str) -> jsonschema.Draft7Validator:
    schema = to_jsonschema(crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_crd_is_a_valid_apiextensions_v1_object(path: Path) -> None:
    crd = load(path)
    assert kubernetes_validate.validate(crd, "1.33", strict=True)
    names = crd["spec"]["names"]
    assert "mesial" in names["categories"] and names["shortNames"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Phase", "Age"}


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_crd_schema_is_structural_and_described(path: Path) -> None:
    schema = load(path)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def walk(node: dict[str, Any], where: str) -> None:
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{where} has no type"
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{where}.{name}")
        if "items" in node:
            walk(node["items"], f"{where}[]")

    walk(schema, "")
    for name, prop in schema["properties"]["spec"].get("properties", {}).items():
        assert prop.get("description"), f"spec.{name} has no description"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_matches_its_crd_schema(path: Path) -> None:
    doc = load(path)
    errors = sorted(validator(doc["kind"]).iter_errors(doc), key=str)
    assert not errors, [e.message for e in errors]


@pytest.mark.parametrize(
    ("kind", "patch", "fragment"),
    [
        ("Organization", {"spec": {"tier": "huge"}}, "is not one of"),
        ("Organization", {"spec": {"keyRotationPeriod": "1 week"}}, "does not match"),
        ("Organization", {"spec": {"egress": {"extra": [{"cidr": "10.0.0.0/33", "ports": [443]}]}}}, "does not match"),
        ("Organization", {"spec": {"displayName": ""}}, "should be non-empty"),
        ("Organization", {"spec": {"image": "evil"}}, "Additional properties"),
        ("ScanJob", {"spec": {"scans": {"upper": "../../x", "lower": "b"}}}, "does not match"),
        ("ScanJob", {"spec": {"timeouts": {"activeDeadlineSeconds": 10**7}}}, "greater than the maximum"),
        ("ScanJob", {"spec": {"scans": {"bites": ["b1", "b2", "b3"]}}}, "is too long"),
        ("ScanJob", {"spec": {"scans": {"bites": []}}}, "should be non-empty"),
        ("ScanJob", {"spec": {"options": {"contactThresholdMm": 5}}}, "greater than the maximum"),
        ("ScanJob", {"spec": {"podTemplate": {"hostNetwork": True}}}, "Additional properties"),
        ("RetentionPolicy", {"spec": {"maxAgeDays": 4000}}, "greater than the maximum"),
        ("RetentionPolicy", {"spec": {"covers": ["everything"]}}, "is not one of"),
    ],
)
def test_schema_refuses_bad_specs(kind: str, patch: dict[str, Any], fragment: str) -> None:
    example = next(load(p) for p in EXAMPLES if load(p)["kind"] == kind)
    doc = copy.deepcopy(example)
    for key, value in patch["spec"].items():
        if isinstance(value, dict) and isinstance(doc["spec"].get(key), dict):
            doc["spec"][key].update(value)
        else:
            doc["spec"][key] = value
    messages = [e.message for e in validator(kind).iter_errors(doc)]
    assert any(fragment in m for m in messages), messages


def test_cel_rules_are_declared_where_rules_span_fields() -> None:
    org = crd_for("Organization")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert (
        "self.tier" in org["x-kubernetes-validations"][0]["rule"]
        and "egress" in org["x-kubernetes-validations"][0]["rule"]
    )
    scans = crd_for("ScanJob")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "scans"
    ]
    assert any("self.upper != self.lower" in v["rule"] for v in scans["x-kubernetes-validations"])
    policy = crd_for("RetentionPolicy")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "maxAgeDays" in policy["x-kubernetes-validations"][0]["rule"]


def test_scanjob_spec_is_immutable_and_organization_has_no_unread_field() -> None:
    """An edited ScanJob spec was silently ignored: the API server refuses the edit (CEL transition
    rule). Organization.spec.retentionDays was documented and never read: it is gone."""
    spec = crd_for("ScanJob")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = spec.get("x-kubernetes-validations") or []
    assert any(v["rule"].replace(" ", "") == "self==oldSelf" and "immutable" in v["message"] for v in rules)
    org = crd_for("Organization")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "retentionDays" not in org["properties"]


async def test_kubectl_apply_dry_run_client(k8s_tools: dict[str, Path], tmp_path: Path) -> None:
    """``kubectl apply --dry-run=client -f crds/ && -f crds/examples/``, discovery served by the emulator."""
    emulator = Emulator()
    declare_resources(emulator)
    async with emulator, kmock.Server(emulator):
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "emu", "cluster": {"server": str(emulator.url).rstrip("/")}}],
                    "users": [{"name": "emu", "user": {"token": "emulated"}}],
                    "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "emu"}}],
                    "current-context": "emu",
                }
            )
        )
        for target in (CRDS_DIR, CRDS_DIR / "examples"):
            result = await _run(
                [str(k8s_tools["kubectl"]), "--kubeconfig", str(kubeconfig), "apply", "--dry-run=client",
                 "--validate=false", "-o", "name", "-f", str(target)]
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert result.stdout.count("\n") == len(list(target.glob("*.yaml")))


async def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    import asyncio

    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False)
