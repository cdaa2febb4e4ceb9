"""The web console: static HTML, CSS and JavaScript modules served by the API itself at /ui (same origin, no
build step, nothing fetched from elsewhere at run time). The pages call the /v1 JSON API with the key the user
signed in with, kept in the browser's sessionStorage."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from common import clients
from common.objects import ObjectStore
from common.settings import S3Settings

STATIC = Path(__file__).parent / "static"
MOUNT_PATH = "/ui"


def photo_origin(settings: S3Settings) -> str:
    """Where the presigned photo and crop URLs point (the public S3 endpoint): the one other origin the
    console's images may come from. Presigning is computed locally, no request is made."""
    store = ObjectStore(clients.minio_client(settings, public=True), settings.s3_bucket)
    parts = urlsplit(store.presigned_url("console", timedelta(minutes=1)))
    return f"{parts.scheme}://{parts.netloc}"


def security_headers(photos: str) -> dict[str, str]:
    # Scripts and styles from this origin only, no inline script: data shown in the pages cannot run as code.
    policy = "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' blob: {photos}",  # blob: for the photo being recognized, shown before upload
            "connect-src 'self'",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        )
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",  # a new release is picked up at once (revalidated with ETag)
    }


class ConsoleFiles(StaticFiles):
    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__(directory=STATIC, html=True)
        self.extra_headers = headers

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(self.extra_headers)
        return response


def console_files(s3: S3Settings) -> ConsoleFiles:
    return ConsoleFiles(security_headers(photo_origin(s3)))
