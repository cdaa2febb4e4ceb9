"""Run one stage process: build its handler, then hand it to the shared runner until SIGTERM."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import structlog
from prometheus_client import start_http_server

from common import clients
from common import settings as s
from common.allocator import retain_freed_memory
from common.handlers import StageHandler
from common.imaging import use_image_threads
from common.runner import StageRunner
from common.transient import minimum_ttl_seconds
from schemas.streams import Stage

log = structlog.get_logger(__name__)


def handler_factory(stage: Stage) -> Callable[[], AbstractContextManager[StageHandler]]:
    # Imported here so a process loads only its own stage's models and clients.
    if stage is Stage.DETECT:
        from detector.worker import detect_handler

        return detect_handler
    if stage is Stage.ALIGN:
        from detector.worker import align_handler

        return align_handler
    if stage is Stage.EMBED:
        from embedder.worker import embed_handler

        return embed_handler
    if stage is Stage.WEBHOOK:
        from webhook_sender.worker import webhook_handler

        return webhook_handler
    from indexer.worker import index_handler

    return index_handler


def serve_metrics(host: str, port: int, stage: Stage) -> None:
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:  # metrics are not worth failing the stage over
        log.warning("stage.metrics_unavailable", host=host, port=port, error=str(exc))
    else:
        log.info("stage.metrics", stage=stage.value, host=host, port=port)


def run_worker(stage: Stage) -> None:
    observability = s.load(s.ObservabilitySettings)
    models = s.load(s.ModelSettings)
    use_image_threads(models.image_threads)
    retain_freed_memory(models.heap_retain_mb)
    serve_metrics(observability.metrics_host, observability.metrics_port, stage)
    streams = s.load(s.StreamSettings)
    pipeline = s.load(s.PipelineSettings)
    longest_wait = minimum_ttl_seconds(streams)
    if pipeline.transient_ttl_seconds < longest_wait:
        # Not refused: a short TTL is a choice (less biometric data held); its cost is jobs failing photo_expired.
        log.warning(
            "stage.transient_ttl_short",
            transient_ttl_seconds=pipeline.transient_ttl_seconds,
            longest_redelivery_seconds=longest_wait,
        )
    client = clients.redis_client(s.load(s.RedisSettings))
    try:
        with handler_factory(stage)() as handler:
            runner = StageRunner(
                client,
                handler,
                streams,
                job_ttl_seconds=pipeline.job_ttl_seconds,
                heartbeat_file=observability.heartbeat_file,
                heartbeat_max_age_seconds=observability.heartbeat_max_age_seconds,
            )
            runner.install_signal_handlers()
            runner.run()
    finally:
        client.close()
