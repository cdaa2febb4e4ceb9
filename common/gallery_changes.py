"""The gallery change feed's wire format (the Redis stream every index process reads: indexer/gallery_feed.py), here
so that processes other than the index stage (the API naming a cluster of unknown faces) can announce added faces."""

from __future__ import annotations

from enum import StrEnum

import redis

FEED = "fecapass:gallery"
# Entries kept (approximate trim): a process further behind than this reloads from PostgreSQL.
FEED_LENGTH = 100_000


class Change(StrEnum):
    ADD = "add"
    REMOVE = "remove"


def publish_change(
    client: redis.Redis, change: Change, pack: str, face_ids: list[int], stream: str = FEED, length: int = FEED_LENGTH
) -> None:
    if not face_ids:
        return
    client.xadd(
        stream,
        {"change": change.value, "pack": pack, "face_ids": ",".join(str(i) for i in face_ids)},
        maxlen=length,
        approximate=True,
    )
