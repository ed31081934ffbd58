"""Plain async services behind the routes: tortoise queries live here, not in routes."""
