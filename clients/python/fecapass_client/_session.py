"""What both clients send with every request."""

from __future__ import annotations

from urllib.parse import urlsplit

VERSION = "0.1.0"
API_KEY_HEADER = "X-API-Key"


def client_headers(api_key: str) -> dict[str, str]:
    if not api_key:
        raise ValueError("an API key is needed (fecapass keys create, or the one `fecapass up` printed)")
    return {API_KEY_HEADER: api_key, "User-Agent": f"fecapass-client/{VERSION}"}


def verifies_tls(base_url: str) -> bool:
    """httpx's ``verify`` for a client of ``base_url``: certificates are verified for an https API. An http one
    makes no TLS connection (every request goes to a path under ``base_url``, and redirects are not followed), so
    its client skips loading the CA bundle, 40-60 ms of CPU a client (as much as 2 ms a photo of a short
    ``fecapass enroll``)."""
    return urlsplit(base_url).scheme.lower() != "http"
