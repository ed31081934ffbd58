"""Opening a signed download link: every refusal of an authentic link lands in its tenant's chain.

A link's MAC proves which organization, job and artifact it names, so once it is
authentic its tenant is known even when the link is refused: the audit mark is filled in
*before* each check, and an expired link, a revoked issuer, a credential of another
organization or an artifact that is gone are ``artifact.downloaded`` events with outcome
``denied`` (and a ``reason``) in the data owner's chain. A token that is not authentic
names no tenant anyone can trust: it is logged and rate-limited, not chained.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesial.api.auth import OidcVerifier, actor_active, authenticate
from mesial.api.errors import LinkRefused, NotFound, Unauthenticated
from mesial.api.models import Artifact, Organization
from mesial.api.services.links import LinkSigner, expired
from mesial.api.types import AuditMark


@dataclass(frozen=True)
class Download:
    org: str
    artifact: Artifact


async def open_link(
    links: LinkSigner, oidc: OidcVerifier, token: str, presented: str | None, mark: AuditMark | None
) -> Download:
    """The artifact a link opens, or the refusal (audited in the link's tenant chain)."""
    claims = links.authentic(token)
    org = await Organization.get_or_none(id=claims.org_id)
    artifact = await Artifact.get_or_none(org_id=claims.org_id, job_id=claims.job_id, name=claims.artifact)
    mark = mark or AuditMark("artifact.downloaded", "artifact")
    if org is not None:
        mark.tenant, mark.actor = str(org.name), f"link:{claims.issued_by}"
        mark.resource_id = artifact.id if artifact is not None else ""

    def refuse(reason: str, message: str) -> LinkRefused:
        mark.details["reason"] = reason
        return LinkRefused(message)

    if expired(claims):
        raise refuse("expired", "link has expired")
    if not await actor_active(claims.issued_by):
        raise refuse("issuer_revoked", "the credential that issued this link was revoked")
    if presented is not None:
        try:
            principal = await authenticate(presented, oidc)
        except Unauthenticated:
            mark.details["reason"] = "bad_credential"
            raise
        if principal.org_id != claims.org_id:
            mark.details["presented_by"] = principal.actor
            raise refuse("foreign_credential", "this link belongs to another organization")
    if org is None or artifact is None:
        raise NotFound("artifact not found")
    return Download(str(org.name), artifact)
