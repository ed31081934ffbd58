"""Aligner Jobs behind private CAs and a private registry: the operator copies its CAs and the
chart's pull secrets into each tenant namespace, and the Job's pod uses them."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mesial.common.audit_sinks import JsonlAuditSink
from mesial.common.settings import Settings
from mesial.operator.k8s import K8s
from mesial.operator.runtime import Runtime
from mesial.operator.testing import Harness, emulated
from tests.chart.tls import make_private_ca
from tests.operator.conftest import eventually, organization_ready
from tests.operator.helpers import get
from tests.operator.test_scanjob import JOB, scanjob

REGISTRY = {"auths": {"registry.lab.example": {"auth": base64.b64encode(b"robot:s3cret").decode()}}}


@pytest.fixture
def trust_settings(operator_settings: Settings, tmp_path: Path) -> Settings:
    ca = make_private_ca(tmp_path)
    pulls = tmp_path / "pull-secrets"
    (pulls / "regcred").mkdir(parents=True)
    (pulls / "regcred" / ".dockerconfigjson").write_text(json.dumps(REGISTRY))
    (pulls / "..data").mkdir()  # what a projected volume also holds: not a secret
    return operator_settings.model_copy(
        update={
            "vault": operator_settings.vault.model_copy(update={"ca_cert": ca.ca_cert}),
            "store": operator_settings.store.model_copy(update={"ca_cert": ca.ca_cert}),
            "operator": operator_settings.operator.model_copy(update={"pull_secrets_dir": pulls}),
        }
    )


@pytest.fixture
async def trust_harness(trust_settings: Settings) -> AsyncIterator[Harness]:
    async def factory(k8s: K8s) -> Runtime:
        return await Runtime.create(trust_settings, k8s, audit=JsonlAuditSink(trust_settings.operator.audit_jsonl_path))

    async with emulated(trust_settings, factory) as h:
        yield h


def settings_from_env(env: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("MESIAL_")]:
            patch.delenv(key)
        for item in env:
            patch.setenv(item["name"], item.get("value", "from-a-secret"))
        return Settings(_env_file=None)


async def test_aligner_jobs_get_the_cas_and_the_pull_secrets(
    trust_harness: Harness, trust_settings: Settings, org_name: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    k8s = trust_harness.client
    name = org_name("trust")
    ns = f"mesial-org-{name}"
    await organization_ready(k8s, name)
    # the copies: the CA the operator trusts, the registry credentials as a dockerconfigjson Secret
    ca = await get(k8s, "v1", "ConfigMap", "mesial-ca", ns)
    pem = trust_settings.vault.ca_cert.read_text() if trust_settings.vault.ca_cert else ""
    assert ca["data"] == {"vault-ca.crt": pem, "store-ca.crt": pem}
    pull = await get(k8s, "v1", "Secret", "regcred", ns)
    assert pull["type"] == "kubernetes.io/dockerconfigjson"
    assert json.loads(base64.b64decode(pull["data"][".dockerconfigjson"])) == REGISTRY
    # the Job's pod pulls with it and its settings point at the mounted CAs
    await k8s.create(scanjob("case-ca", ns))
    job = await eventually(lambda: k8s.get(*JOB, "scanjob-case-ca", ns))
    pod = job["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert {"name": "mesial-ca", "configMap": {"name": "mesial-ca"}} in pod["volumes"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    aligner = settings_from_env(pod["containers"][0]["env"], monkeypatch)
    assert str(aligner.vault.ca_cert) == f"{mounts['mesial-ca']}/vault-ca.crt"
    assert str(aligner.store.ca_cert) == f"{mounts['mesial-ca']}/store-ca.crt"
    # drift: a CA edited by hand comes back
    await k8s.patch("v1", "ConfigMap", "mesial-ca", {"data": {"vault-ca.crt": "forged"}}, ns)

    async def restored() -> bool:
        live = await get(k8s, "v1", "ConfigMap", "mesial-ca", ns)
        return bool(live["data"]["vault-ca.crt"] == pem)

    await eventually(restored)
