"""Tenant API and audit collector (Starlette, tortoise-orm): see docs/api.md and docs/audit.md.

``create_app(settings)`` in :mod:`mesial.api.app` builds the ASGI app; ``mesial api serve``
runs it; ``mesial admin`` and ``mesial audit`` are in :mod:`mesial.api.cli`.
"""
