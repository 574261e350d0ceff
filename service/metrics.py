"""Prometheus metrics with the stable names of the service contract (all durations in seconds).

Each `Metrics` owns its own `CollectorRegistry`, so several servers (tests) can live in one
process. REST and gRPC of one process share one `Metrics`.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from service.results import METRIC_STAGES

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.035, 0.05, 0.075, 0.1,
                   0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """1, 2, 3, 4, then powers of two and their midpoints, up to and including the maximum."""
    edges = {1, 2, 3, 4, max_batch_size}
    power = 4
    while power < max_batch_size:
        edges |= {power + power // 2, power * 2}
        power *= 2
    return tuple(float(e) for e in sorted(edges) if e <= max_batch_size)


class Metrics:
    """The service's metric families on a private registry."""

    def __init__(self, max_batch_size: int, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # process_* (resident memory, CPU seconds, open/max file descriptors, start time) and
        # python_info, as the default registry would have them: a private registry has none
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.request_duration = Histogram(
            "ml2p_request_duration_seconds", "Request latency by protocol, endpoint and status",
            ["protocol", "endpoint", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_duration = Histogram(
            "ml2p_queue_duration_seconds", "Time an image waited in the batch queue",
            buckets=LATENCY_BUCKETS, registry=r)
        self.stage_duration = Histogram(
            "ml2p_stage_duration_seconds", "Time per pipeline stage (the stages of timings_ms)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "ml2p_batch_size", "Images per inference batch",
            buckets=batch_buckets(max_batch_size), registry=r)
        self.queue_depth = Gauge("ml2p_queue_depth", "Images waiting in the batch queue",
                                 registry=r)
        self.in_flight = Gauge("ml2p_requests_in_flight", "Tagging requests being processed",
                               registry=r)
        self.cache_hits = Counter("ml2p_label_cache_hits", "Label embeddings served from cache",
                                  registry=r)
        self.cache_misses = Counter("ml2p_label_cache_misses", "Label embeddings computed",
                                    registry=r)
        self.gflops = Counter("ml2p_gflops", "GFLOPs served (images + labels + scoring)",
                              registry=r)
        self.model_info = Gauge("ml2p_model_info", "Loaded model (value 1)",
                                ["name", "version", "engine"], registry=r)
        # 1 while /readyz answers 200 (model loaded and warmed up, not draining): `up` alone
        # counts a replica whose model failed to load, or that is starting or draining, as up
        self.ready = Gauge("ml2p_ready", "1 when ready to serve (/readyz 200), else 0",
                           registry=r)
        # the queue size setting, so the saturation alert divides by it instead of repeating it
        self.queue_capacity = Gauge("ml2p_queue_capacity",
                                    "Images the batch queue holds (ML2P_MAX_QUEUE_SIZE)",
                                    registry=r)
        # per named API key (its name, never the key), requests that passed the key check
        self.key_requests = Counter("ml2p_authenticated_requests",
                                    "Requests accepted with a named API key",
                                    ["protocol", "key"], registry=r)
        self.startup = Gauge("ml2p_startup_seconds",
                             "Seconds from process start to ready (model loaded, warmed up)",
                             registry=r)
        for stage in METRIC_STAGES:  # export every stage from the first scrape on
            self.stage_duration.labels(stage=stage)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
