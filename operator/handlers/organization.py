"""Organization handlers: thin adapters over ``sync.organization`` (ids pinned: they are kopf's keys)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import kopf

from mesial.operator.errors import to_kopf
from mesial.operator.handlers import current
from mesial.operator.runtime import Runtime
from mesial.operator.sync.organization import ORG, Note, reconcile
from mesial.operator.sync.organization.deletion import delete_organization

PLURAL = ("mesial.dev", "v1alpha1", "organizations")


def post(body: kopf.Body, notes: list[Note]) -> None:
    """One Event per Warning; the Normal notes of a pass, one Event per reason (a creation is one
    Event listing what was created, not nine API requests)."""
    grouped: dict[str, list[str]] = {}
    for note in notes:
        if note.type == "Normal":
            grouped.setdefault(note.reason, []).append(note.message)
        else:
            kopf.event(body, type=note.type, reason=note.reason, message=note.message)
    for reason, messages in grouped.items():
        kopf.event(body, type="Normal", reason=reason, message="; ".join(messages)[:1000])


@contextlib.asynccontextmanager
async def as_it_is(runtime: Runtime, body: kopf.Body) -> AsyncIterator[kopf.Body | None]:
    """The Organization ``body`` names, read by ``current()`` under its lock (reconcile passes and
    the deletion run one at a time); None once it is gone."""
    async with runtime.org_lock(body["metadata"]["name"]):
        yield await current(runtime, ORG, body)


async def _reconcile(body: kopf.Body, memo: kopf.Memo, mode: str) -> None:
    runtime: Runtime = memo.runtime
    # on the Organization as it is, under the lock the deletion takes too: kopf's copy (a drift
    # timer's can lag) only names it
    async with as_it_is(runtime, body) as org:
        if org is None:
            return  # gone: nothing to create or correct
        # create or correct every owned object, write status once
        report = await reconcile(runtime, org, mode=mode)
    # one Event per change and per failure
    post(org, report.notes)
    # a failed step is retried with the configured delay
    if report.error is not None:
        raise to_kopf(report.error, runtime.settings.operator.retry_delay_s)


async def organization_created(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile(body, memo, "create")


async def organization_updated(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile(body, memo, "update")


async def organization_resumed(body: kopf.Body, status: kopf.Status, memo: kopf.Memo, **_: Any) -> None:
    # kopf also resumes objects it sees for the first time: those are creations, not drift
    await _reconcile(body, memo, "drift" if status.get("phase") else "create")


async def organization_drift(body: kopf.Body, status: kopf.Status, memo: kopf.Memo, **_: Any) -> None:
    # drift exists only once the creation handler has run; before that, the timer waits (on kopf's
    # copy: a lagging one only delays a tick; the pass decides on the Organization as it is)
    if status.get("phase"):
        await _reconcile(body, memo, "drift")


async def organization_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    # after a reconcile pass still running (the lock), decided on the Organization as it is: kopf's
    # copy (this handler's retries too) can lag behind a spec.deletion.force set since, or our status
    async with as_it_is(runtime, body) as org:
        if org is None:
            return  # gone (its finalizer removed by others): nothing left to act on or write to
        try:
            post(org, await delete_organization(runtime, org))
        except Exception as exc:
            kopf.event(org, type="Warning", reason="DeletionWaiting", message=str(exc)[:400])
            raise to_kopf(exc, runtime.settings.operator.retry_delay_s) from exc


def register(registry: kopf.OperatorRegistry, drift_interval: float) -> None:
    kopf.on.create(*PLURAL, id="reconcile", registry=registry)(organization_created)
    kopf.on.update(*PLURAL, id="reconcile", registry=registry, field="spec")(organization_updated)
    kopf.on.resume(*PLURAL, id="reconcile", registry=registry)(organization_resumed)
    kopf.timer(*PLURAL, id="drift", registry=registry, interval=drift_interval, initial_delay=drift_interval)(
        organization_drift
    )
    kopf.on.delete(*PLURAL, id="cleanup", registry=registry)(organization_deleted)
