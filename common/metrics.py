"""Prometheus metrics: stage counters and latencies, HTTP requests, and stream backlog read from Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import redis
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.transient import held_bytes
from schemas.streams import Stage
from schemas.text import decode_text

STAGE_ENTRIES = Counter(
    "fecapass_stage_entries_total",
    "Stream entries a stage finished with, by outcome: processed, job_failed, retried, dead_lettered",
    ["stage", "outcome"],
)
STAGE_BATCH_SECONDS = Histogram(
    "fecapass_stage_batch_seconds",
    "Handler time for one batch of entries",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STAGE_BATCH_SIZE = Histogram(
    "fecapass_stage_batch_size", "Entries handled together", ["stage"], buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
# The models' share of a stage's CPU (process_cpu_seconds_total): what the path around them costs is the rest.
MODEL_FORWARD_CPU_SAMPLE = "fecapass_model_forward_cpu_seconds_total"
MODEL_FORWARD_CPU_SECONDS = Counter(
    MODEL_FORWARD_CPU_SAMPLE,
    "CPU time of this process while a model's forward pass ran (all its threads: onnxruntime's pool too), by model",
    ["model"],
)
MODEL_FORWARD_PASSES = Counter(
    "fecapass_model_forward_passes_total", "Forward passes run (a batch of crops is one), by model", ["model"]
)
HTTP_REQUESTS = Counter(
    "fecapass_http_requests_total", "HTTP requests by route and status", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram("fecapass_http_request_seconds", "HTTP request latency", ["method", "route"])


ModelRole = Literal["detector", "recognizer"]


@contextmanager
def forward_pass(model: ModelRole) -> Iterator[None]:
    """Count the process's CPU time while the block runs as ``model``'s forward pass."""
    started = time.process_time()
    try:
        yield
    finally:
        MODEL_FORWARD_CPU_SECONDS.labels(model).inc(time.process_time() - started)
        MODEL_FORWARD_PASSES.labels(model).inc()


def backlog(pending: int, lag: int | None, length: int) -> int:
    """Entries waiting in a stage's group: delivered and not yet acknowledged (pending) plus not yet delivered
    (lag). Redis reports no lag when it cannot tell (an entry deleted inside the unread range); the stream's
    length is then the bound used."""
    return pending + (lag if lag is not None else length)


@dataclass(frozen=True)
class GroupStats:
    stream: str
    group: str
    length: int
    consumers: int
    pending: int
    lag: int | None
    oldest_pending_seconds: float | None
    dead_letters: int

    @property
    def backlog(self) -> int:
        return backlog(self.pending, self.lag, self.length)


def stream_stats(client: redis.Redis) -> list[GroupStats]:
    """What XINFO GROUPS, XPENDING and XLEN say about every stage's stream, in one place."""
    rows = []
    now_ms = time.time() * 1000
    for stage in Stage:
        length = int(client.xlen(stage.stream))
        dead = int(client.xlen(stage.dead_letter_stream))
        exists = bool(client.exists(stage.stream))
        groups = {decode_text(g["name"]): g for g in client.xinfo_groups(stage.stream)} if exists else {}
        info = groups.get(stage.group)
        if info is None:
            rows.append(GroupStats(stage.stream, stage.group, length, 0, 0, None, None, dead))
            continue
        summary = client.xpending(stage.stream, stage.group)
        oldest = None
        if summary["pending"] and summary["min"]:
            oldest = max(0.0, (now_ms - int(decode_text(summary["min"]).split("-")[0])) / 1000)
        lag = info.get("lag")
        rows.append(
            GroupStats(
                stream=stage.stream,
                group=stage.group,
                length=length,
                consumers=int(info["consumers"]),
                pending=int(info["pending"]),
                lag=int(lag) if lag is not None else None,
                oldest_pending_seconds=oldest,
                dead_letters=dead,
            )
        )
    return rows


class StreamCollector(Collector):
    """Reads the streams at scrape time, so the numbers are never stale."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["stream", "group"]
        length = GaugeMetricFamily("fecapass_stream_length", "Entries in the stream", labels=labels)
        pending = GaugeMetricFamily("fecapass_stream_pending", "Delivered, not yet acknowledged", labels=labels)
        lag = GaugeMetricFamily("fecapass_stream_lag", "Entries not yet delivered to the group", labels=labels)
        consumers = GaugeMetricFamily("fecapass_stream_consumers", "Consumers in the group", labels=labels)
        oldest = GaugeMetricFamily(
            "fecapass_stream_oldest_pending_seconds", "Age of the oldest pending entry", labels=labels
        )
        dead = GaugeMetricFamily("fecapass_stream_dead_letters", "Entries in the dead-letter stream", labels=labels)
        waiting = GaugeMetricFamily(
            "fecapass_stream_backlog",
            "Entries waiting in the group (pending + undelivered): uploads get 429 past FECAPASS_MAX_BACKLOG",
            labels=labels,
        )
        held = GaugeMetricFamily(
            "fecapass_transient_bytes",
            "Bytes of transient photos and crops held in Redis: uploads get 429 past FECAPASS_TRANSIENT_MAX_BYTES",
        )
        try:
            stats = stream_stats(self.client)
            held.add_metric([], held_bytes(self.client))
        except redis.RedisError:
            return
        for row in stats:
            key = [row.stream, row.group]
            length.add_metric(key, row.length)
            pending.add_metric(key, row.pending)
            consumers.add_metric(key, row.consumers)
            dead.add_metric(key, row.dead_letters)
            waiting.add_metric(key, row.backlog)
            if row.lag is not None:
                lag.add_metric(key, row.lag)
            oldest.add_metric(key, row.oldest_pending_seconds or 0.0)
        yield from (length, pending, lag, consumers, oldest, dead, waiting, held)
