"""What each service may write into the audit chains through ``POST /internal/v1/audit/events``.

A service key names its service (``mesial admin service-key NAME``). Each service writes
only its own actions, on the resource types they concern, and only where the world
agrees with what the event says:

- ``operator`` (platform-wide key): ``retention.deleted`` receipts for a scan or job of
  that tenant (or a key outside the layout) whose objects are gone from the store (an accepted
  one then removes the scan's or job's rows: :func:`mesial.api.services.retention.remove_receipted`), and
  ``organization.deleted`` receipts for an organization whose Vault key is gone; a receipt
  sent again is acknowledged with the one the chain holds (:func:`record_event`);
- ``job`` (a key bound to one organization): ``job.progress`` for a job of that tenant.

Job state reports (``POST /internal/v1/jobs/{id}/status``) are the operator's alone.

Everything the API itself records (``scan.deleted``, ``key.issued``, downloads, ...) is
never accepted from a service: a receipt that claims the deletion of a live scan is
refused. A new action a service sends needs its line in :data:`SERVICES`.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mesial.api.audit.collector import AuditCollector
from mesial.api.errors import Conflict, Forbidden, NotFound, ValidationFailed
from mesial.api.models import Job, Organization, Scan
from mesial.api.services.retention import remove_receipted
from mesial.api.types import Principal
from mesial.common.audit import PLATFORM_TENANT, AuditEvent, canonical
from mesial.common.contract import classify_key, job_prefix, scan_key
from mesial.common.errors import InvalidObjectKey, KeyNotFound
from mesial.common.objectstore import ObjectStore
from mesial.common.tenancy import ORG_NAME_RE, tenant_prefix
from mesial.common.vault import TenantKeys


@dataclass(frozen=True)
class ServiceGrant:
    """A service's audit vocabulary: action → resource types, and whether its key is bound to one tenant."""

    bound: bool
    actions: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # reports job states (POST /internal/v1/jobs/{id}/status, audited as job.started/succeeded/failed)
    reports_jobs: bool = False


SERVICES: dict[str, ServiceGrant] = {
    "operator": ServiceGrant(
        bound=False,
        actions={
            "retention.deleted": frozenset({"scan", "job", "object"}),
            "organization.deleted": frozenset({"organization"}),
        },
        reports_jobs=True,
    ),
    "job": ServiceGrant(bound=True, actions={"job.progress": frozenset({"job"})}),
}


def service_name(principal: Principal) -> str:
    return principal.actor.removeprefix("service:")


def check_job_reporter(principal: Principal) -> None:
    """Only the operator reports job states: a job's own key cannot conclude its job."""
    grant = SERVICES.get(service_name(principal))
    if grant is None or not grant.reports_jobs or grant.bound != (principal.org_id is not None):
        raise Forbidden("this service does not report job states")


def grant_for(name: str, bound: bool) -> ServiceGrant:
    """The grant of a service key about to be issued; refuses names and bindings no service has."""
    grant = SERVICES.get(name)
    if grant is None:
        raise ValidationFailed(f"unknown service {name!r}: one of {', '.join(sorted(SERVICES))}")
    if grant.bound != bound:
        raise ValidationFailed(
            f"a {name} key is " + ("bound to one organization (--org)" if grant.bound else "platform-wide (no --org)")
        )
    return grant


# Receipts: what each is about has one in its chain. Scan and job ids are random and never used
# again, an organization's receipt names its uid (or name): a second, different receipt for one of
# these is refused. A key outside the layout ("object") can be written and deleted again, so only a
# receipt sent as it was (its own time included) is recognised there.
RECEIPTS = frozenset({"retention.deleted", "organization.deleted"})
ONE_RECEIPT = frozenset({"scan", "job", "organization"})


async def record_event(
    principal: Principal, event: AuditEvent, *, store: ObjectStore, keys: TenantKeys | None, collector: AuditCollector
) -> tuple[dict[str, Any], bool]:
    """Check an ingested event and append it; returns the chain's record and whether it is new.

    A receipt the chain already holds (sent again after a lost answer: the world it proved may have
    moved on since, its rows gone with it) is acknowledged with the record it has, not appended
    again, and not checked against the world again; a different receipt for the same scan, job or
    organization is refused (``409``). An accepted ``retention.deleted`` removes the rows of what
    went (:func:`~mesial.api.services.retention.remove_receipted`), again on a receipt sent again,
    in case the first request ended before."""
    org, subject = await _authorize(principal, event.tenant, event.action, event.resource_type, event.details)
    if event.action not in RECEIPTS:
        await _check_world(event, org, subject, store, keys)
        return await collector.append_record(event), True
    match = functools.partial(_same_receipt, event)
    record = match(await collector.about(event))
    new = record is None
    if record is None:
        await _check_world(event, org, subject, store, keys)
        record, new = await collector.append_unless(event, match)  # one of two copies at once appends
    if event.action == "retention.deleted":
        await remove_receipted(store, subject, event.resource_type, event.resource_id)
    return record, new


