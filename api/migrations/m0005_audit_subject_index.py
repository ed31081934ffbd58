"""An index on the resource an audit event is about, per tenant.

The collector looks up whether a tenant's chain already holds a receipt for a resource
before appending another (``POST /internal/v1/audit/events``: a receipt sent again after a
lost answer is acknowledged, not appended twice); without it that lookup reads the whole chain.
"""

from __future__ import annotations

_SQL = "CREATE INDEX audit_events_tenant_resource ON audit_events (tenant, resource_id);\n"

SQL = {"postgres": _SQL, "sqlite": _SQL}
