"""SQL for the main database: collections, users and faces, API keys."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg
from psycopg.rows import class_row

from common.apikeys import Scope, new_key


class Connections(Protocol):
    """A psycopg_pool.ConnectionPool, or OneConnection for a tool that needs no pool."""

    def connection(self) -> AbstractContextManager[psycopg.Connection[Any]]: ...


class OneConnection:
    """A fresh connection per call (committed on success), for short-lived tools and tests."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.dsn) as conn:
            yield conn


DEFAULT_COLLECTION_ID = 1  # "default" (migration 0005): every person made before collections is there
DEFAULT_COLLECTION = "default"


class DuplicateEmail(ValueError):
    pass


class DuplicateExternalId(ValueError):
    """Another person of the collection has this external id."""


class DuplicateFaceExternalId(ValueError):
    """Another face of the collection has this external id."""


class DuplicateCollection(ValueError):
    pass


class UnknownCollection(LookupError):
    pass


class CollectionNotEmpty(RuntimeError):
    """People were added to the collection while it was being erased: erase it again."""


class UnknownUser(LookupError):
    pass


class Erased(LookupError):
    """The job's face, or its whole user, was erased: nothing may be stored for it again.

    ``face_ids``: faces of the job whose embeddings must go (a worker may have written one after the erasure
    deleted them)."""

    def __init__(self, job_id: str, *, user_erased: bool, face_ids: Sequence[int]) -> None:
        super().__init__(f"job {job_id}: {'the user' if user_erased else 'the face'} was erased")
        self.user_erased = user_erased
        self.face_ids = sorted(set(face_ids))


@dataclass(frozen=True)
class CollectionRow:
    id: int
    name: str
    keep_unknown_faces: bool
    unknown_retention_hours: int
    created_at: datetime


@dataclass(frozen=True)
class UserRow:
    id: int
    email: str
    full_name: str
    is_active: bool
    created_at: datetime
    updated_at: datetime
    collection_id: int
    external_id: str | None


@dataclass(frozen=True)
class NewFace:
    user_id: int
    job_id: str
    image_key: str
    crop_key: str
    box: Sequence[float]
    det_score: float
    faces_seen: int
    model_pack: str
    collection_id: int = DEFAULT_COLLECTION_ID  # the job's: a user of another collection is refused (UnknownUser)
    external_id: str | None = None


@dataclass(frozen=True)
class FaceRow:
    id: int
    user_id: int
    job_id: str
    image_key: str
    crop_key: str
    box: list[float]
    det_score: float
    faces_seen: int
    model_pack: str
    created_at: datetime
    collection_id: int
    external_id: str | None


@dataclass(frozen=True)
class ApiKeyRow:
    id: int
    name: str
    scope: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    collection_ids: list[int] | None  # None: every collection


@dataclass(frozen=True)
class KeyGrant:
    """What a live key may do: its scope, and the collections it may see (None: every collection)."""

    scope: str
    collection_ids: frozenset[int] | None

    def sees(self, collection_id: int) -> bool:
        return self.collection_ids is None or collection_id in self.collection_ids


@dataclass(frozen=True)
class NewApiKey:
    key: str  # shown once: only its SHA-256 is stored
    row: ApiKeyRow


@dataclass(frozen=True)
class FaceOwner:
    face_id: int
    user_id: int
    image_key: str
    external_id: str | None = None  # the user's


_COLLECTION_COLUMNS = "id, name, keep_unknown_faces, unknown_retention_hours, created_at"
_USER_COLUMNS = "id, email, full_name, is_active, created_at, updated_at, collection_id, external_id"
_FACE_COLUMNS = (
    "id, user_id, job_id, image_key, crop_key, box, det_score, faces_seen, model_pack, created_at,"
    " collection_id, external_id"
)
_KEY_COLUMNS = "id, name, scope, prefix, created_at, revoked_at, collection_ids"


def _violated(exc: psycopg.errors.UniqueViolation) -> str:
    return exc.diag.constraint_name or ""


