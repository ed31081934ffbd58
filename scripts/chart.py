"""Generate what the Helm chart derives from single sources, or check that it is current.

    python scripts/chart.py write   # values.schema.json, README.md, crds/ of charts/mesial
    python scripts/chart.py check   # exit 1 naming each stale file ("run make chart")

- ``values.schema.json`` is inferred from ``values.yaml`` (types and nesting; unknown keys
  refused) plus the few constraints in ``CONSTRAINTS`` below (enums, bounds, patterns).
- ``README.md`` lists every value with its type, default and its ``# --`` comment.
- ``crds/`` is a copy of the project's ``crds/*.yaml`` (the single source; not the examples).
- ``files/admission/`` is a copy of ``policies/admission/*.yaml`` (the operator's admission policy,
  a Helm template rendered by ``templates/operator-admission.yaml``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "mesial"

# Values whose keys are free-form (label maps, Kubernetes objects passed through).
FREE_MAPS = {"nodeSelector", "affinity", "namespaceSelector", "podSelector", "resources", "podAnnotations", "labels"}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
CONSTRAINTS: dict[str, dict[str, Any]] = {
    "global.image.pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "global.image.digest": {"pattern": "^(sha256:[a-f0-9]{64})?$"},
    "global.logLevel": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
    "vault.addr": {"pattern": "^https?://"},
    "store.endpointUrl": {"pattern": "^https?://"},
    "api.replicas": {"minimum": 1},
    "api.service.type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
    "api.service.port": PORT,
    "api.maxUploadBytes": {"minimum": 1},
    "aligner.backoffLimit": {"minimum": 0, "maximum": 10},
    "aligner.ttlSecondsAfterFinished": {"minimum": 0},
    "operator.driftIntervalSeconds": {"minimum": 1},
    "operator.scanJobSyncIntervalSeconds": {"minimum": 1},
    "operator.retryDelaySeconds": {"minimum": 1},
    "operator.metrics.port": PORT,
    "operator.metrics.serviceMonitor.interval": {"pattern": "^[0-9]+(ms|s|m|h)$"},
    "api.podDisruptionBudget.minAvailable": {"minimum": 0},
}
EGRESS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "cidrs": {"type": "array", "items": {"type": "string"}},
        "namespaceSelector": {"type": "object", "additionalProperties": {"type": "string"}},
        "podSelector": {"type": "object", "additionalProperties": {"type": "string"}},
        "ports": {"type": "array", "items": PORT, "minItems": 1},
    },
}


def infer(value: Any, path: str) -> dict[str, Any]:
    """A JSON schema for ``value`` found at dotted ``path`` of values.yaml."""
    key = path.rsplit(".", 1)[-1]
    if path.startswith("operator.tenantEgress."):
        return EGRESS
    if isinstance(value, bool):
        schema: dict[str, Any] = {"type": "boolean"}
    elif isinstance(value, int):
        schema = {"type": "integer"}
    elif isinstance(value, float):
        schema = {"type": "number"}
    elif isinstance(value, str):
        schema = {"type": "string"}
    elif isinstance(value, list):
        items = infer(value[0], path + "[]") if value else {}
        schema = {"type": "array", "items": items} if items else {"type": "array"}
    elif isinstance(value, dict):
        if key in FREE_MAPS:
            schema = {"type": "object"}
        else:
            schema = {
                "type": "object",
                "additionalProperties": False,
                "properties": {k: infer(v, f"{path}.{k}" if path else k) for k, v in value.items()},
            }
    else:
        schema = {}
    schema.update(CONSTRAINTS.get(path, {}))
    return schema


def values_schema() -> str:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = {
        "$schema": "https://json-schema.org/draft-07/schema#",
        "title": "Mesial chart values",
        **infer(values, ""),
    }
    return json.dumps(schema, indent=2) + "\n"


def documented_values() -> list[tuple[str, str, str, str]]:
    """(key path, type, default, description) for every value with a `# --` comment."""
    rows = []
    stack: list[tuple[int, str]] = []
    comment = ""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = stripped[4:].strip()
            continue
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(k for _, k in stack), key])
        stack.append((indent, key))
        if comment:
            value: Any = values
            for part in path.split("."):
                value = value[part]
            kind = infer(value, path).get("type", "any")
            rows.append((path, kind, json.dumps(value), comment))
            comment = ""
    return rows


def readme() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    lines = [
        f"# {chart['name']}",
        "",
        f"Version {chart['version']}, app version {chart['appVersion']}. {chart['description'].strip()}",
        "",
        "This file is generated by `make chart` from the `# --` comments of `values.yaml`; edit those.",
        "",
        "## Before installing",
        "",
        "- Kubernetes >= 1.31 (`kubeVersion`): the CRDs' validation rules use the CEL CIDR library, which",
        "  the API server offers from 1.31, and the operator's admission policy is",
        "  `admissionregistration.k8s.io/v1`. Helm refuses an older cluster (1.28, say) before installing",
        "  anything; a cluster that does not serve ValidatingAdmissionPolicy is refused unless",
        "  `operator.admissionPolicy.enabled=false` (docs/operator.md says what the policy guards).",
        "- PostgreSQL: a Secret with key `url` (`database.urlSecret`).",
        "- An S3 endpoint: a Secret with keys `access-key` and `secret-key` (`store.credentialsSecret`).",
        "- Vault or OpenBao with the transit engine and the Kubernetes auth method enabled, and two roles:",
        "  `mesial-operator` and `mesial-api` with the policies this chart renders from your values",
        "  (`helm template mesial charts/mesial -f my-values.yaml --show-only templates/vault-policies.yaml`,",
        "  keys `operator.hcl` and `api.hcl`), bound to the ServiceAccounts `<fullname>-operator` and",
        "  `<fullname>-api` with the audience `vault.tokenAudience`. `<fullname>` is the release name when",
        "  it contains `mesial` (release `mesial`: `mesial-operator`, `mesial-api`), else",
        "  `<release>-mesial`, or `fullnameOverride`. The third policy, key `aligner.hcl`, is every tenant's",
        "  aligner Jobs' (write it as `vault.alignerPolicy`, with the auth method's accessor:",
        "  `vault.kubernetesMountAccessor`); the operator binds each tenant's login role to it and writes no policy.",
        "- With more than one API replica: a Secret with key `link-secret` (`api.linkSecret`).",
        "",
        "Every command, from an empty cluster to a first aligned case and an audit export, is in the",
        "project's `docs/install.md`; upgrading and uninstalling (CRDs, finalizers) in `docs/operator.md`.",
        "To try it without any of the above: `--set trial.enabled=true` (OpenBao dev, SeaweedFS and",
        "PostgreSQL in the release, in memory or on emptyDir: never for patient data).",
        "",
        "```sh",
        "helm install mesial charts/mesial -n mesial-system --create-namespace -f my-values.yaml",
        "helm test mesial -n mesial-system",
        "```",
        "",
        "The CRDs in `crds/` are installed by Helm on first install; on upgrade apply them with",
        "`kubectl apply --server-side --force-conflicts -f charts/mesial/crds/` (Helm does not upgrade CRDs).",
        "",
        "## Values",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for path, kind, default, description in documented_values():
        default_cell = default.replace("|", "\\|")
        lines.append(f"| `{path}` | {kind} | `{default_cell}` | {description} |")
    return "\n".join(lines) + "\n"


def crd_copies() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted((ROOT / "crds").glob("*.yaml"))}


def admission_copies() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted((ROOT / "policies" / "admission").glob("*.yaml"))}


def expected() -> dict[Path, str]:
    files = {CHART / "values.schema.json": values_schema(), CHART / "README.md": readme()}
    for name, text in crd_copies().items():
        files[CHART / "crds" / name] = text
    for name, text in admission_copies().items():
        files[CHART / "files" / "admission" / name] = text
    return files


def stale() -> list[str]:
    problems = []
    wanted = expected()
    for path, text in wanted.items():
        if not path.exists() or path.read_text() != text:
            problems.append(str(path.relative_to(ROOT)))
    extra = {p for p in (CHART / "crds").glob("*.yaml")} - set(wanted)
    problems += [f"{p.relative_to(ROOT)} (no longer in crds/)" for p in sorted(extra)]
    extra = {p for p in (CHART / "files" / "admission").glob("*.yaml")} - set(wanted)
    problems += [f"{p.relative_to(ROOT)} (no longer in policies/admission/)" for p in sorted(extra)]
    return problems


def main(argv: list[str]) -> int:
    if argv[1:] == ["write"]:
        for folder in (CHART / "crds", CHART / "files" / "admission"):
            folder.mkdir(parents=True, exist_ok=True)
            for path in folder.glob("*.yaml"):
                path.unlink()
        for path, text in expected().items():
            path.write_text(text)
        return 0
    if argv[1:] == ["check"]:
        problems = stale()
        for problem in problems:
            print(f"stale: {problem} (run `make chart` and commit)", file=sys.stderr)
        return 1 if problems else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
