"""Organizations say whether the platform admin may break glass into them (``PUT /v1/org/break-glass``).

Allowed by default, so that an organization that has lost all its org-admins can be
recovered; an organization's admin can forbid it. Every break-glass key is a
``key.break_glass`` event in the organization's own chain.
"""

from __future__ import annotations

_SQL = "ALTER TABLE organizations ADD COLUMN break_glass_allowed BOOLEAN NOT NULL DEFAULT TRUE;\n"

SQL = {"postgres": _SQL, "sqlite": _SQL}
