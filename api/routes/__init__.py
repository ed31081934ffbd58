"""The routes, grouped by resource; each endpoint is a few lines over ``api/services``."""

from __future__ import annotations

from starlette.routing import Route

from mesial.api.routes import audit, health, internal, jobs, orgs, scans


def all_routes() -> list[Route]:
    routes: list[Route] = []
    for module in (health, orgs, scans, jobs, audit, internal):
        routes.extend(module.ROUTES)
    return routes