class MainRepository:
    def __init__(self, pool: Connections) -> None:
        self.pool = pool

    @classmethod
    def at(cls, dsn: str) -> MainRepository:
        """The repository over one connection per call (no pool to open or close)."""
        return cls(OneConnection(dsn))

    # -- collections ---------------------------------------------------------------------------------

    def create_collection(self, name: str) -> CollectionRow:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(CollectionRow)) as cur:
            cur.execute(
                f"INSERT INTO collections (name) VALUES (%s) ON CONFLICT (name) DO NOTHING"
                f" RETURNING {_COLLECTION_COLUMNS}",
                (name,),
            )
            row = cur.fetchone()
        if row is None:
            raise DuplicateCollection(name)
        return row

    def get_collection(self, collection_id: int) -> CollectionRow | None:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(CollectionRow)) as cur:
            cur.execute(f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE id = %s", (collection_id,))
            return cur.fetchone()

    def collection_named(self, name: str) -> CollectionRow | None:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(CollectionRow)) as cur:
            cur.execute(f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE name = %s", (name,))
            return cur.fetchone()

    def list_collections(self, ids: Sequence[int] | None = None) -> list[CollectionRow]:
        """Every collection in id order, or those of ``ids``."""
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(CollectionRow)) as cur:
            cur.execute(
                f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE %s::bigint[] IS NULL OR id = ANY(%s) ORDER BY id",
                (None if ids is None else list(ids),) * 2,
            )
            return cur.fetchall()

    def collection_user_ids(self, collection_id: int, limit: int = 1000) -> list[int]:
        """Some of the collection's people (every one when fewer than ``limit``), in id order."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT id FROM users WHERE collection_id = %s ORDER BY id LIMIT %s", (collection_id, limit)
            ).fetchall()
        return [int(row[0]) for row in rows]

    def delete_collection(self, collection_id: int) -> bool:
        """Delete the row of an emptied collection, and take it out of the keys limited to it (a key limited to
        nothing else then sees nothing, not everything). The default collection stays. Raises CollectionNotEmpty
        when a person is still in it."""
        if collection_id == DEFAULT_COLLECTION_ID:
            return False
        try:
            with self.pool.connection() as conn, conn.transaction():
                deleted = conn.execute("DELETE FROM collections WHERE id = %s", (collection_id,)).rowcount == 1
                conn.execute(
                    "UPDATE api_keys SET collection_ids = array_remove(collection_ids, %s)"
                    " WHERE %s = ANY(collection_ids)",
                    (collection_id, collection_id),
                )
        except psycopg.errors.ForeignKeyViolation as exc:
            raise CollectionNotEmpty(collection_id) from exc
        return deleted

    # -- users ---------------------------------------------------------------------------------------

    def create_user(
        self,
        email: str,
        full_name: str,
        collection_id: int = DEFAULT_COLLECTION_ID,
        external_id: str | None = None,
    ) -> UserRow:
        """Raises DuplicateEmail, DuplicateExternalId (both per collection), UnknownCollection."""
        try:
            with self.pool.connection() as conn, conn.cursor(row_factory=class_row(UserRow)) as cur:
                cur.execute(
                    f"INSERT INTO users (email, full_name, collection_id, external_id) VALUES (%s, %s, %s, %s)"
                    f" ON CONFLICT (collection_id, lower(email)) DO NOTHING RETURNING {_USER_COLUMNS}",
                    (email, full_name, collection_id, external_id),
                )
                row = cur.fetchone()
        except psycopg.errors.UniqueViolation as exc:
            raise DuplicateExternalId(external_id or "") from exc
        except psycopg.errors.ForeignKeyViolation as exc:
            raise UnknownCollection(collection_id) from exc
        if row is None:
            raise DuplicateEmail(email)
        return row

    def get_user(self, user_id: int) -> UserRow | None:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(UserRow)) as cur:
            cur.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = %s", (user_id,))
            return cur.fetchone()

    def list_users(
        self,
        after: int,
        limit: int,
        containing: str = "",
        *,
        collection_id: int | None = None,
        email: str | None = None,
        external_id: str | None = None,
    ) -> list[UserRow]:
        """Keyset pagination: users with id > after, in id order; with ``containing``, only those whose name or
        email contains it (case-insensitive, taken literally: % and _ match themselves). ``collection_id``: only
        that collection's (None: every collection); ``email`` (case-insensitive) and ``external_id``: exactly."""
        pattern = "%" + containing.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(UserRow)) as cur:
            cur.execute(
                f"SELECT {_USER_COLUMNS} FROM users WHERE id > %(after)s"
                " AND (%(containing)s = '' OR full_name ILIKE %(pattern)s OR email ILIKE %(pattern)s)"
                " AND (%(collection)s::bigint IS NULL OR collection_id = %(collection)s)"
                " AND (%(email)s::text IS NULL OR lower(email) = lower(%(email)s))"
                " AND (%(external_id)s::text IS NULL OR external_id = %(external_id)s)"
                " ORDER BY id LIMIT %(limit)s",
                {
                    "after": after,
                    "containing": containing,
                    "pattern": pattern,
                    "collection": collection_id,
                    "email": email,
                    "external_id": external_id,
                    "limit": limit,
                },
            )
            return cur.fetchall()

    def update_user(
        self,
        user_id: int,
        *,
        email: str | None,
        full_name: str | None,
        is_active: bool | None,
        external_id: str | None = None,
        clear_external_id: bool = False,
    ) -> UserRow | None:
        """Set what is given (None: keep); ``clear_external_id`` removes the external id. Raises DuplicateEmail,
        DuplicateExternalId."""
        try:
            with self.pool.connection() as conn, conn.cursor(row_factory=class_row(UserRow)) as cur:
                cur.execute(
                    f"UPDATE users SET email = coalesce(%s, email), full_name = coalesce(%s, full_name),"
                    f" is_active = coalesce(%s, is_active),"
                    f" external_id = CASE WHEN %s THEN NULL ELSE coalesce(%s, external_id) END,"
                    f" updated_at = now() WHERE id = %s RETURNING {_USER_COLUMNS}",
                    (email, full_name, is_active, clear_external_id, external_id, user_id),
                )
                return cur.fetchone()
        except psycopg.errors.UniqueViolation as exc:
            if _violated(exc) == "users_collection_external_id_key":
                raise DuplicateExternalId(external_id or "") from exc
            raise DuplicateEmail(email or "") from exc

    def deactivate_user(self, user_id: int) -> bool:
        with self.pool.connection() as conn:
            cur = conn.execute("UPDATE users SET is_active = false, updated_at = now() WHERE id = %s", (user_id,))
            return cur.rowcount == 1

    def delete_user(self, user_id: int) -> None:
        """Deletes the user and (by cascade) their face rows."""
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM users WHERE id = %s", (user_id,))

    def list_faces(self, user_id: int) -> list[FaceRow]:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(FaceRow)) as cur:
            cur.execute(f"SELECT {_FACE_COLUMNS} FROM faces WHERE user_id = %s AND served ORDER BY id", (user_id,))
            return cur.fetchall()

    def get_face(self, face_id: int) -> FaceRow | None:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(FaceRow)) as cur:
            cur.execute(f"SELECT {_FACE_COLUMNS} FROM faces WHERE id = %s AND served", (face_id,))
            return cur.fetchone()

    def faces_after(self, after: int, limit: int) -> list[FaceRow]:
        """Every face in id order, one page at a time (keyset: pages stay cheap at millions of faces)."""
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(FaceRow)) as cur:
            cur.execute(f"SELECT {_FACE_COLUMNS} FROM faces WHERE id > %s ORDER BY id LIMIT %s", (after, limit))
            return cur.fetchall()

    def total_faces(self) -> int:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT count(*) FROM faces").fetchone()
        return int(row[0]) if row else 0

    def face_collection(self, face_id: int) -> int | None:
        """The collection of the face's row, served or not (an erasure cut short is finished in its collection)."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT collection_id FROM faces WHERE id = %s", (face_id,)).fetchone()
        return int(row[0]) if row else None

    def face_external_id_taken(self, collection_id: int, external_id: str) -> bool:
        """Whether a served face of the collection has this external id."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM faces WHERE collection_id = %s AND external_id = %s AND served)",
                (collection_id, external_id),
            ).fetchone()
        return bool(row and row[0])

    def delete_face(self, face_id: int) -> None:
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM faces WHERE id = %s", (face_id,))

    # -- API keys ------------------------------------------------------------------------------------

    def create_api_key(self, name: str, scope: Scope | str, collection_ids: Sequence[int] | None = None) -> NewApiKey:
        """A new random key of this scope, limited to ``collection_ids`` (None: every collection); the key itself
        is returned once and never stored."""
        key, prefix, key_hash = new_key()
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(ApiKeyRow)) as cur:
            cur.execute(
                f"INSERT INTO api_keys (name, scope, prefix, key_hash, collection_ids) VALUES (%s, %s, %s, %s, %s)"
                f" RETURNING {_KEY_COLUMNS}",
                (name, Scope(scope).value, prefix, key_hash, None if collection_ids is None else list(collection_ids)),
            )
            row = cur.fetchone()
        assert row is not None
        return NewApiKey(key, row)

    def list_api_keys(self) -> list[ApiKeyRow]:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(ApiKeyRow)) as cur:
            cur.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY id")
            return cur.fetchall()

    def revoke_api_key(self, key_id: int) -> bool:
        with self.pool.connection() as conn:
            cur = conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL", (key_id,))
            return cur.rowcount == 1

    def api_key_scope(self, key_hash: bytes) -> str | None:
        """The scope of a live key with this hash, or None."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT scope FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL", (key_hash,)
            ).fetchone()
        return str(row[0]) if row else None

    def api_key_grant(self, key_hash: bytes) -> KeyGrant | None:
        """The scope and collections of a live key with this hash, or None."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT scope, collection_ids FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL", (key_hash,)
            ).fetchone()
        if row is None:
            return None
        return KeyGrant(str(row[0]), None if row[1] is None else frozenset(int(i) for i in row[1]))

    # -- enrollment and erasure: both lock the user row first (share / update), so they never interleave -----

    def add_face(self, face: NewFace) -> int:
        """Insert the face of an enroll job, not yet served, or return the id it already has (redelivery).

        Raises Erased when the face or its user was erased, UnknownUser when the user is missing, inactive or in
        another collection than the job's, DuplicateFaceExternalId when another face of the collection has the
        face's external id."""
        with self.pool.connection() as conn, conn.transaction():
            user = conn.execute(
                "SELECT is_active, collection_id FROM users WHERE id = %s FOR SHARE", (face.user_id,)
            ).fetchone()
            _refuse_erased(conn, face.user_id, face.job_id, ())
            found = conn.execute("SELECT id FROM faces WHERE job_id = %s", (face.job_id,)).fetchone()
            if found is not None:
                return int(found[0])
            # A person of another collection is no person of the job's: the job cannot reach outside it.
            if user is None or not user[0] or int(user[1]) != face.collection_id:
                raise UnknownUser(face.user_id)
            try:
                with conn.transaction():
                    row = conn.execute(
                        "WITH inserted AS ("
                        "  INSERT INTO faces (user_id, job_id, image_key, crop_key, box, det_score, faces_seen,"
                        "   model_pack, collection_id, external_id)"
                        "  VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                        "  ON CONFLICT (job_id) DO NOTHING RETURNING id"
                        ") SELECT id FROM inserted UNION ALL SELECT id FROM faces WHERE job_id = %s",
                        (
                            face.user_id,
                            face.job_id,
                            face.image_key,
                            face.crop_key,
                            list(face.box),
                            face.det_score,
                            face.faces_seen,
                            face.model_pack,
                            face.collection_id,
                            face.external_id,
                            face.job_id,
                        ),
                    ).fetchone()
            except psycopg.errors.UniqueViolation as exc:  # two enrolls raced for one external id
                raise DuplicateFaceExternalId(face.external_id or "") from exc
            if row is None:  # the other worker's row committed after this statement's snapshot: the next one sees it
                row = conn.execute("SELECT id FROM faces WHERE job_id = %s", (face.job_id,)).fetchone()
        assert row is not None
        return int(row[0])

    def serve_face(self, face_id: int, user_id: int, job_id: str) -> None:
        """Serve the face once its embedding is committed; raises Erased if it was erased meanwhile."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT 1 FROM users WHERE id = %s FOR SHARE", (user_id,))
            _refuse_erased(conn, user_id, job_id, (face_id,))
            if conn.execute("UPDATE faces SET served = true WHERE id = %s", (face_id,)).rowcount != 1:
                # Deleted without a tombstone (by hand, or before tombstones existed): erased all the same.
                raise Erased(job_id, user_erased=False, face_ids=[face_id])

    def begin_face_erasure(self, face_id: int) -> FaceRow | None:
        """Tombstone the face and stop serving it; the row itself goes last (delete_face), so that an erasure
        cut short is found again and finished."""
        with self.pool.connection() as conn, conn.transaction():
            with conn.cursor(row_factory=class_row(FaceRow)) as cur:
                face = cur.execute(f"SELECT {_FACE_COLUMNS} FROM faces WHERE id = %s", (face_id,)).fetchone()
            if face is None:
                return None
            conn.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (face.user_id,))
            _tombstone_faces(conn, [face])
            conn.execute("UPDATE faces SET served = false WHERE id = %s", (face_id,))
        return face

    def begin_user_erasure(self, user_id: int) -> list[FaceRow] | None:
        """Tombstone the user and every face row of theirs (served or not), deactivate the user, stop serving the
        faces; returns those faces, or None for an unknown user. The rows go last (delete_user)."""
        with self.pool.connection() as conn, conn.transaction():
            if conn.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user_id,)).fetchone() is None:
                return None
            conn.execute("INSERT INTO erased_users (user_id) VALUES (%s) ON CONFLICT DO NOTHING", (user_id,))
            conn.execute("UPDATE users SET is_active = false, updated_at = now() WHERE id = %s", (user_id,))
            with conn.cursor(row_factory=class_row(FaceRow)) as cur:
                faces = cur.execute(
                    f"SELECT {_FACE_COLUMNS} FROM faces WHERE user_id = %s ORDER BY id", (user_id,)
                ).fetchall()
            _tombstone_faces(conn, faces)
            conn.execute("UPDATE faces SET served = false WHERE user_id = %s", (user_id,))
        return faces

    def face_owners(self, face_ids: Sequence[int], collection_id: int | None = None) -> dict[int, FaceOwner]:
        """Owners of the given faces, active users only; with ``collection_id``, faces of that collection only."""
        if not face_ids:
            return {}
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(FaceOwner)) as cur:
            cur.execute(
                "SELECT f.id AS face_id, f.user_id, f.image_key, u.external_id"
                " FROM faces f JOIN users u ON u.id = f.user_id"
                " WHERE f.id = ANY(%s) AND f.served AND u.is_active AND (%s::bigint IS NULL OR f.collection_id = %s)",
                (list(face_ids), collection_id, collection_id),
            )
            return {row.face_id: row for row in cur.fetchall()}

    def jobs_with_faces(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these enroll jobs have a face row (which then keeps the job's original photo)."""
        if not job_ids:
            return set()
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT job_id FROM faces WHERE job_id = ANY(%s)", (list(job_ids),)).fetchall()
        return {str(row[0]) for row in rows}

    def count_faces(self, user_id: int) -> int:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT count(*) FROM faces WHERE user_id = %s AND served", (user_id,)).fetchone()
        return int(row[0]) if row else 0

    def ping(self) -> None:
        with self.pool.connection() as conn:
            conn.execute("SELECT 1")


def _refuse_erased(conn: psycopg.Connection[Any], user_id: int, job_id: str, face_ids: Sequence[int]) -> None:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM erased_users WHERE user_id = %s),"
        " (SELECT face_id FROM erased_faces WHERE job_id = %s)",
        (user_id, job_id),
    ).fetchone()
    assert row is not None
    user_erased, erased_face = bool(row[0]), row[1]
    if user_erased or erased_face is not None:
        known = [*face_ids, *([int(erased_face)] if erased_face is not None else [])]
        raise Erased(job_id, user_erased=user_erased, face_ids=known)


def _tombstone_faces(conn: psycopg.Connection[Any], faces: Sequence[FaceRow]) -> None:
    if faces:
        conn.execute(
            "INSERT INTO erased_faces (job_id, face_id) SELECT * FROM unnest(%s::text[], %s::bigint[])"
            " ON CONFLICT (job_id) DO NOTHING",
            ([face.job_id for face in faces], [face.id for face in faces]),
        )
