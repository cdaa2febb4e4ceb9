"""What both clients send with every request."""

from __future__ import annotations

VERSION = "0.1.0"
API_KEY_HEADER = "X-API-Key"


def client_headers(api_key: str) -> dict[str, str]:
    if not api_key:
        raise ValueError("an API key is needed (fecapass keys create, or the one `fecapass up` printed)")
    return {API_KEY_HEADER: api_key, "User-Agent": f"fecapass-client/{VERSION}"}
