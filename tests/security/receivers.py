"""Webhook receivers on 127.0.0.1 for the security tests (one that answers, one that accepts and never does), and
the environment of a `fecapass worker webhook` process that delivers to them."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from operations.services import LocalServices
from tests.conftest import redis_client_url


@dataclass
class Receiver:
    url: str = ""
    status: int = 204
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)  # path, headers, body
    arrived: threading.Event = field(default_factory=threading.Event)
    answer_after: threading.Event | None = None  # set: hold every answer until this is set
    hold_seconds: float = 0.0  # each answer takes this long
    most_at_once: int = 0  # the most requests it had in hand together
    _in_hand: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def receiver(status: int = 204, tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    state = Receiver(status=status)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with state._lock:
                state._in_hand += 1
                state.most_at_once = max(state.most_at_once, state._in_hand)
            state.requests.append((self.path, dict(self.headers), body))
            state.arrived.set()
            if state.answer_after is not None:
                state.answer_after.wait(30)
            time.sleep(state.hold_seconds)
            with state._lock:
                state._in_hand -= 1
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    state.url = f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        if state.answer_after is not None:
            state.answer_after.set()
        server.shutdown()
        server.server_close()


@dataclass
class SilentReceiver:
    """Accepts connections and reads nothing, answers nothing: the receiver of issue 15."""

    url: str = ""
    connections: list[socket.socket] = field(default_factory=list)
    accepted: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))


@contextmanager
def silent_receiver() -> Iterator[SilentReceiver]:
    state = SilentReceiver()
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    state.url = f"http://127.0.0.1:{listener.getsockname()[1]}/slow"
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            state.connections.append(connection)
            state.accepted.release()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for connection in state.connections:  # the clients waiting on them fail at once instead of timing out
            connection.close()


def webhook_worker_env(services: LocalServices, **settings: str) -> dict[str, str]:
    """FECAPASS_* for one webhook stage process on the test servers' runner database, loopback allowed."""
    return {
        **os.environ,
        **services.environment(),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "FECAPASS_REDIS_URL": redis_client_url(services),
        "FECAPASS_WEBHOOK_SECRET": "secret",
        "FECAPASS_WEBHOOK_ALLOW": "127.0.0.1/32",
        "FECAPASS_BLOCK_MS": "50",
        "FECAPASS_METRICS_PORT": "0",
        "FECAPASS_LOG_JSON": "true",
        **{f"FECAPASS_{name}": value for name, value in settings.items()},
    }
