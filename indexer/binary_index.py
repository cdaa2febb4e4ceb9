"""The binary-code index: every face's sign bits (pgvector's binary_quantize), held in memory by each index process
and scanned exactly (faiss IndexBinaryFlat: Hamming distance, every code, no graph to build or to miss the
person); PostgreSQL then ranks the best codes by their full vectors. BENCHMARKS.md (search at scale) measures it.

The codes are a cache of PostgreSQL's rows, kept current by the gallery feed (gallery_feed.py); a code never
decides an answer: the candidates go to PostgreSQL, which computes every similarity from rows stored now.

Each pack's codes are held per collection (one flat index each), so a search in a collection scans that
collection's codes and nothing else: exact within the collection whatever its share of the gallery (a filter
after a scan of every code would leave a 1 % collection with a few of its candidates, or none).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import faiss
import numpy as np
import structlog

from common.db.vector_repository import Codes, Neighbour, VectorRepository
from indexer.gallery_feed import DEFAULT_COLLECTION_ID, Change, GalleryFeed, Position

log = structlog.get_logger()

# One thread per scan: a million codes take ~3 ms on one core, and OpenMP's threads spin-waiting for each other on
# cores the other stages share made the same scan 30-100 times slower (measured: 2 threads, p50 100-380 ms).
SCAN_THREADS = 1


def binary_code(vectors: np.ndarray) -> np.ndarray:
    """Sign bits packed 8 to a byte, most significant first: the bytes of pgvector's binary_quantize."""
    return np.packbits(np.atleast_2d(vectors) > 0, axis=1)


@dataclass
class PackCodes:
    dim: int
    index: faiss.IndexBinaryIDMap = field(init=False)

    def __post_init__(self) -> None:
        self.index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(self.dim))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(codes, dtype=np.uint8), ids.astype(np.int64))

    def replace(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Add, dropping any code these ids had (a feed entry read twice, a face added during a load)."""
        self.remove(ids)
        self.add(ids, codes)

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self.index.remove_ids(faiss.IDSelectorBatch(ids.astype(np.int64)))

    def nearest(self, code: np.ndarray, k: int) -> list[int]:
        _, labels = self.index.search(np.ascontiguousarray(code.reshape(1, -1), dtype=np.uint8), k)
        return [int(label) for label in labels[0] if label >= 0]


@dataclass
class PackGallery:
    """A pack's codes, one set per collection."""

    dim: int
    collections: dict[int, PackCodes] = field(default_factory=dict)

    def codes(self, collection_id: int) -> PackCodes:
        found = self.collections.get(collection_id)
        if found is None:
            found = self.collections[collection_id] = PackCodes(self.dim)
        return found

    def size(self, collection_id: int) -> int:
        found = self.collections.get(collection_id)
        return 0 if found is None else len(found)

    def add(self, read: Codes) -> None:
        """Codes read from PostgreSQL, each into its collection's set (replacing any it had there)."""
        for collection_id in np.unique(read.collections).tolist():
            self.codes(int(collection_id)).replace(*read.of_collection(int(collection_id)))


class BinaryIndex:
    """Per pack and collection codes, loaded from PostgreSQL when a pack is first searched, then kept current from
    the feed."""

    def __init__(self, vectors: VectorRepository, feed: GalleryFeed, candidates: int) -> None:
        self.vectors = vectors
        self.feed = feed
        self.candidates = candidates
        faiss.omp_set_num_threads(SCAN_THREADS)
        self._packs: dict[str, PackGallery] = {}
        self._positions: dict[str, Position] = {}
        self._lock = threading.Lock()

    def loaded_size(self, pack: str, collection_id: int = DEFAULT_COLLECTION_ID) -> int | None:
        """Codes of the pack's collection in memory; None before the pack was loaded."""
        with self._lock:
            gallery = self._packs.get(pack)
            return None if gallery is None else gallery.size(collection_id)

    def load(self, pack: str, dim: int) -> PackGallery:
        """Every code of the pack, read from PostgreSQL. The feed's end is taken first, so an entry published while
        the rows are read is applied afterwards (twice at worst: replace() keeps one code per face)."""
        start = self.feed.position()
        gallery = PackGallery(dim)
        for read in self.vectors.binary_codes(pack, dim):
            gallery.add(read)
        self._packs[pack], self._positions[pack] = gallery, start
        sizes = {collection: len(codes) for collection, codes in gallery.collections.items()}
        log.info("binary_index_loaded", pack=pack, faces=sum(sizes.values()), collections=len(sizes))
        return gallery

    def refresh(self, pack: str, dim: int) -> None:
        """Load the pack's codes or apply the feed's new entries (before counting the gallery)."""
        with self._lock:
            self._current(pack, dim)

    def _current(self, pack: str, dim: int) -> PackGallery:
        """The pack's codes with every feed entry published so far applied: a face whose enrollment finished before
        this search began is found."""
        gallery = self._packs.get(pack)
        if gallery is None or gallery.dim != dim:
            return self.load(pack, dim)
        read = self.feed.read(self._positions[pack])
        if read is None:
            log.warning("gallery_feed_gap", pack=pack, action="reloading every code from PostgreSQL")
            return self.load(pack, dim)
        entries, self._positions[pack] = read
        added = sorted({i for e in entries if e.pack == pack and e.change is Change.ADD for i in e.face_ids})
        removed: dict[int, list[int]] = {}
        for entry in entries:
            if entry.concerns(pack) and entry.change is Change.REMOVE:
                removed.setdefault(entry.collection_id, []).extend(entry.face_ids)
        for collection_id, face_ids in removed.items():
            if collection_id in gallery.collections:
                gallery.collections[collection_id].remove(np.array(face_ids, dtype=np.int64))
        if added:
            gallery.add(self.vectors.binary_codes_of(pack, dim, added))
        return gallery

    def nearest(
        self, pack: str, query: np.ndarray, limit: int, collection_id: int = DEFAULT_COLLECTION_ID
    ) -> list[Neighbour]:
        """The ``limit`` stored faces of the collection most similar to ``query``: the collection's best codes by
        Hamming distance, ranked by PostgreSQL on the full vectors of the rows stored now."""
        dim = int(query.shape[0])
        k = max(self.candidates, limit)
        with self._lock:
            codes = self._current(pack, dim).collections.get(collection_id)
            candidates = codes.nearest(binary_code(query), k) if codes is not None and len(codes) else []
        ranked = self.vectors.rank(pack, query, candidates)
        if len(ranked) < len(candidates):
            self._forget(pack, collection_id, sorted(set(candidates) - {n.face_id for n in ranked}))
        return ranked[:limit]

    def _forget(self, pack: str, collection_id: int, gone: list[int]) -> None:
        """Codes of faces PostgreSQL no longer holds (erased by a process that published no removal): dropped, so
        they stop taking candidate places. A code is published only once its row is stored, so a code without a
        row is one whose row was deleted."""
        if gone:
            with self._lock:
                gallery = self._packs.get(pack)
                if gallery is not None and collection_id in gallery.collections:
                    gallery.collections[collection_id].remove(np.array(gone, dtype=np.int64))
