"""The gallery feed's wire format and its writer: a Redis stream (``fecapass:gallery``) of the face ids added to a
model pack or removed from it, one entry per change with the flat fields ``change`` (add, remove), ``pack`` and
``face_ids`` (comma-separated), readable with redis-cli. The index stage publishes what it stores; the API's
erasures publish what they remove, so that every index process drops those codes at once. The reader that keeps
an index process's codes current is the indexer's (indexer/gallery_feed.py).

Each entry names the collection of its faces (``collection_id``; entries written before collections have none and
are the default collection's, 1). A process reads the collection of an added face from PostgreSQL with its code,
and drops a removed face's code from the collection the entry names: a face moved to another collection is
published as a removal from the old one and an addition.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import redis
from redis.typing import EncodableT, FieldT

from schemas.text import decode_text

FEED = "fecapass:gallery"
DEFAULT_COLLECTION_ID = 1  # of entries written before collections
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
    collection_id: int = DEFAULT_COLLECTION_ID

    def to_fields(self) -> dict[FieldT, EncodableT]:
        return {
            "change": self.change.value,
            "pack": self.pack,
            "face_ids": ",".join(str(i) for i in self.face_ids),
            "collection_id": str(self.collection_id),
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> FeedEntry:
        text = {decode_text(key): decode_text(value) for key, value in fields.items()}
        ids = [int(value) for value in text.get("face_ids", "").split(",") if value]
        collection = int(text.get("collection_id") or DEFAULT_COLLECTION_ID)
        return cls(Change(text["change"]), text["pack"], ids, collection)


class GalleryPublisher:
    def __init__(self, client: redis.Redis, stream: str = FEED, length: int = FEED_LENGTH) -> None:
        self.client = client
        self.stream = stream
        self.length = length

    def publish(
        self, change: Change, pack: str, face_ids: list[int], collection_id: int = DEFAULT_COLLECTION_ID
    ) -> None:
        if not face_ids:
            return
        entry = FeedEntry(change, pack, face_ids, collection_id)
        self.client.xadd(self.stream, entry.to_fields(), maxlen=self.length, approximate=True)
