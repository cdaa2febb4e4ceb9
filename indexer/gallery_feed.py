"""The change feed that keeps every index process's in-memory codes current: a Redis stream of the face ids added
to a pack (and removed, where the remover knows), read by every index process from where it last read (XREAD, no
consumer group: each process needs every entry).

Why a Redis stream rather than PostgreSQL LISTEN/NOTIFY: a NOTIFY sent while a listener is disconnected is gone,
and nothing tells the listener; a stream keeps its entries, so a process that was away reads what it missed, and
Redis says (``max-deleted-entry-id``, ``entries-added``) whether entries it never read were trimmed or the stream
was lost, so a gap is seen and answered by reloading every code from PostgreSQL.

A missed entry can never become a wrong answer. A face is added to the feed before it is served (indexer/stage.py),
so every served face has an entry; a gap reloads. A missed removal only leaves a stale code in memory: the final
ranking reads the full vectors of rows still stored, and the owners of faces still served, so the face is never
returned, and its code is dropped when the ranking finds it gone.

Each entry names the collection of its faces (``collection_id``; entries written before collections have none and
are the default collection's, 1). A process reads the collection of an added face from PostgreSQL with its code,
and drops a removed face's code from the collection the entry names: a face moved to another collection is
published as a removal from the old one and an addition. An erasure (common/db/erasure.py) publishes the removal of
the faces it erased in every pack (``*``), so that no process keeps their codes. The entries' format is in
schemas/gallery.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from schemas.gallery import DEFAULT_COLLECTION_ID, FEED, FEED_LENGTH, Change, FeedEntry
from schemas.text import decode_text

__all__ = ["DEFAULT_COLLECTION_ID", "FEED", "FEED_LENGTH", "Change", "FeedEntry", "GalleryFeed", "Position"]

# Entries read per round trip when catching up.
READ_COUNT = 10_000


@dataclass(frozen=True)
class Position:
    """Where a reader is: the last entry id read, and how many entries the stream had ever had up to it."""

    last_id: str
    entries_added: int


def _id(value: object) -> tuple[int, int]:
    millis, _, sequence = decode_text(value).partition("-")
    return int(millis), int(sequence or 0)


class GalleryFeed:
    def __init__(self, client: redis.Redis, stream: str = FEED, length: int = FEED_LENGTH) -> None:
        self.client = client
        self.stream = stream
        self.length = length

    def publish(
        self, change: Change, pack: str, face_ids: list[int], collection_id: int = DEFAULT_COLLECTION_ID
    ) -> None:
        if not face_ids:
            return
        self.client.xadd(
            self.stream,
            FeedEntry(change, pack, face_ids, collection_id).to_fields(),
            maxlen=self.length,
            approximate=True,
        )

    def position(self) -> Position:
        """The stream's end now: read from here after loading from PostgreSQL, nothing published after the load
        began is missed (a face published before it is loaded is merely added twice)."""
        info = self._info()
        if info is None:
            return Position("0-0", 0)
        return Position(decode_text(info["last-generated-id"]), int(decode_text(info["entries-added"])))

    def read(self, since: Position) -> tuple[list[FeedEntry], Position] | None:
        """Entries after ``since`` and the new position; None when entries after ``since`` may be lost (trimmed
        before this reader read them, or the stream deleted and made again): the reader must reload.

        Exact by counting: Redis counts every entry ever added to the stream (``entries-added``, never lowered by a
        trim), and a position holds that count at its entry. Reading up to the stream's end as XINFO saw it must
        give exactly the difference; fewer were trimmed away unread, more (or a lower count) is another stream."""
        info = self._info()
        if info is None:
            return ([], since) if since.entries_added == 0 else None
        added, end = int(decode_text(info["entries-added"])), decode_text(info["last-generated-id"])
        if added == since.entries_added:
            return [], since
        if added < since.entries_added:
            return None
        entries: list[FeedEntry] = []
        last = since.last_id
        while len(entries) < added - since.entries_added:
            batch: Any = self.client.xrange(self.stream, min=f"({last}", max=end, count=READ_COUNT)
            if not batch:
                break
            for entry_id, fields in batch:
                last = decode_text(entry_id)
                entries.append(FeedEntry.from_fields(fields))
        if len(entries) != added - since.entries_added or last != end:
            return None
        return entries, Position(end, added)

    def _info(self) -> dict[str, object] | None:
        try:
            info: dict[str, object] = self.client.xinfo_stream(self.stream)
        except redis.ResponseError:  # no such stream
            return None
        return info
