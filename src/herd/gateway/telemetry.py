"""Prometheus metrics. With several worker processes, ``PROMETHEUS_MULTIPROC_DIR`` makes every
worker write its counts there and ``/metrics`` adds them up, whichever worker answers."""

from __future__ import annotations

import os
from functools import cache

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics,
                               generate_latest, multiprocess)

disable_created_metrics()  # halves the exposition; the _created series say nothing a scraper needs

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter("herd_requests_total", "Chat requests answered, by route and HTTP status", ["route", "status"])
REQUEST_SECONDS = Histogram("herd_request_seconds", "Time to answer a chat request (streams: to the last byte)",
                            ["route"], buckets=LATENCY_BUCKETS)
BACKEND_SECONDS = Histogram("herd_backend_seconds", "Time of one backend call until its answer (streams: first event)",
                            ["model"], buckets=LATENCY_BUCKETS)
CHOICES = Counter("herd_choices_total", "First choice of the router and policy, per model", ["model"])
ANSWERS = Counter("herd_answers_total", "Requests answered, per model that answered", ["model"])
FALLBACKS = Counter("herd_fallbacks_total", "Requests handed on from one model to the next", ["from_model"])
ATTEMPT_ERRORS = Counter("herd_attempt_errors_total", "Failed backend calls, by model and kind", ["model", "kind"])
TOKENS = Counter("herd_tokens_total", "Tokens as reported by backends (or estimated for streams without usage)",
                 ["model", "kind"])
COST = Counter("herd_cost_usd_total", "Spend in USD from the pool's prices", ["model"])
IN_FLIGHT = Gauge("herd_requests_in_flight", "Chat requests being answered", multiprocess_mode="livesum")
# Per client key *name* (never the key): as many series as the keys file has keys.
KEY_REQUESTS = Counter("herd_key_requests_total", "Chat requests per client key name", ["key"])
KEY_SPEND = Counter("herd_key_spend_usd_total", "Spend in USD per client key name, every backend call counted", ["key"])
KEY_REFUSALS = Counter("herd_key_refusals_total", "Requests refused by a key's limits, by limit (rpm, tpm, day, "
                       "month)", ["key", "limit"])
FEEDBACK = Counter("herd_feedback_total", "Feedback sent to /v1/feedback, per client key name and result (accepted, "
                   "unknown, repeat, invalid)", ["key", "result"])
STATE_UP = Gauge("herd_state_up", "1 while the shared limits store is reachable; the lowest of the workers",
                 ["store"], multiprocess_mode="livemin")
STATE_ERRORS = Counter("herd_state_errors_total", "Failed calls to the shared limits store")
STATE_PENDING = Gauge("herd_state_pending_charges", "Charges of answered requests not yet written to the shared "
                      "limits store (a few milliseconds at most while it is reachable)", multiprocess_mode="livesum")


@cache
def labelled(metric, *values: str):
    """``metric.labels(*values)``, looked up once: prometheus_client validates and locks on every
    call, a few microseconds each, several times per request. Label values are few (routes,
    models, statuses), as the metrics' own series are."""
    return metric.labels(*values)


def exposition() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
