"""An Organization as the sync steps read it: validated spec, derived names, common labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mesial.common.errors import ConfigurationError, InputError
from mesial.common.settings import OperatorSettings
from mesial.common.tenancy import namespace_for, transit_key_for, validate_org_name

MANAGED_BY = {"app.kubernetes.io/managed-by": "mesial-operator"}


@dataclass(frozen=True)
class ExtraEgress:
    """One checked ``spec.egress.extra`` destination (``networkpolicies.extra_egress``)."""

    cidr: str
    ports: tuple[int, ...]


@dataclass(frozen=True)
class OrgView:
    name: str
    namespace: str
    key_name: str
    tier: str
    extra_egress: tuple[Any, ...]  # spec.egress.extra as written: checked by the network step
    rotation_period: str
    force_delete: bool
    generation: int | None
    uid: str

    @classmethod
    def from_body(cls, body: Any) -> OrgView:
        """Read and re-check the spec (the API server validates it too; the emulator does not)."""
        name = validate_org_name(body["metadata"]["name"])
        spec = body.get("spec") or {}
        tier = spec.get("tier", "small")
        extra = (spec.get("egress") or {}).get("extra") or []
        deletion = spec.get("deletion") or {}
        return cls(
            name=name,
            namespace=namespace_for(name),
            key_name=transit_key_for(name),
            tier=str(tier),
            extra_egress=tuple(extra) if isinstance(extra, list) else (extra,),
            rotation_period=str(spec.get("keyRotationPeriod", "720h")),
            force_delete=bool(deletion.get("force", False)),
            generation=body["metadata"].get("generation"),
            uid=str(body["metadata"].get("uid", "")),
        )

    def tier_of(self, settings: OperatorSettings) -> OperatorSettings.Tier:
        try:
            return settings.tiers[self.tier]
        except KeyError:
            raise InputError(f"unknown tier {self.tier!r} (known: {', '.join(sorted(settings.tiers))})") from None

    def labels(self, settings: OperatorSettings) -> dict[str, str]:
        if not settings.tenant_label:
            raise ConfigurationError("operator.tenant_label is empty")
        return {settings.tenant_label: self.name, **MANAGED_BY}
