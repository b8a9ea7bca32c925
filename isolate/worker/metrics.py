"""Prometheus metrics: sandboxes by state, requests and latency by route, exec outcomes."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..manager import SandboxManager

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class SandboxStates(Collector):
    """Counted at scrape time from the state folder: the truth, not a running tally."""

    def __init__(self, manager: SandboxManager):
        self.manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("isolate_sandboxes", "Sandboxes by state", labels=["state"])
        names = self.manager.names()
        running = sum(1 for name in names if self.manager.is_running(name))
        family.add_metric(["running"], running)
        family.add_metric(["stopped"], len(names) - running)
        yield family


class Metrics:
    def __init__(self, manager: SandboxManager):
        self.registry = CollectorRegistry()
        self.requests = Counter("isolate_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("isolate_http_request_duration_seconds", "HTTP request latency by route (streams: until they end)",
                                 ["route", "method"], buckets=BUCKETS, registry=self.registry)
        self.exec_outcomes = Counter("isolate_exec", "Command outcomes: exited, signaled, timeout, oom, output_limit, error",
                                     ["outcome"], registry=self.registry)
        self.registry.register(SandboxStates(manager))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def exec_outcome(self, outcome: str) -> None:
        self.exec_outcomes.labels(outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
