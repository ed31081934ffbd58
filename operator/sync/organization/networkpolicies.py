"""NetworkPolicies rendered from ``policies/network/*.yaml.tmpl``: deny all, then allow egress.

Every pod of the tenant may reach DNS and the Organization's own ``spec.egress.extra``
destinations; only aligner pods (label ``app.kubernetes.io/component: aligner``, which
the operator puts on its Jobs) may reach Vault, the object store and the audit collector
(each a set of CIDRs and/or namespace+pod selectors from the operator settings). Nothing
may reach tenant pods.

``spec.egress.extra`` is untrusted (the CRD's schema checks it too, but the emulator, an
old CRD or a hand-made object may not): each CIDR must be a canonical IPv4 network, and
one that overlaps the metadata range, loopback, ``0.0.0.0/8`` (so also ``0.0.0.0/0``) or
the cluster's own ranges (``operator.cluster_cidrs``) is refused unless it lies inside a
range the platform allows (``operator.egress_extra_allowed``). A refused spec fails the
network step (``NetworkReady=False``): no policy is written from it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import string
from pathlib import Path
from typing import Any

import yaml

from mesial.common.contract import sanitize_text
from mesial.common.errors import ConfigurationError, InputError
from mesial.common.provisioning import DEFAULT_POLICIES_DIR
from mesial.common.settings import OperatorSettings
from mesial.operator.k8s import Applied, K8s, Obj
from mesial.operator.sync.organization.model import ExtraEgress, OrgView

TEMPLATES = ("default-deny.yaml.tmpl", "allow-egress.yaml.tmpl", "allow-egress-aligner.yaml.tmpl")
ALIGNER_SELECTOR = {"app.kubernetes.io/component": "aligner"}
# Never an extra destination: link-local (cloud metadata), loopback, "this network" (so 0.0.0.0/0).
ALWAYS_REFUSED = tuple(ipaddress.IPv4Network(c) for c in ("169.254.0.0/16", "127.0.0.0/8", "0.0.0.0/8"))
MAX_PORTS = 8


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


def extra_egress(org: OrgView, settings: OperatorSettings) -> tuple[ExtraEgress, ...]:
    """The Organization's extra destinations, checked; ``InputError`` names the first refused one."""
    refused = [*ALWAYS_REFUSED, *(ipaddress.IPv4Network(c) for c in settings.cluster_cidrs)]
    allowed = [ipaddress.IPv4Network(c) for c in settings.egress_extra_allowed]
    checked = []
    for item in org.extra_egress:
        raw = item.get("cidr") if isinstance(item, dict) else None
        text = sanitize_text(raw, 48)
        try:
            if not isinstance(raw, str):
                raise ValueError("not a string")
            network = ipaddress.IPv4Network(raw, strict=True)
        except ValueError:
            raise InputError(f"spec.egress.extra: {text!r} is not an IPv4 CIDR (a network address/prefix)") from None
        blocked = next((r for r in refused if network.overlaps(r)), None)
        if blocked is not None and not any(network.subnet_of(a) for a in allowed):
            raise InputError(
                f"spec.egress.extra: {network} is refused (overlaps {blocked}: metadata, loopback or the "
                "cluster's own ranges; the platform may allow it in operator.egress_extra_allowed)"
            )
        ports = item.get("ports")
        if (
            not isinstance(ports, list)
            or not 1 <= len(ports) <= MAX_PORTS
            or not all(type(p) is int and 0 < p < 65536 for p in ports)
        ):
            raise InputError(f"spec.egress.extra: ports of {network} must be 1 to {MAX_PORTS} TCP ports (1-65535)")
        checked.append(ExtraEgress(str(network), tuple(ports)))
    return tuple(checked)


def egress_rules(org: OrgView, settings: OperatorSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rules for every pod: DNS and the extra destinations, rules for aligner pods: Vault, store, audit)."""
    everyone: list[dict[str, Any]] = []
    aligner: list[dict[str, Any]] = []
    for egress, protocols, rules in (
        (settings.egress_dns, ("UDP", "TCP"), everyone),
        (settings.egress_vault, ("TCP",), aligner),
        (settings.egress_store, ("TCP",), aligner),
        (settings.egress_audit, ("TCP",), aligner),
    ):
        peers = _peers(egress)
        if peers:
            rules.append(_rule(peers, egress.ports, protocols))
    for extra in extra_egress(org, settings):
        everyone.append(_rule([{"ipBlock": {"cidr": extra.cidr}}], list(extra.ports)))
    return everyone, aligner


def desired_networkpolicies(org: OrgView, settings: OperatorSettings) -> list[Obj]:
    """default-deny, allow-egress (every pod) and allow-egress-aligner; ``InputError`` for a refused spec."""
    everyone, aligner = egress_rules(org, settings)
    return _rendered(org, settings, everyone, aligner)


def _rendered(
    org: OrgView, settings: OperatorSettings, everyone: list[dict[str, Any]], aligner: list[dict[str, Any]]
) -> list[Obj]:
    directory = (settings.policies_dir or DEFAULT_POLICIES_DIR) / "network"
    values = {
        "org": org.name,
        "namespace": org.namespace,
        "labels": json.dumps(org.labels(settings)),
        "egress": json.dumps(everyone),
        "aligner_egress": json.dumps(aligner),
        "aligner_selector": json.dumps({"matchLabels": ALIGNER_SELECTOR}),
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
    try:
        wanted = desired_networkpolicies(org, settings)
    except InputError:
        # a refused spec.egress.extra: the namespace stays closed (default-deny and the aligner's
        # own egress are kept), the previous allow-egress is left as it was, and the step fails
        deny, _, aligner = _rendered(org, settings, [], egress_rules(_without_extra(org), settings)[1])
        for obj in (deny, aligner):
            await k8s.apply(obj)
        raise
    return [await k8s.apply(obj) for obj in wanted]


def _without_extra(org: OrgView) -> OrgView:
    return dataclasses.replace(org, extra_egress=())
