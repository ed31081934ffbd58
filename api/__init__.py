"""Tenant API and audit collector (Starlette, tortoise-orm). Not built yet: see issue 5."""
