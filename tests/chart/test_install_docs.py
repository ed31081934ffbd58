"""docs/install.md, command by command, against what the chart renders and what the programs accept.

Helm commands are rendered (``helm template`` with the page's own values file); every Secret
and key the rendered pods need is created by a command of the page; the Deployments, Services
and ServiceAccounts named exist; the Vault mounts, keys, policies and roles match the values
and bind the rendered ServiceAccounts with their token audience, and the OpenBao CLI knows each
``vault`` subcommand; ``mesial`` commands parse with the CLI itself; each ``curl`` is a route of
the API (docs/openapi.json) with its method; files named exist in the repository.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from mesial.cli import root
from tests.chart.test_chart import CHART, ROOT, helm

DOC = ROOT / "docs" / "install.md"
RELEASE, NAMESPACE = "mesial", "mesial-system"


def doc_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), re.S)


def commands() -> list[list[str]]:
    """Every command of the page's ```sh blocks, pipelines split, as argument lists."""
    out = []
    for block in doc_blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            line = line.split(" # ", 1)[0].rstrip(" &")
            line = re.split(r" > ", line)[0]  # the output redirection is the shell's, not the command's
            for part in re.split(r" \| ", line):
                out.append(shlex.split(part))
    return out


def by(program: str, *sub: str) -> list[list[str]]:
    return [c for c in commands() if c[0] == program and c[1 : 1 + len(sub)] == list(sub)]


def options(args: list[str]) -> dict[str, list[str]]:
    """``--name=value`` and ``--name value`` options (repeatable), and ``key=value`` arguments."""
    found: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and "=" in arg:
            key, value = arg.split("=", 1)
            found.setdefault(key, []).append(value)
        elif arg.startswith("-") and i + 1 < len(args) and not args[i + 1].startswith("-"):
            found.setdefault(arg, []).append(args[i + 1])
            i += 1
        elif "=" in arg:
            key, value = arg.split("=", 1)
            found.setdefault(key, []).append(value)
        i += 1
    return found


