"""/metrics in Prometheus' text format: requests, tokens, tokens/s, queue length and KV-cache usage per model.

Counters are kept by the server as requests finish; gauges are read from the model pool when scraped. KV usage
comes from the backend's `kv_cache_usage()` -> (used_tokens, total_tokens) when it has one.
"""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily

from kamado.server.pool import ModelPool

# Window of the tokens/s gauge.
RATE_WINDOW_S = 10.0


class ServerMetrics:
    def __init__(self, pool: ModelPool):
        self.pool = pool
        self.registry = CollectorRegistry()
        self.requests = Counter("kamado_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry)
        self.prompt_tokens = Counter("kamado_prompt_tokens", "prompt tokens processed", ["model"], registry=self.registry)
        self.generated_tokens = Counter("kamado_generated_tokens", "tokens generated", ["model"], registry=self.registry)
        self.cancelled = Counter("kamado_requests_cancelled", "generations stopped because the client left", ["model"],
                                 registry=self.registry)
        self._recent: deque[tuple[float, int]] = deque()  # (time, generated tokens) of finished requests
        self.registry.register(_PoolCollector(self))

    def record_generation(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generated_tokens.labels(model).inc(completion_tokens)
        self._recent.append((time.monotonic(), completion_tokens))

    def tokens_per_second(self) -> float:
        cutoff = time.monotonic() - RATE_WINDOW_S
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / RATE_WINDOW_S

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PoolCollector:
    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics

    def collect(self):
        loaded = list(self.metrics.pool.loaded.values())
        running = GaugeMetricFamily("kamado_requests_processing", "requests generating now", labels=["model"])
        waiting = GaugeMetricFamily("kamado_requests_queued", "requests waiting for a free slot", labels=["model"])
        kv_used = GaugeMetricFamily("kamado_kv_cache_tokens", "KV-cache cells in use", labels=["model"])
        kv_ratio = GaugeMetricFamily("kamado_kv_cache_usage_ratio", "KV-cache cells in use / cells", labels=["model"])
        for entry in loaded:
            running.add_metric([entry.name], entry.slots.running)
            waiting.add_metric([entry.name], entry.slots.waiting)
            usage = getattr(entry.llm, "kv_cache_usage", None)
            if usage is not None:
                used, total = usage()
                kv_used.add_metric([entry.name], used)
                kv_ratio.add_metric([entry.name], used / total if total else 0.0)
        yield running
        yield waiting
        yield kv_used
        yield kv_ratio
        yield GaugeMetricFamily("kamado_models_loaded", "models in memory", value=len(loaded))
        yield GaugeMetricFamily("kamado_generated_tokens_per_second",
                                f"tokens generated per second over the last {RATE_WINDOW_S:g} s (counted as requests finish)",
                                value=self.metrics.tokens_per_second())
