"""Refuse request bodies that are too large or arrive too slowly, while they stream in, before the multipart
parser buffers them."""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest_api.problems import problem_response


class BodySizeLimit:
    """413 as soon as Content-Length, or the bytes received so far, pass ``max_bytes``; 408 when no byte of the
    body arrives for ``timeout_seconds``, or when, past that long, it has come slower than ``min_rate`` bytes a
    second on average. Only time spent waiting for the client counts, not the time the API takes between reads.

    Past a limit the application is told the client went away (so it stops reading and parsing) and whatever it
    tries to answer after that is dropped: the client gets the 413 or 408.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_seconds: float, min_rate: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds
        self.min_rate = min_rate
        self._too_large = f"the request body is larger than {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send, 413, "upload_too_large", self._too_large)
            return
        received = 0
        waited = 0.0
        body_done = False
        refused = False
        response_started = False

        async def refuse(status: int, code: str, detail: str) -> Message:
            nonlocal refused
            refused = True
            if not response_started:
                await self._refuse(scope, send, status, code, detail)
            return {"type": "http.disconnect"}

        async def guarded_receive() -> Message:
            nonlocal received, waited, body_done
            if refused:
                return {"type": "http.disconnect"}
            if body_done:  # later reads only listen for the client going away: no deadline
                return await receive()
            started = time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_seconds)
            except TimeoutError:
                return await refuse(
                    408, "request_timeout", f"no part of the request body arrived for {self.timeout_seconds:g} s"
                )
            waited += time.monotonic() - started
            if message["type"] != "http.request":
                return message
            received += len(message.get("body", b""))
            body_done = not message.get("more_body", False)
            if received > self.max_bytes:
                return await refuse(413, "upload_too_large", self._too_large)
            if not body_done and waited > self.timeout_seconds and received < self.min_rate * waited:
                return await refuse(
                    408, "request_timeout", f"the request body arrives slower than {self.min_rate} bytes a second"
                )
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if refused:
                return
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)

    async def _refuse(self, scope: Scope, send: Send, status: int, code: str, detail: str) -> None:
        response = problem_response(status, code, detail, headers={"Connection": "close"})

        async def nothing() -> Message:  # the response reads no body
            return {"type": "http.disconnect"}

        await response(scope, nothing, send)
