"""The uvicorn server of the API, configured from the settings (also used by the tests' in-process server)."""

from __future__ import annotations

import gc

import uvicorn
from fastapi import FastAPI

from ingest_api.config import ApiConfig


def server_config(config: ApiConfig, app: FastAPI) -> uvicorn.Config:
    proxies = config.api.proxies
    return uvicorn.Config(
        app,
        host=config.api.api_host,
        port=config.api.api_port,
        log_config=None,
        timeout_graceful_shutdown=10,
        # X-Forwarded-For/-Proto rewrite the client address and scheme only when they come from a trusted proxy
        # (uvicorn otherwise trusts 127.0.0.1 by default). URLs handed to clients never depend on them.
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
    )


def freeze_startup_objects() -> None:
    """Put what start-up made (modules, FastAPI's routes and models, hundreds of thousands of objects that live as
    long as the process) out of the collector's reach: a full collection walked them all, a 260-280 ms stall of
    the event loop under load, which alone put the ingest p99 past 100 ms."""
    gc.collect()
    gc.freeze()
