"""Request counts and latencies per route template, in Prometheus text format."""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access = logging.getLogger("mesial.api.access")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: defaultdict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0] * (len(BUCKETS) + 2))
        self.gauges: dict[str, float] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        hist = self.latency[(method, route)]
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                hist[i] += 1
        hist[len(BUCKETS)] += 1  # count
        hist[len(BUCKETS) + 1] += seconds  # sum

    def render(self) -> str:
        out = ["# TYPE mesial_http_requests_total counter"]
        for (method, route, status), n in sorted(self.requests.items()):
            out.append(f'mesial_http_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}')
        out.append("# TYPE mesial_http_request_seconds histogram")
        for (method, route), hist in sorted(self.latency.items()):
            labels = f'method="{method}",route="{route}"'
            for i, bound in enumerate(BUCKETS):
                out.append(f'mesial_http_request_seconds_bucket{{{labels},le="{bound}"}} {int(hist[i])}')
            out.append(f'mesial_http_request_seconds_bucket{{{labels},le="+Inf"}} {int(hist[len(BUCKETS)])}')
            out.append(f"mesial_http_request_seconds_count{{{labels}}} {int(hist[len(BUCKETS)])}")
            out.append(f"mesial_http_request_seconds_sum{{{labels}}} {hist[len(BUCKETS) + 1]:.6f}")
        for name, value in sorted(self.gauges.items()):
            out.append(f"# TYPE {name} gauge")
            out.append(f"{name} {value}")
        return "\n".join(out) + "\n"


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            state = scope.get("state", {})
            route = state.get("route", "unmatched")
            elapsed = time.perf_counter() - start
            self.metrics.observe(scope["method"], route, status, elapsed)
            access.info(
                "request",
                extra={
                    "request_id": state.get("request_id", ""),
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