def _same_receipt(event: AuditEvent, held: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The one of ``held`` (the chain's receipts by the same service about the same resource) that is
    ``event`` sent again: the same outcome and details (and time, for an object key); refuses a
    different receipt for a resource that has one."""
    body = event.as_dict()
    details = json.loads(canonical(body["details"]))
    once = event.resource_type in ONE_RECEIPT
    for record in held:
        if (record["outcome"], record["details"]) == (body["outcome"], details) and (
            once or record["time"] == body["time"]
        ):
            return record
    if once and held:
        raise Conflict(
            f"the chain already holds a different {event.action} receipt for {event.resource_type} "
            f"{event.resource_id} (sequence {held[0]['sequence']})"
        )
    return None


async def _authorize(
    principal: Principal, tenant: str, action: str, resource_type: str, details: Mapping[str, object]
) -> tuple[Organization | None, str]:
    """Refuse an event its service may not write; returns the chain's organization (``None``: the
    platform chain) and the name of the organization the event is about."""
    name = service_name(principal)
    grant = SERVICES.get(name)
    if grant is None or grant.bound != (principal.org_id is not None):
        raise Forbidden(f"service {name} writes no audit events")
    if principal.org_name is not None and tenant != principal.org_name:
        raise Forbidden("this service key may only write its own organization's chain")
    org = None
    if tenant != PLATFORM_TENANT:
        org = await Organization.get_or_none(name=tenant)
        if org is None:
            raise Forbidden("unknown organization")
    types = grant.actions.get(action)
    if types is None:
        raise ValidationFailed(f"service {name} does not write {action}")
    if resource_type not in types:
        raise ValidationFailed(f"{action} is about a {' or '.join(sorted(types))}, not a {resource_type}")
    # the organization the event is about: the chain's own, or the one a platform-chain receipt names
    subject = tenant if org is not None else str(details.get("tenant", ""))
    if not ORG_NAME_RE.fullmatch(subject):
        raise ValidationFailed("a platform-chain receipt names its organization in details.tenant")
    return org, subject


async def _check_world(
    event: AuditEvent, org: Organization | None, subject: str, store: ObjectStore, keys: TenantKeys | None
) -> None:
    """Refuse an event whose resource the world contradicts."""
    if event.action == "retention.deleted":
        await _objects_gone(store, subject, org, event.resource_type, event.resource_id)
    elif event.action == "organization.deleted":
        await _key_gone(keys, subject)
    elif event.action == "job.progress" and (org is None or not await Job.exists(id=event.resource_id, org_id=org.id)):
        raise NotFound("no such job in this organization")


async def _objects_gone(
    store: ObjectStore, org_name: str, org: Organization | None, resource_type: str, resource_id: str
) -> None:
    """A retention receipt: the resource is the tenant's, and nothing of it is left in the store."""
    if resource_type in ("scan", "job") and org is not None:
        model = Scan if resource_type == "scan" else Job
        if not await model.exists(id=resource_id, org_id=org.id):
            raise NotFound(f"no such {resource_type} in this organization")
    try:
        prefix = {"scan": scan_key, "job": job_prefix}.get(resource_type, str)(resource_id)
        async for meta in store.list(org_name, prefix):
            left = classify_key(meta.key[len(tenant_prefix(org_name)) :])
            if (left.resource_type, left.resource_id) == (resource_type, resource_id):
                raise Conflict(f"the {resource_type}'s objects still exist: a deletion receipt is refused")
    except InvalidObjectKey:
        raise ValidationFailed("resource id is not a key of the layout") from None


async def _key_gone(keys: TenantKeys | None, org_name: str) -> None:
    """An organization's deletion receipt: its key must be gone from Vault (crypto-shredded)."""
    if keys is None:
        raise Conflict("the key service is not configured: a deletion receipt cannot be checked")
    try:
        await asyncio.to_thread(keys.key_info, org_name)
    except KeyNotFound:
        return
    raise Conflict("the organization's key still exists: a deletion receipt is refused")
