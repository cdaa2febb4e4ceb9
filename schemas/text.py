"""Text out of Redis replies, the one place bytes become str.

Redis hands back bytes (the clients do not decode: stream entries and hashes are read raw). Decoding is
lenient on purpose: a non-UTF-8 byte in an entry, written by a bug or by hand with redis-cli, must not raise
inside a stage loop, where the exception would crash the process on every redelivery of that entry. Invalid
bytes come out backslash-escaped (``\\xff``), so an operator reading the dead letter still sees what was there;
such text then fails validation like any other malformed field.

It lives in ``schemas`` (the bottom layer) because stream messages decode their fields with it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def decode_text(value: object) -> str:
    """``value`` as text: bytes decoded as UTF-8 (never raising), anything else through ``str``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    return str(value)


def decode_fields(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A Redis hash or stream entry as text keys and values."""
    try:
        # The common case, every key and value UTF-8 bytes, at the cost of one decode each (a stage does this for
        # every entry it reads); anything else gives the same text as decode_text.
        return {key.decode(): value.decode() for key, value in raw.items()}
    except (AttributeError, UnicodeDecodeError):
        return {decode_text(key): decode_text(value) for key, value in raw.items()}
