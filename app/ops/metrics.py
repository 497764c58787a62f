"""Prometheus metrics, one registry per app instance.

Labels are bounded by construction: operation kinds, model slugs, status codes and outcomes. Never a
caller id or a request id, whose cardinality grows without limit.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "falgate_requests", "Requests answered, by route, model and status code", ["route", "model", "status"], registry=r
        )
        self.upstream_latency = Histogram(
            "falgate_upstream_latency_seconds",
            "Time to fal's response headers, by operation",
            ["operation"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.upstream_errors = Counter(
            "falgate_upstream_errors", "Upstream calls that failed, by operation and kind", ["operation", "kind"], registry=r
        )
        self.validation_rejections = Counter(
            "falgate_validation_rejections", "Bodies refused with 422 before reaching fal, by model", ["model"], registry=r
        )
        self.refusals = Counter(
            "falgate_refusals", "Caller refusals: 401 unauthenticated, 402 over budget, 429 rate limited", ["status"], registry=r
        )
        self.webhook_verifications = Counter(
            "falgate_webhook_verifications", "fal webhooks received, by verification outcome", ["outcome"], registry=r
        )
        self.deliveries = Counter(
            "falgate_relay_deliveries", "Client webhook delivery attempts, by outcome", ["outcome"], registry=r
        )
        self.delivery_retries = Counter(
            "falgate_relay_retries", "Client webhook deliveries scheduled for another attempt", registry=r
        )
        self.outbox_depth = Gauge("falgate_relay_outbox_depth", "Client webhook deliveries waiting", registry=r)
        self.open_connections = Gauge(
            "falgate_open_connections", "Open streaming connections by kind (sse, status_stream, websocket)", ["kind"], registry=r
        )
        self.upstream_watchers = Gauge(
            "falgate_upstream_watchers", "fal status streams this replica is watching", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
