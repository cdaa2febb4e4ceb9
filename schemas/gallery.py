"""Entries of the gallery feed, the Redis stream that keeps every index process's in-memory codes current
(indexer/gallery_feed.py reads it; the index stage and erasures write it). Flat readable strings, as every stream.

``pack`` is the model pack whose codes change, or ``*`` (an erasure: the face's codes in every pack go);
``collection_id`` the collection of the faces (entries written before collections have none: the default one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.typing import EncodableT, FieldT

from schemas.text import decode_text

FEED = "fecapass:gallery"
# Entries kept (approximate trim): a process further behind than this reloads from PostgreSQL.
FEED_LENGTH = 100_000
EVERY_PACK = "*"
DEFAULT_COLLECTION_ID = 1


class Change(StrEnum):
    ADD = "add"
    REMOVE = "remove"


@dataclass(frozen=True)
class FeedEntry:
    change: Change
    pack: str
    face_ids: list[int]
    collection_id: int = DEFAULT_COLLECTION_ID

    def concerns(self, pack: str) -> bool:
        return self.pack in (pack, EVERY_PACK)

    def to_fields(self) -> dict[FieldT, EncodableT]:
        return {
            "change": self.change.value,
            "pack": self.pack,
            "face_ids": ",".join(str(i) for i in self.face_ids),
            "collection_id": str(self.collection_id),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> FeedEntry:
        text = {decode_text(key): decode_text(value) for key, value in fields.items()}
        ids = [int(value) for value in text.get("face_ids", "").split(",") if value]
        collection = int(text.get("collection_id") or DEFAULT_COLLECTION_ID)
        return cls(Change(text["change"]), text["pack"], ids, collection)
