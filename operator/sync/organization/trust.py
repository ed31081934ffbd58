"""What aligner Jobs need to trust and pull: the private CAs and the registry pull secrets.

A pod can mount only ConfigMaps and Secrets of its own namespace, so the operator copies into
each tenant namespace (1) ConfigMap ``mesial-ca`` with the CAs the operator itself trusts for
Vault and the object store (``vault.ca_cert``, ``store.ca_cert``: the chart's ``vault.caSecret``
and ``store.caSecret``), and (2) each registry pull secret the chart mounts into the operator
under ``operator.pull_secrets_dir/<name>/.dockerconfigjson`` (the chart's
``global.imagePullSecrets``), as a ``kubernetes.io/dockerconfigjson`` Secret of the same name.
:func:`job_trust` is what an aligner Job's pod gets from them: ``imagePullSecrets``, the CA
mount and ``MESIAL_VAULT__CA_CERT``/``MESIAL_STORE__CA_CERT``. Nothing configured, nothing copied.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesial.common.errors import ConfigurationError
from mesial.common.settings import Settings
from mesial.operator.k8s import Applied, K8s, Obj
from mesial.operator.sync.organization.model import OrgView

CA_CONFIGMAP = "mesial-ca"
CA_DIR = "/etc/mesial/ca"
VAULT_CA = "vault-ca.crt"
STORE_CA = "store-ca.crt"
DOCKERCONFIG = ".dockerconfigjson"


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"{what} not readable at {path}: {exc.strerror}") from exc


def ca_bundle(settings: Settings) -> dict[str, str]:
    """The CA files the aligner gets, by ConfigMap key (only those configured)."""
    cas = {}
    if settings.vault.ca_cert is not None:
        cas[VAULT_CA] = _read(settings.vault.ca_cert, "vault.ca_cert")
    if settings.store.ca_cert is not None:
        cas[STORE_CA] = _read(settings.store.ca_cert, "store.ca_cert")
    return cas


def pull_secret_names(settings: Settings) -> list[str]:
    """The folders of ``operator.pull_secrets_dir``, sorted (a projected volume's ``..data`` skipped)."""
    root = settings.operator.pull_secrets_dir
    if root is None:
        return []
    if not root.is_dir():
        raise ConfigurationError(f"operator.pull_secrets_dir {root} is not a directory")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def pull_secrets(settings: Settings) -> dict[str, bytes]:
    """Registry credentials by Secret name, from ``operator.pull_secrets_dir``."""
    found = {}
    for name in pull_secret_names(settings):
        assert settings.operator.pull_secrets_dir is not None
        folder = settings.operator.pull_secrets_dir / name
        config = folder / DOCKERCONFIG
        if not config.is_file():
            raise ConfigurationError(f"pull secret {folder.name} has no {DOCKERCONFIG} at {config}")
        found[folder.name] = config.read_bytes()
    return found


def desired_trust(org: OrgView, settings: Settings) -> list[Obj]:
    labels = org.labels(settings.operator)
    objects: list[Obj] = []
    cas = ca_bundle(settings)
    if cas:
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": CA_CONFIGMAP, "namespace": org.namespace, "labels": labels},
                "data": cas,
            }
        )
    for name, config in pull_secrets(settings).items():
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/dockerconfigjson",
                "metadata": {"name": name, "namespace": org.namespace, "labels": labels},
                "data": {DOCKERCONFIG: base64.b64encode(config).decode()},
            }
        )
    return objects


async def sync_trust(k8s: K8s, org: OrgView, settings: Settings) -> list[Applied]:
    return [await k8s.apply(obj) for obj in desired_trust(org, settings)]


@dataclass(frozen=True)
class JobTrust:
    """The parts of an aligner Job's pod that :func:`sync_trust`'s copies make possible."""

    image_pull_secrets: list[dict[str, str]] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)


def job_trust(settings: Settings) -> JobTrust:
    pulls = [{"name": name} for name in pull_secret_names(settings)]
    env = []
    if settings.vault.ca_cert is not None:
        env.append({"name": "MESIAL_VAULT__CA_CERT", "value": f"{CA_DIR}/{VAULT_CA}"})
    if settings.store.ca_cert is not None:
        env.append({"name": "MESIAL_STORE__CA_CERT", "value": f"{CA_DIR}/{STORE_CA}"})
    if not env:
        return JobTrust(pulls)
    return JobTrust(
        pulls,
        env,
        [{"name": "mesial-ca", "configMap": {"name": CA_CONFIGMAP}}],
        [{"name": "mesial-ca", "mountPath": CA_DIR, "readOnly": True}],
    )