@pytest.fixture(scope="module")
def values_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    values = DOC.read_text().split("`my-values.yaml`", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path_factory.mktemp("install") / "my-values.yaml"
    path.write_text(values)
    return path


@pytest.fixture(scope="module")
def installed(k8s_tools: dict[str, Path], values_file: Path) -> list[dict[str, Any]]:
    """What the page's `helm install` renders (run as `helm template`, same arguments)."""
    install = by("helm", "install")[-1]  # the walk-through's (the image section installs by digest)
    args = [a for a in install[2:] if a not in ("--wait", "--create-namespace")]
    args = [str(values_file) if a == "my-values.yaml" else str(CHART) if a == "charts/mesial" else a for a in args]
    assert args[:2] == [RELEASE, str(CHART)] and options(install)["-n"] == [NAMESPACE]
    out = helm(k8s_tools, "template", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_every_helm_command_renders(k8s_tools: dict[str, Path], values_file: Path, installed: Any) -> None:
    for command in by("helm"):
        if command[1] in ("install", "upgrade", "template"):
            args = [str(values_file) if a == "my-values.yaml" else str(CHART) if a == "charts/mesial" else a
                    for a in command[2:] if a not in ("--wait", "--create-namespace")]  # fmt: skip
            # what `make image` writes into .tools/image/mesial.digest
            args = [re.sub(r"=\$\(cat [^)]*mesial.digest\)$", "=sha256:" + "0" * 64, a) for a in args]
            result = helm(k8s_tools, "template", *args, check=False)
            assert result.returncode == 0, f"{shlex.join(command)}: {result.stderr}"
        else:
            assert command[1] == "test" and command[2] == RELEASE and options(command)["-n"] == [NAMESPACE]


def test_the_secrets_the_pods_need_are_all_created(
    installed: list[dict[str, Any]], k8s_tools: dict[str, Path], tmp_path: Path
) -> None:
    # each `kubectl create` of the page, run client-side (no cluster): what it would create
    created: dict[str, set[str]] = {}
    for command in by("kubectl"):
        if "create" not in command:
            continue
        for source in options(command).get("--from-file", []):
            (tmp_path / source.split("=", 1)[-1]).write_text("-----BEGIN CERTIFICATE-----\n")
        result = subprocess.run(
            [str(k8s_tools["kubectl"]), "--kubeconfig=/dev/null", *command[1:], "--dry-run=client", "-o", "json"],
            capture_output=True, text=True, cwd=tmp_path, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{shlex.join(command)}: {result.stderr}"
        obj = json.loads(result.stdout)
        if obj["kind"] == "Secret":
            assert obj["metadata"]["namespace"] == NAMESPACE, shlex.join(command)
            created[obj["metadata"]["name"]] = set(obj.get("data", {}))
    needed: set[tuple[str, str]] = set()
    for doc in installed:
        spec = (doc.get("spec") or {}).get("template", {}).get("spec") if doc["kind"] in ("Deployment", "Job") else None
        spec = doc["spec"] if doc["kind"] == "Pod" else spec
        if not spec:
            continue
        needed |= {(p["name"], ".dockerconfigjson") for p in spec.get("imagePullSecrets", [])}
        for container in spec["containers"]:
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    needed.add((ref["name"], ref["key"]))
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                needed.add((volume["secret"]["secretName"], "ca.crt"))
            for source in (volume.get("projected") or {}).get("sources", []):
                if "secret" in source:
                    needed |= {(source["secret"]["name"], i["key"]) for i in source["secret"]["items"]}
    missing = sorted(f"{name}/{key}" for name, key in needed if key not in created.get(name, set()))
    assert not missing, f"docs/install.md creates no Secret key for {missing}"


def test_named_objects_exist(installed: list[dict[str, Any]]) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in installed}
    services = {d["metadata"]["name"]: d for d in installed if d["kind"] == "Service"}
    checked = 0
    for command in by("kubectl"):
        for arg in command:
            kind, _, name = arg.partition("/")
            if kind == "deploy":
                assert ("Deployment", name) in names, shlex.join(command)
                checked += 1
            elif kind == "svc":
                assert name in services, shlex.join(command)
                _, remote = command[-1].split(":")
                assert int(remote) in {p["port"] for p in services[name]["spec"]["ports"]}
                checked += 1
        if "-f" in command and command[1] == "apply":
            assert (ROOT / command[command.index("-f") + 1]).is_file(), shlex.join(command)
    assert checked >= 4
    text = DOC.read_text()
    for account in ("mesial-api", "mesial-operator"):
        assert ("ServiceAccount", account) in names and f"`{account}`" in text
    assert ("Job", "mesial-migrate") in names and "`mesial-migrate`" in text


def _deployment_of_role(installed: list[dict[str, Any]], role: str) -> dict[str, Any]:
    for doc in installed:
        if doc["kind"] == "Deployment":
            env = {e["name"]: e.get("value") for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]}
            if env.get("MESIAL_VAULT__KUBERNETES_ROLE") == role:
                return dict(doc["spec"]["template"]["spec"])
    raise AssertionError(f"no Deployment logs in to Vault as {role}")


def test_vault_commands_match_the_values_and_the_rendered_pods(
    installed: list[dict[str, Any]], values_file: Path
) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    transit, auth, audit_key = (values["vault"][k] for k in ("transitMount", "kubernetesMount", "auditSigningKey"))
    bao = ROOT / ".venv" / "bin" / "bao"
    bao_cli = str(bao) if bao.exists() else shutil.which("bao")
    roles: dict[str, dict[str, list[str]]] = {}
    policies = set()
    for command in by("vault"):
        sub = [a for a in command[1:3] if not a.startswith("-") and "/" not in a and "=" not in a]
        if bao_cli:
            assert subprocess.run([bao_cli, *sub, "-h"], capture_output=True).returncode == 0, shlex.join(command)
        if sub == ["secrets", "enable"]:
            assert options(command)["-path"] == [transit] and command[-1] == "transit"
        elif sub == ["auth", "enable"]:
            assert options(command)["-path"] == [auth] and command[-1] == "kubernetes"
        elif sub == ["policy", "write"]:
            policies.add(command[3])
        elif command[1] == "write":
            path = command[2]
            if path.startswith(f"{transit}/keys/"):
                assert path == f"{transit}/keys/{audit_key}" and options(command)["type"] == ["ed25519"]
            elif path == f"auth/{auth}/config":
                assert options(command)["kubernetes_host"][0].startswith("https://")
            else:
                assert path.startswith(f"auth/{auth}/role/"), path
                roles[path.rsplit("/", 1)[1]] = options(command)
    assert set(roles) == {values["api"]["vaultRole"], values["operator"]["vaultRole"]}
    for role, opts in roles.items():
        spec = _deployment_of_role(installed, role)
        assert opts["bound_service_account_names"] == [spec["serviceAccountName"]]
        assert opts["bound_service_account_namespaces"] == [NAMESPACE]
        (token,) = [v for v in spec["volumes"] if v["name"] == "vault-token"]
        assert opts["audience"] == [token["projected"]["sources"][0]["serviceAccountToken"]["audience"]]
        assert opts["token_policies"][0] in policies
    assert policies == set(roles) | {values["vault"]["alignerPolicy"]}  # the aligner's: granted by the tenants' roles


def _parses(args: list[str]) -> str:
    cmd: click.Command = root
    name, rest = "mesial", list(args)
    while isinstance(cmd, click.Group):
        ctx = cmd.make_context(name, rest)
        with warnings.catch_warnings():  # click 8.2 deprecates protected_args; 8.1 needs it
            warnings.simplefilter("ignore", DeprecationWarning)
            remaining = [*ctx.protected_args, *ctx.args]
        resolved_name, resolved, rest = cmd.resolve_command(ctx, remaining)
        assert resolved is not None and resolved_name is not None
        name, cmd = resolved_name, resolved
    cmd.make_context(name, rest)
    return name


def test_mesial_commands_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = [c[c.index("--") + 1 :] for c in by("kubectl", "-n", NAMESPACE, "exec")]
    mesial = [*by("mesial"), *inner]
    assert len(mesial) >= 4
    monkeypatch.chdir(tmp_path)  # files the commands read exist here (empty): the parse is what is checked
    for command in mesial:
        assert command[0] == "mesial"
        for arg in command:
            if re.fullmatch(r"[\w.-]+\.(jsonl|json|ply|stl)", arg):
                (tmp_path / arg).touch()
        _parses(command[1:])


def test_curl_calls_are_routes_of_the_api() -> None:
    paths = json.loads((ROOT / "docs" / "openapi.json").read_text())["paths"]
    patterns = {re.sub(r"\{[a-z_]+\}", "[^/]+", path): ops for path, ops in paths.items()}
    calls = by("curl")
    assert len(calls) >= 10
    for command in calls:
        method = options(command).get("-X", ["GET"])[0].lower()
        (url,) = [a for a in command[1:] if a.startswith("http")]
        path = re.sub(r"^https?://[^/]+", "", url).split("?", 1)[0]
        path = re.sub(r"\$[A-Z_]+", "x", path)
        matched = [ops for pattern, ops in patterns.items() if re.fullmatch(pattern, path)]
        assert matched and method in matched[0], f"{method.upper()} {path} is not a route of the API"


def test_the_bucket_and_the_tenant_names_agree(values_file: Path) -> None:
    values = yaml.safe_load(values_file.read_text())
    (mb,) = by("aws")
    assert mb[-1] == f"s3://{values['store']['bucket']}"
    (apply,) = [c for c in by("kubectl") if "apply" in c]
    org = yaml.safe_load((ROOT / apply[-1]).read_text())["metadata"]["name"]
    (wait,) = [c for c in by("kubectl") if "wait" in c]
    assert f"morg/{org}" in wait
    assert f'"name": "{org}"' in DOC.read_text() and f"/v1/orgs/{org}/keys" in DOC.read_text()


def test_the_chart_readme_names_the_rendered_service_accounts(installed: list[dict[str, Any]]) -> None:
    readme = (CHART / "README.md").read_text()
    for doc in installed:
        if doc["kind"] == "ServiceAccount":
            assert f"`{doc['metadata']['name']}`" in readme, doc["metadata"]["name"]
