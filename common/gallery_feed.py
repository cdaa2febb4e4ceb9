"""The gallery feed's wire format and its writer: a Redis stream (``fecapass:gallery``) of the face ids added to a
model pack or removed from it, one entry per change with the flat fields ``change`` (add, remove), ``pack`` and
``face_ids`` (comma-separated), readable with redis-cli. The index stage publishes what it stores; the API's
erasures publish what they remove, so that every index process drops those codes at once. The reader that keeps
an index process's codes current is the indexer's (indexer/gallery_feed.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import redis
from redis.typing import EncodableT, FieldT

from schemas.text import decode_text

FEED = "fecapass:gallery"
# Entries kept (approximate trim): a process further behind than this reloads from PostgreSQL.
FEED_LENGTH = 100_000


class Change(StrEnum):
    ADD = "add"
    REMOVE = "remove"


@dataclass(frozen=True)
class FeedEntry:
    change: Change
    pack: str
    face_ids: list[int]

    def to_fields(self) -> dict[FieldT, EncodableT]:
        return {"change": self.change.value, "pack": self.pack, "face_ids": ",".join(str(i) for i in self.face_ids)}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> FeedEntry:
        text = {decode_text(key): decode_text(value) for key, value in fields.items()}
        ids = [int(value) for value in text.get("face_ids", "").split(",") if value]
        return cls(Change(text["change"]), text["pack"], ids)


class GalleryPublisher:
    def __init__(self, client: redis.Redis, stream: str = FEED, length: int = FEED_LENGTH) -> None:
        self.client = client
        self.stream = stream
        self.length = length

    def publish(self, change: Change, pack: str, face_ids: list[int]) -> None:
        if not face_ids:
            return
        self.client.xadd(
            self.stream, FeedEntry(change, pack, face_ids).to_fields(), maxlen=self.length, approximate=True
        )
