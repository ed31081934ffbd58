"""Helpers shared by the route modules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mesial.api.routing import Call, Spec, endpoint


def ok(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


def route(spec: Spec) -> Callable[[Callable[[Call], Awaitable[Response]]], Route]:
    """Declare and register an endpoint in one decorator."""

    def decorate(handler: Callable[[Call], Awaitable[Response]]) -> Route:
        wrapped: Callable[[Request], Awaitable[Response]] = endpoint(spec)(handler)
        return Route(spec.path, wrapped, methods=[spec.method], name=handler.__name__)

    return decorate
