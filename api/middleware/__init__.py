"""Pure ASGI middleware (no BaseHTTPMiddleware: request-scoped ContextVars must propagate)."""
