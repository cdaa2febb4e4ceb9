"""The uvicorn server of the API, configured from the settings (also used by the tests' in-process server)."""

from __future__ import annotations

import gc
import socket

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


class ApiServer(uvicorn.Server):
    """The API's server: once started (the lifespan has opened every client and pool), what start-up made is put
    out of the garbage collector's reach. Those 130 000 and more objects live as long as the process; a
    full collection walked them all, a 260-280 ms stall of the event loop under load that alone put the ingest
    p99 past 100 ms (gc.freeze: a collection now walks only what requests leave behind)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        gc.collect()
        gc.freeze()
