"""Prometheus metrics from the running API and stage processes, and `fecapass streams`."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.streams import PIPELINE, Stage
from tests.e2e.conftest import RunningPipeline, search

pytestmark = pytest.mark.e2e


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_api_metrics_have_requests_and_stream_backlog(pipeline: RunningPipeline, enrolled: dict[str, Any]) -> None:
    with pipeline.client() as client:
        search(client, "obama_2.jpg")
        assert client.get("/v1/no-such-route").status_code == 404
        response = client.get("/metrics")
    assert response.status_code == 200
    found = samples(response.text)
    requests = {(labels["route"], labels["status"]) for labels, _ in found["fecapass_http_requests_total"]}
    assert ("/v1/search", "200") in requests
    assert ("unmatched", "404") in requests  # no series per raw path
    streams = {labels["stream"]: value for labels, value in found["fecapass_stream_length"]}
    assert set(streams) == {stage.stream for stage in Stage}
    assert all(streams[stage.stream] > 0 for stage in PIPELINE)
    for name in (
        "fecapass_stream_pending",
        "fecapass_stream_lag",
        "fecapass_stream_consumers",
        "fecapass_stream_dead_letters",
        "fecapass_stream_oldest_pending_seconds",
    ):
        assert len(found[name]) == len(Stage), name
    consumers = {labels["group"]: value for labels, value in found["fecapass_stream_consumers"]}
    assert all(value >= 2 for value in consumers.values())  # two processes per stage


def test_every_stage_process_serves_its_counters(pipeline: RunningPipeline, enrolled: dict[str, Any]) -> None:
    processed: dict[str, float] = {}
    for name, port in pipeline.metrics_ports.items():
        found = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        stage = name.split("-")[0]
        counts = {
            labels["outcome"]: value
            for labels, value in found.get("fecapass_stage_entries_total", [])
            if labels["stage"] == stage
        }
        processed[stage] = processed.get(stage, 0) + counts.get("processed", 0)
        if stage in {s.value for s in PIPELINE}:  # the webhook stage may have had nothing to send yet
            assert any(labels["stage"] == stage for labels, _ in found["fecapass_stage_batch_seconds_count"])
    assert {stage.value for stage in PIPELINE} <= set(processed)
    assert all(processed[stage.value] > 0 for stage in PIPELINE), processed


def test_the_model_stages_count_their_forward_passes(pipeline: RunningPipeline, enrolled: dict[str, Any]) -> None:
    """The detect and embed processes split their CPU into their model's forward passes and the rest; no other
    stage runs a model."""
    passes: dict[str, dict[str, float]] = {}
    for name, port in pipeline.metrics_ports.items():
        found = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        stage = passes.setdefault(name.split("-")[0], {})
        for labels, value in found.get("fecapass_model_forward_passes_total", []):
            stage[labels["model"]] = stage.get(labels["model"], 0.0) + value
        for labels, value in found.get("fecapass_model_forward_cpu_seconds_total", []):
            assert value > 0 or stage.get(labels["model"], 0.0) == 0, (name, labels)
    assert set(passes["detect"]) == {"detector"} and passes["detect"]["detector"] > 0, passes
    assert set(passes["embed"]) == {"recognizer"} and passes["embed"]["recognizer"] > 0, passes
    assert not any(passes.get(stage.value) for stage in Stage if stage not in (Stage.DETECT, Stage.EMBED)), passes


def test_streams_command_prints_every_group(pipeline: RunningPipeline, enrolled: dict[str, Any]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "operations.cli", "streams"],
        env={**os.environ, **pipeline.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for stage in Stage:
        assert stage.stream in result.stdout and stage.dead_letter_stream not in result.stdout
    assert "dead letters" in result.stdout
