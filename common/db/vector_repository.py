"""SQL for the vector database: embeddings per model pack, cosine k-NN through a per-pack HNSW index."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg import sql
from psycopg_pool import ConnectionPool

from common.db import TRANSACTION_TIMEOUT_SINCE
from common.settings import SearchIndexSettings

_PACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class HnswParameters:
    """Defaults as measured in BENCHMARKS.md (search at scale): at 300k face-like embeddings m 32 with ef_search
    100 returned every photo of the query person (m 16: 92 %); m 16 at a million returned 66 %."""

    m: int = 32
    ef_construction: int = 128
    ef_search: int = 100  # at least; a search reading more candidates than this raises it to their number
    # A search in one collection walks the graph until it has its candidates (hnsw.iterative_scan), visiting at
    # most this many index tuples (FECAPASS_HNSW_MAX_SCAN_TUPLES).
    max_scan_tuples: int = 1_000_000
    # Whether ensure_pack builds the pack's index: the binary-code index needs none, and a million-face build takes
    # 1.6 h on 2 cores and every insert maintains it (SearchIndexSettings.builds_hnsw).
    build: bool = True

    @classmethod
    def from_settings(cls, settings: SearchIndexSettings) -> HnswParameters:
        return cls(
            settings.hnsw_m,
            settings.hnsw_ef_construction,
            settings.hnsw_ef_search,
            settings.hnsw_max_scan_tuples,
            settings.builds_hnsw,
        )


@dataclass(frozen=True)
class PackIndex:
    """How a pack's vectors are indexed: queries must repeat the index's expression to use it."""

    dim: int
    storage: str  # "halfvec" (new packs) or "vector" (packs registered before migration 0003)

    def cast(self) -> sql.Composable:
        return sql.SQL("{storage}({dim})").format(storage=sql.SQL(self.storage), dim=sql.Literal(self.dim))

    def expression(self) -> sql.Composable:
        return sql.SQL("embedding::") + self.cast()

    def operators(self) -> sql.Composable:
        return sql.SQL(f"{self.storage}_cosine_ops")


@dataclass(frozen=True)
class Neighbour:
    face_id: int
    similarity: float  # cosine similarity, -1..1


class PackMismatch(ValueError):
    pass


@dataclass(frozen=True)
class RegisteredPack:
    name: str
    dim: int
    active: bool
    embeddings: int


def index_name(pack: str) -> str:
    return "face_embeddings_hnsw_" + re.sub(r"[^a-z0-9]+", "_", pack.lower())


def index_statement(
    name: str, pack: str, index: PackIndex, hnsw: HnswParameters, *, concurrently: bool = False
) -> sql.Composed:
    """The pack's partial HNSW index."""
    return sql.SQL(
        "CREATE INDEX {concurrently} IF NOT EXISTS {name} ON face_embeddings USING hnsw (({expression}) {operators})"
        " WITH (m = {m}, ef_construction = {ef}) WHERE model_pack = {pack}"
    ).format(
        concurrently=sql.SQL("CONCURRENTLY" if concurrently else ""),
        name=sql.Identifier(name),
        expression=index.expression(),
        operators=index.operators(),
        m=sql.Literal(hnsw.m),
        ef=sql.Literal(hnsw.ef_construction),
        pack=sql.Literal(pack),
    )


def nearest_statement(pack: str, index: PackIndex, *, in_collection: bool = False) -> sql.Composed:
    """k-NN through the pack's partial index; parameters ``q`` (the query vector) and ``limit``, and with
    ``in_collection`` ``collection`` (only that collection's faces: the scan goes on until it has ``limit`` of
    them, hnsw.iterative_scan)."""
    # The pack is a literal, not a parameter, so the planner can match the partial index predicate in every
    # plan (a generic plan of `model_pack = $1` could not use it). The order is the index's (maybe half
    # precision); the similarity reported is computed from the full-precision vectors.
    return sql.SQL(
        "SELECT face_id, 1 - (embedding::vector({dim}) <=> %(q)s::vector({dim})) AS similarity"
        " FROM face_embeddings WHERE model_pack = {pack}{filter}"
        " ORDER BY {expression} <=> %(q)s::vector({dim})::{cast} LIMIT %(limit)s"
    ).format(
        dim=sql.Literal(index.dim),
        pack=sql.Literal(pack),
        filter=sql.SQL(" AND collection_id = %(collection)s" if in_collection else ""),
        expression=index.expression(),
        cast=index.cast(),
    )


