"""docs/install.md, "From an empty cluster to a first aligned case", executed on a cluster of its own
(of the selected backend): every command of the page runs as written (kubectl, helm, the Vault CLI, curl, mesial), in
the page's order, except where this stack cannot, and then the substitute is fixed and said here
(and in docs/testing.md):

| the page                                              | here                                                    |
|-------------------------------------------------------|---------------------------------------------------------|
| `vault ...`                                           | `bao ...` (the OpenBao CLI; a fresh OpenBao of the test's own) |
| `https://vault.example.com:8200`, `https://s3.example.com`, the `postgres://...` URL | the test run's OpenBao, SeaweedFS, and a database of its own on its PostgreSQL (plain http, at the address pods reach them: loopback, or the relays of the kind backend; the CA files are a stand-in PEM) |
| `aws ... s3 mb s3://mesial`                           | the bucket made with botocore (no AWS CLI here)         |
| `vault write auth/kubernetes/config kubernetes_host=https://kubernetes.default.svc:443` | the page's own note for a Vault outside the cluster: this API server's URL, its CA and a reviewer token |
| `helm install ... --wait`                             | plus a values file of the stack's: one API replica and the backend's values (local: free ports for the API and the operator, pods share the host's network; kind: the loaded image, tenant egress to the relays) |
| `kubectl exec deploy/mesial-api -- mesial ...`         | a pod of the API Deployment's template running the same command (no kubelet API) |
| `kubectl port-forward svc/mesial-api 8080:8080`       | the Service's address from the node agent (kind: a `kubectl port-forward` to a free port), in place of `http://127.0.0.1:8080` |
| `curl .../v1/jobs/$JOB` once                          | repeated until the job is finished                      |

The values the page says to keep (`$PLATFORM_KEY`, `$OPERATOR_KEY`, `$ADMIN_KEY`, `$AUDITOR_KEY`,
`$UPPER`, `$LOWER`, `$BITE`, `$JOB`) are taken from the outputs the page names.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from mesial.common import services as svc
from tests.cluster.controlplane import BIN
from tests.e2e_cluster.backends import E2ECluster, running_cluster
from tests.e2e_cluster.conftest import Kube, e2e_database, eventually, merged, refusals
from tests.e2e_cluster.test_api import printed_key, run_as_api

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "install.md"
NAMESPACE = "mesial-system"


def walkthrough() -> tuple[str, list[tuple[str, str]]]:
    """The page's `my-values.yaml` and its commands in execution order, each with its section: the
    walk-through's step 1, then "Vault policies" (it needs my-values.yaml; step 4 needs its file),
    then steps 2 to 9."""
    text = DOC.read_text()
    policies = text.split("## Vault policies", 1)[1].split("\n## ", 1)[0]
    walk = text.split("## From an empty cluster to a first aligned case", 1)[1]
    values = walk.split("`my-values.yaml`", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    steps = re.split(r"\n### ", walk)[1:]

    def lines(section: str) -> list[str]:
        out = []
        for block in re.findall(r"```sh\n(.*?)```", section, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    out.append(line.strip())
        return out

    ordered = [(steps[0].split("\n", 1)[0], c) for c in lines(steps[0])]
    ordered += [("Vault policies", c) for c in lines(policies)]
    for step in steps[1:]:
        ordered += [(step.split("\n", 1)[0], c) for c in lines(step)]
    return values, ordered


@pytest.fixture(scope="module")
def stack(
    postgres: svc.ServiceInfo, seaweedfs: svc.ServiceInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """An empty cluster and a fresh OpenBao (the page's Vault starts without transit or auth)."""
    with running_cluster("mesial-e2e-install-") as cluster:
        base = tmp_path_factory.mktemp("install-openbao")
        vault = svc.OpenBaoService(base / "openbao", tied_to_parent=True)
        try:
            openbao = vault.start()
            yield {
                "cluster": cluster,
                "openbao": openbao,
                "database": e2e_database(postgres, "install"),
                "seaweedfs": seaweedfs,
                "work": tmp_path_factory.mktemp("install"),
            }
        finally:
            vault.stop()


class Shell:
    """Runs the page's lines with bash in a working directory holding the checkout's `charts/` and
    `crds/`, with `vault` meaning the OpenBao CLI, and the page's variables in the environment."""

    def __init__(self, stack: dict[str, Any]) -> None:
        self.work: Path = stack["work"]
        cluster: E2ECluster = stack["cluster"]
        for name in ("charts", "crds"):
            (self.work / name).symlink_to(ROOT / name)
        shims = self.work / "bin"
        shims.mkdir()
        (shims / "vault").write_text(f'#!/bin/sh\nexec {svc.bao_binary()} "$@"\n')
        (shims / "python3").symlink_to(Path(sys.executable))
        (shims / "vault").chmod(0o755)
        openbao = stack["openbao"]
        self.env = {
            "PATH": f"{shims}:{BIN}:{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(self.work),
            "KUBECONFIG": cluster.kubeconfig,
            "VAULT_ADDR": openbao.url,
            "BAO_ADDR": openbao.url,
            "VAULT_TOKEN": openbao.credentials["root_token"],
            "BAO_TOKEN": openbao.credentials["root_token"],
            "REGISTRY_TOKEN": "not-used-here",
            "S3_ACCESS_KEY": stack["seaweedfs"].credentials["access_key"],
            "S3_SECRET_KEY": stack["seaweedfs"].credentials["secret_key"],
        }

    def __call__(self, line: str) -> str:
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-ec", line],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, (
            f"{line}\n--- exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        )
        return result.stdout


def test_install_md_from_an_empty_cluster_to_an_audit_export(stack: dict[str, Any]) -> None:
    cluster: E2ECluster = stack["cluster"]
    kube = Kube(cluster)
    shell = Shell(stack)
    openbao, seaweedfs = stack["openbao"], stack["seaweedfs"]
    values, lines = walkthrough()
    api_url = ""  # the Service's address, once the release made it

    def substitute(line: str) -> str:
        # Where pods reach them; the host reaches these addresses too.
        line = line.replace("https://vault.example.com:8200", cluster.reachable_url(openbao.url))
        line = line.replace("https://s3.example.com", cluster.reachable_url(seaweedfs.url))
        line = line.replace(
            "postgres://mesial:$DB_PASSWORD@postgres.db.svc:5432/mesial", cluster.reachable_url(stack["database"])
        )
        return line.replace("http://127.0.0.1:8080", api_url)

    (shell.work / "my-values.yaml").write_text(substitute(values))
    # The page's CA files: its endpoints are TLS, this stack's are plain http on loopback.
    for name in ("vault-ca.pem", "s3-ca.pem"):
        shutil.copy(cluster.ca, shell.work / name)
    stack_values = shell.work / "stack-values.yaml"
    more: dict[str, Any] = {"api": {"replicas": 1}, "operator": {"retryDelaySeconds": 2}}
    egress = {name: cluster.tenant_egress(url) for name, url in (("vault", openbao.url), ("store", seaweedfs.url))}
    if all(egress.values()):
        more["operator"]["tenantEgress"] = egress
    stack_values.write_text(json.dumps(merged(more, cluster.chart_values())))
    outputs: dict[str, Any] = {}
    ran: list[str] = []
    for section, line in lines:
        if " exec deploy/mesial-api -- " in line:
            args = line.split(" -- ", 1)[1].split()[1:]
            key = printed_key(run_as_api(kube, cluster, *args))
            shell.env["PLATFORM_KEY" if args[:2] == ["admin", "bootstrap"] else "OPERATOR_KEY"] = key
        elif " port-forward " in line:
            api_url = cluster.service_url(NAMESPACE, "mesial-api", 8080)
            continue
        elif line.startswith("aws ") and " s3 mb s3://" in line:
            bucket = line.rsplit("s3://", 1)[1]
            client = botocore.session.get_session().create_client(
                "s3", endpoint_url=seaweedfs.url, aws_access_key_id=shell.env["S3_ACCESS_KEY"],
                aws_secret_access_key=shell.env["S3_SECRET_KEY"], region_name="us-east-1",
            )  # fmt: skip
            if bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
                client.create_bucket(Bucket=bucket)
        elif line.startswith("vault write auth/kubernetes/config "):
            kube("create", "serviceaccount", "vault-auth", "-n", "kube-system")
            kube("create", "clusterrolebinding", "vault-auth-delegator", "--clusterrole=system:auth-delegator",
                 "--serviceaccount=kube-system:vault-auth")  # fmt: skip
            reviewer = kube("create", "token", "vault-auth", "-n", "kube-system", "--duration=24h").stdout.strip()
            shell(
                f"vault write auth/kubernetes/config kubernetes_host={cluster.server} "
                f"kubernetes_ca_cert=@{cluster.ca} token_reviewer_jwt={reviewer}"
            )
        elif line.startswith("helm install "):
            shell(f"{line} -f {stack_values} --timeout 5m")
        elif re.fullmatch(r'curl -fsS "http://127\.0\.0\.1:8080/v1/jobs/\$JOB" .*', line):

            def finished(command: str = substitute(line)) -> dict[str, Any] | None:
                view: dict[str, Any] = json.loads(shell(command))
                return view if view["state"] in ("succeeded", "failed") else None

            outputs["job"] = eventually(finished, timeout=600, interval=3, what="the job finished")
        else:
            out = shell(substitute(line))
            # What the page says to keep, from the outputs it names.
            if "/v1/orgs/acme-dental/keys" in line:
                shell.env["ADMIN_KEY"] = json.loads(out)["key"]
            elif line.endswith("""-d '{"role": "auditor"}'"""):
                shell.env["AUDITOR_KEY"] = json.loads(out)["key"]
            elif "/v1/scans?kind=" in line:
                shell.env[re.search(r"kind=(\w+)", line).group(1).upper()] = json.loads(out)["id"]  # type: ignore[union-attr]
            elif line.startswith("curl") and line.endswith(
                '/v1/jobs -H "Authorization: Bearer $ADMIN_KEY" -H \'Content-Type: application/json\' -d "{\\"upper\\": \\"$UPPER\\", \\"lower\\": \\"$LOWER\\", \\"bites\\": [\\"$BITE\\"]}"'
            ):
                shell.env["JOB"] = json.loads(out)["id"]
            elif "/artifacts/result.json/link" in line:
                outputs["link"] = json.loads(out)
            elif '/artifacts"' in line:
                outputs["artifacts"] = json.loads(out)
            elif line.startswith("mesial audit verify"):
                outputs["verify"] = out
        ran.append(f"{section}: {line}")

    # The page's promises, checked on what the commands did.
    job = outputs["job"]
    assert job["state"] == "succeeded" and job["result"] in ("ok", "not_confident"), job
    names = [a["name"] for a in outputs["artifacts"]["items"]]
    assert "result.json" in names, names
    raw = subprocess.run(
        ["curl", "-fsS", api_url + outputs["link"]["url"]], capture_output=True, check=True, timeout=60
    ).stdout
    assert json.loads(raw)["status"] == job["result"]
    export = shell.work / "audit-acme-dental.jsonl"
    events = [json.loads(line) for line in export.read_text().splitlines() if line.strip()]
    actions = {e.get("action") for e in events}
    assert {"scan.uploaded", "job.created"} <= actions, actions
    user = f"system:serviceaccount:{NAMESPACE}:mesial-operator"
    refused = [r for r in refusals(cluster, user) if not r.binding_race]
    assert not refused, "\n".join(map(str, refused))
    assert len(ran) == len(lines) - 1  # every line but the port-forward ran (as written or substituted)
