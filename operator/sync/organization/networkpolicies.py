"""NetworkPolicies rendered from ``policies/network/*.yaml.tmpl``: deny all, then allow egress.

Egress is allowed only to DNS, Vault, the object store and the audit collector (each a
set of CIDRs and/or namespace+pod selectors from the operator settings), plus the
Organization's own ``spec.egress.extra`` destinations. Nothing may reach tenant pods.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import yaml

from mesial.common.errors import ConfigurationError
from mesial.common.provisioning import DEFAULT_POLICIES_DIR
from mesial.common.settings import OperatorSettings
from mesial.operator.k8s import Applied, K8s, Obj
from mesial.operator.sync.organization.model import OrgView

TEMPLATES = ("default-deny.yaml.tmpl", "allow-egress.yaml.tmpl")


def _peers(egress: OperatorSettings.Egress) -> list[dict[str, Any]]:
    peers: list[dict[str, Any]] = [{"ipBlock": {"cidr": cidr}} for cidr in egress.cidrs]
    if egress.namespace_selector:
        peer: dict[str, Any] = {"namespaceSelector": {"matchLabels": dict(egress.namespace_selector)}}
        if egress.pod_selector:
            peer["podSelector"] = {"matchLabels": dict(egress.pod_selector)}
        peers.append(peer)
    return peers


def _rule(peers: list[dict[str, Any]], ports: list[int], protocols: tuple[str, ...] = ("TCP",)) -> dict[str, Any]:
    rule: dict[str, Any] = {"to": peers}
    if ports:
        rule["ports"] = [{"protocol": proto, "port": port} for port in ports for proto in protocols]
    return rule


def egress_rules(org: OrgView, settings: OperatorSettings) -> list[dict[str, Any]]:
    rules = []
    for egress, protocols in (
        (settings.egress_dns, ("UDP", "TCP")),
        (settings.egress_vault, ("TCP",)),
        (settings.egress_store, ("TCP",)),
        (settings.egress_audit, ("TCP",)),
    ):
        peers = _peers(egress)
        if peers:
            rules.append(_rule(peers, egress.ports, protocols))
    for extra in org.extra_egress:
        rules.append(_rule([{"ipBlock": {"cidr": extra.cidr}}], list(extra.ports)))
    return rules


def desired_networkpolicies(org: OrgView, settings: OperatorSettings) -> list[Obj]:
    directory = (settings.policies_dir or DEFAULT_POLICIES_DIR) / "network"
    values = {
        "org": org.name,
        "namespace": org.namespace,
        "labels": json.dumps(org.labels(settings)),
        "egress": json.dumps(egress_rules(org, settings)),
    }
    return [_render(directory / name, values) for name in TEMPLATES]


def _render(path: Path, values: dict[str, str]) -> Obj:
    try:
        text = string.Template(path.read_text()).substitute(values)
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigurationError(f"NetworkPolicy template {path} cannot be rendered: {exc}") from exc
    obj: Obj = yaml.safe_load(text)
    return obj


async def sync_networkpolicies(k8s: K8s, org: OrgView, settings: OperatorSettings) -> list[Applied]:
    return [await k8s.apply(obj) for obj in desired_networkpolicies(org, settings)]