class VectorRepository:
    def __init__(self, pool: ConnectionPool, hnsw: HnswParameters | None = None) -> None:
        self.pool = pool
        self.hnsw = hnsw or HnswParameters()
        self._known: dict[str, PackIndex] = {}

    def ensure_pack(self, pack: str, dim: int) -> PackIndex:
        """Register the pack and build its partial HNSW index once (where ``hnsw.build``); refuse a second
        dimension."""
        known = self._known.get(pack)
        if known is not None and known.dim == dim:
            return known
        if not _PACK_NAME.match(pack):
            raise ValueError(f"invalid model pack name {pack!r}")
        with self.pool.connection() as conn, conn.transaction():
            # One registration at a time: the first pack ever registered becomes the active one.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('fecapass.model_packs'))")
            row = conn.execute("SELECT dim, index_storage FROM model_packs WHERE name = %s", (pack,)).fetchone()
            if row is not None and int(row[0]) != dim:
                raise PackMismatch(f"pack {pack} is registered with dimension {row[0]}, got {dim}")
            if row is None:
                row = conn.execute(
                    "INSERT INTO model_packs (name, dim, index_name, active) VALUES (%s, %s, %s,"
                    " NOT EXISTS (SELECT 1 FROM model_packs WHERE active)) RETURNING dim, index_storage",
                    (pack, dim, index_name(pack)),
                ).fetchone()
            assert row is not None
            found = PackIndex(dim, str(row[1]))
            if self.hnsw.build:
                conn.execute(index_statement(index_name(pack), pack, found, self.hnsw))
        self._known[pack] = found
        return found

    def build_index(self, pack: str, dim: int) -> None:
        """The pack's HNSW index, built without blocking writes (CREATE INDEX CONCURRENTLY): before switching a
        gallery enrolled under the binary index to FECAPASS_SEARCH_INDEX=hnsw (``fecapass models build-index``)."""
        index = self.ensure_pack(pack, dim)
        with self.pool.connection() as conn:
            conn.autocommit = True  # CONCURRENTLY refuses to run inside a transaction
            try:
                conn.execute(index_statement(index_name(pack), pack, index, self.hnsw, concurrently=True))
            finally:
                conn.autocommit = False

    def drop_index(self, pack: str) -> None:
        """The pack's HNSW index removed (an installation moved to the binary index stops maintaining it)."""
        with self.pool.connection() as conn:
            conn.autocommit = True
            try:
                conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(index_name(pack))))
            finally:
                conn.autocommit = False

    def add_embedding(self, face_id: int, pack: str, embedding: np.ndarray, collection_id: int = 1) -> None:
        """``collection_id``: the face's (main database), kept here so that a search filters without a join."""
        self.ensure_pack(pack, int(embedding.shape[0]))
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO face_embeddings (face_id, model_pack, embedding, collection_id) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (face_id, model_pack) DO NOTHING",
                (face_id, pack, embedding.astype(np.float32), collection_id),
            )

    def nearest(self, pack: str, query: np.ndarray, limit: int, collection_id: int | None = None) -> list[Neighbour]:
        """The ``limit`` stored faces closest to ``query`` by cosine distance, through the pack's index; with
        ``collection_id``, of that collection only.

        A filter applied after the graph walk would leave a small collection with few or no results (the walk
        returns ef_search candidates, most of other collections); pgvector's iterative scan walks on until
        ``limit`` rows pass the filter (relaxed order: the rows come out nearly sorted, so they are sorted
        again by the full-precision similarity here)."""
        dim = int(query.shape[0])
        index = self.ensure_pack(pack, dim)
        statement = nearest_statement(pack, index, in_collection=collection_id is not None)
        candidates = sql.Literal(max(self.hnsw.ef_search, limit))
        settings: list[sql.Composable] = [sql.SQL("SET LOCAL hnsw.ef_search = {}").format(candidates)]
        if collection_id is not None:
            tuples = sql.Literal(self.hnsw.max_scan_tuples)
            settings += [
                sql.SQL("SET LOCAL hnsw.iterative_scan = relaxed_order"),
                sql.SQL("SET LOCAL hnsw.max_scan_tuples = {}").format(tuples),
            ]
        with self.pool.connection() as conn, conn.transaction():
            # One round trip for the settings (a parameterless statement may hold several): one a setting cost a
            # search ~1 ms and 0.5 ms of this process's CPU (BENCHMARKS.md, profile).
            conn.execute(sql.SQL("; ").join(settings))
            rows = conn.execute(
                statement, {"q": query.astype(np.float32), "limit": limit, "collection": collection_id}
            ).fetchall()
        found = [Neighbour(int(face_id), float(similarity)) for face_id, similarity in rows]
        return sorted(found, key=lambda n: (-n.similarity, n.face_id)) if collection_id is not None else found

    def binary_codes(self, pack: str, dim: int, batch: int = 50_000) -> Iterator[Codes]:
        """Every embedding of ``pack`` as its sign bits (pgvector's binary_quantize), packed 8 to a byte, most
        significant first (numpy's packbits order), with its face id and collection, ``batch`` rows at a time, read
        through a server-side cursor so that a million rows never sit in memory twice."""
        # varbit_send gives the bits as bytea: a 4-byte bit count, then the packed bits.
        statement = sql.SQL(
            "SELECT face_id, substring(varbit_send(binary_quantize(embedding::vector({dim}))::varbit) from 5),"
            " collection_id FROM face_embeddings WHERE model_pack = %s"
        ).format(dim=sql.Literal(dim))
        with self.pool.connection() as conn, conn.transaction(), conn.cursor(name="fecapass_binary_codes") as cur:
            # Millions of codes take longer than a stage pool lets a transaction last: this read is the stage
            # processes' one long transaction, and not one that holds locks.
            if conn.info.server_version >= TRANSACTION_TIMEOUT_SINCE:
                conn.execute("SET LOCAL transaction_timeout = 0")
            cur.itersize = batch
            cur.execute(statement, (pack,))
            while rows := cur.fetchmany(batch):
                yield _codes(rows, dim)

    def binary_codes_of(self, pack: str, dim: int, face_ids: list[int]) -> Codes:
        """The codes (as binary_codes) of those of ``face_ids`` that have an embedding of ``pack``."""
        statement = sql.SQL(
            "SELECT face_id, substring(varbit_send(binary_quantize(embedding::vector({dim}))::varbit) from 5),"
            " collection_id FROM face_embeddings WHERE model_pack = %s AND face_id = ANY(%s)"
        ).format(dim=sql.Literal(dim))
        with self.pool.connection() as conn:
            rows = conn.execute(statement, (pack, face_ids)).fetchall()
        return _codes(rows, dim)

    def rank(self, pack: str, query: np.ndarray, face_ids: list[int]) -> list[Neighbour]:
        """The faces among ``face_ids`` stored now, most similar to ``query`` first, by their full-precision
        vectors: a candidate erased since it was chosen is never returned."""
        if not face_ids:
            return []
        dim = int(query.shape[0])
        statement = sql.SQL(
            "SELECT face_id, 1 - (embedding::vector({dim}) <=> %(q)s::vector({dim})) AS similarity"
            " FROM face_embeddings WHERE model_pack = %(pack)s AND face_id = ANY(%(ids)s)"
            " ORDER BY similarity DESC, face_id"
        ).format(dim=sql.Literal(dim))
        with self.pool.connection() as conn:
            rows = conn.execute(statement, {"q": query.astype(np.float32), "pack": pack, "ids": face_ids}).fetchall()
        return [Neighbour(int(face_id), float(similarity)) for face_id, similarity in rows]

    def delete_faces(self, face_ids: list[int]) -> int:
        """Erase the embeddings of these faces in every pack."""
        if not face_ids:
            return 0
        with self.pool.connection() as conn:
            return conn.execute("DELETE FROM face_embeddings WHERE face_id = ANY(%s)", (face_ids,)).rowcount

    def best_among(self, pack: str, query: np.ndarray, face_ids: list[int]) -> Neighbour | None:
        """The most similar of the given faces (exact: a user has few faces)."""
        ranked = self.rank(pack, query, face_ids)
        return ranked[0] if ranked else None

    def active(self) -> tuple[str, int] | None:
        """The pack searches use and its dimension; None before any pack was registered (the configured one is
        used then)."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT name, dim FROM model_packs WHERE active").fetchone()
        return (str(row[0]), int(row[1])) if row else None

    def active_pack(self) -> str | None:
        found = self.active()
        return found[0] if found else None

    def activate(self, pack: str) -> None:
        """Make ``pack`` (registered with ensure_pack) the one searched; the others keep their vectors."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('fecapass.model_packs'))")
            if conn.execute("SELECT 1 FROM model_packs WHERE name = %s", (pack,)).fetchone() is None:
                raise LookupError(f"pack {pack} is not registered")
            conn.execute("UPDATE model_packs SET active = false WHERE active AND name <> %s", (pack,))
            conn.execute("UPDATE model_packs SET active = true WHERE name = %s", (pack,))

    def packs(self) -> list[RegisteredPack]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT p.name, p.dim, p.active, (SELECT count(*) FROM face_embeddings e WHERE e.model_pack = p.name)"
                " FROM model_packs p ORDER BY p.created_at"
            ).fetchall()
        return [RegisteredPack(str(name), int(dim), bool(active), int(count)) for name, dim, active, count in rows]

    def embedded_among(self, pack: str, face_ids: list[int]) -> set[int]:
        """Which of these faces already have an embedding of ``pack``."""
        if not face_ids:
            return set()
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT face_id FROM face_embeddings WHERE model_pack = %s AND face_id = ANY(%s)", (pack, face_ids)
            ).fetchall()
        return {int(row[0]) for row in rows}

    def count(self, pack: str, collection_id: int | None = None) -> int:
        """Embeddings of the pack; with ``collection_id``, of that collection only."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM face_embeddings WHERE model_pack = %s"
                " AND (%s::bigint IS NULL OR collection_id = %s)",
                (pack, collection_id, collection_id),
            ).fetchone()
        return int(row[0]) if row else 0

    def count_in_collection(self, collection_id: int) -> int:
        """Embeddings of the collection in every pack (an erased collection has none)."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM face_embeddings WHERE collection_id = %s", (collection_id,)
            ).fetchone()
        return int(row[0]) if row else 0

    def ping(self) -> None:
        with self.pool.connection() as conn:
            conn.execute("SELECT 1")

    # -- unknown faces (vector migration 0005): never in face_embeddings, so never a search's candidate ------------

    def add_unknown_embedding(self, unknown_id: int, pack: str, collection_id: int, embedding: np.ndarray) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO unknown_face_embeddings (unknown_face_id, model_pack, collection_id, embedding)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (unknown_face_id, model_pack) DO NOTHING",
                (unknown_id, pack, collection_id, embedding.astype(np.float32)),
            )

    def unknown_neighbours(
        self, unknown_id: int, pack: str, max_distance: float, limit: int
    ) -> list[tuple[int, float]]:
        """The unknown faces of the face's collection and pack within ``max_distance`` (cosine distance) of it,
        nearest first: an exact scan (a collection keeps a retention period's unknown faces, not a gallery)."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT o.unknown_face_id, o.embedding <=> s.embedding AS distance"
                " FROM unknown_face_embeddings s JOIN unknown_face_embeddings o"
                "   ON o.collection_id = s.collection_id AND o.model_pack = s.model_pack"
                " WHERE s.unknown_face_id = %s AND s.model_pack = %s AND o.unknown_face_id <> s.unknown_face_id"
                "   AND (o.embedding <=> s.embedding) <= %s"
                " ORDER BY distance, o.unknown_face_id LIMIT %s",
                (unknown_id, pack, max_distance, limit),
            ).fetchall()
        return [(int(face_id), float(distance)) for face_id, distance in rows]

    def has_unknown_embedding(self, unknown_id: int, pack: str) -> bool:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT 1 FROM unknown_face_embeddings WHERE unknown_face_id = %s AND model_pack = %s",
                (unknown_id, pack),
            ).fetchone()
        return row is not None

    def delete_unknown_embeddings(self, unknown_ids: list[int]) -> int:
        if not unknown_ids:
            return 0
        with self.pool.connection() as conn:
            return conn.execute(
                "DELETE FROM unknown_face_embeddings WHERE unknown_face_id = ANY(%s)", (unknown_ids,)
            ).rowcount

    def unknown_to_faces(self, moves: list[tuple[int, int]]) -> list[str]:
        """Move the embeddings of named unknown faces to face_embeddings, every pack, in one transaction:
        (unknown face id, face id) pairs; returns the packs they were in. Safe to repeat."""
        if not moves:
            return []
        unknown_ids, face_ids = [m[0] for m in moves], [m[1] for m in moves]
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "INSERT INTO face_embeddings (face_id, model_pack, embedding, collection_id)"
                " SELECT m.face_id, e.model_pack, e.embedding, e.collection_id FROM unknown_face_embeddings e"
                " JOIN unnest(%s::bigint[], %s::bigint[]) AS m(unknown_id, face_id) ON m.unknown_id = e.unknown_face_id"
                " ON CONFLICT (face_id, model_pack) DO NOTHING RETURNING model_pack",
                (unknown_ids, face_ids),
            ).fetchall()
            conn.execute("DELETE FROM unknown_face_embeddings WHERE unknown_face_id = ANY(%s)", (unknown_ids,))
        return sorted({str(row[0]) for row in rows})

    def face_to_unknown(self, face_id: int, unknown_id: int) -> list[str]:
        """Move an enrolled face's embeddings (every pack) to the unknown pool, in one transaction; returns the
        packs moved. Safe to repeat."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO unknown_face_embeddings (unknown_face_id, model_pack, collection_id, embedding)"
                " SELECT %s, model_pack, collection_id, embedding FROM face_embeddings WHERE face_id = %s"
                " ON CONFLICT (unknown_face_id, model_pack) DO NOTHING",
                (unknown_id, face_id),
            )
            rows = conn.execute(
                "DELETE FROM face_embeddings WHERE face_id = %s RETURNING model_pack", (face_id,)
            ).fetchall()
        return sorted({str(row[0]) for row in rows})


@dataclass(frozen=True)
class Codes:
    """Binary codes read from PostgreSQL: row i is face ``ids[i]`` of collection ``collections[i]``."""

    ids: np.ndarray  # int64
    codes: np.ndarray  # uint8 [n, ceil(dim / 8)]
    collections: np.ndarray  # int64

    def __iter__(self) -> Iterator[np.ndarray]:
        """(ids, codes): unpacks as the pair binary_codes returned before collections."""
        return iter((self.ids, self.codes))

    def of_collection(self, collection_id: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = self.collections == collection_id
        return self.ids[chosen], self.codes[chosen]


def _codes(rows: list[tuple[Any, ...]], dim: int) -> Codes:
    width = (dim + 7) // 8
    ids = np.array([int(row[0]) for row in rows], dtype=np.int64)
    codes = np.frombuffer(b"".join(bytes(row[1]) for row in rows), dtype=np.uint8)
    collections = np.array([int(row[2]) for row in rows], dtype=np.int64)
    return Codes(ids, codes.reshape(len(rows), width), collections)
