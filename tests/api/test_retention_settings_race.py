"""Concurrent changes of one organization's retention: each ``org.retention_changed`` names the
days it replaced (``previous``), read under the row's lock in the transaction that appends it."""

from __future__ import annotations

import asyncio
import json

from mesial.api.app import db_context
from mesial.api.models import AuditEventRow, Organization
from tests.api.conftest import Harness, bearer


async def test_concurrent_retention_changes_give_events_whose_previous_and_new_days_chain(api: Harness) -> None:
    """Four PUTs at once (on PostgreSQL the app's own connections, taking turns at the row's lock): in chain
    order the first event's ``previous`` is the 90 the organization was made with, every later one's
    is the ``days`` of the event before it, and the organization keeps the last one's days."""
    name, admin = await api.new_org()
    asked = [30, 60, 120, 45]
    answers = await asyncio.gather(
        *(api.client.put("/v1/org/retention", json={"retention_days": d}, headers=bearer(admin)) for d in asked)
    )
    assert [a.status_code for a in answers] == [200] * len(asked), [a.text for a in answers]

    with db_context(api.app):
        rows = await AuditEventRow.filter(tenant=name, action="org.retention_changed").order_by("sequence")
        kept = (await Organization.get(name=name)).retention_days
    details = [json.loads(row.details) for row in rows]
    assert sorted(d["days"] for d in details) == sorted(asked)
    assert [d["previous"] for d in details] == [90, *(d["days"] for d in details[:-1])]
    assert kept == details[-1]["days"]
