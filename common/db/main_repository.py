"""SQL for the main database: collections, users and faces, API keys."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg
from psycopg.rows import class_row

from common.apikeys import Scope, new_key
from common.clustering import ClusterParameters, Found, Join, Nearby, Placement, Wait, place
from common.errors import TransientError

# Tries of a face move whose face changes owner between the read and the lock (another correction at once).
MOVE_ATTEMPTS = 5


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


class UnknownFace(LookupError):
    pass


class Reassigned(LookupError):
    """The job's face was given to another user by a correction (merge, move): it stays theirs, as it is."""

    def __init__(self, job_id: str, *, face_id: int, user_id: int) -> None:
        super().__init__(f"job {job_id}: its face {face_id} belongs to user {user_id} now")
        self.face_id = face_id
        self.user_id = user_id


class CollectionMismatch(ValueError):
    """A correction between two people of different collections: faces never cross galleries."""


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


@dataclass(frozen=True)
class Merge:
    """What merge_users did: B's served faces moved to A; B tombstoned, its row left for the erasure to finish."""

    into: UserRow
    moved: list[FaceRow]  # B's served faces, now A's (empty on a repeat)
    dropped: list[FaceRow]  # B's faces not yet served (enrolls in flight), tombstoned: erased with B
    repeated: bool  # B had been merged into A already: nothing changed here
    from_row_left: bool  # B's row is still there (this merge, or one whose erasure was cut short): erase it


@dataclass(frozen=True)
class Move:
    face: FaceRow  # as it is now
    from_user_id: int
    moved: bool  # False: it already belonged to the user


@dataclass(frozen=True)
class NewUnknownFace:
    collection_id: int
    job_id: str
    face_index: int
    crop_key: str  # the kept copy (common/db/unknown_faces.py), not the job's own crop
    box: Sequence[float]
    det_score: float
    model_pack: str

    @property
    def face_job_id(self) -> str:
        return unknown_face_job_id(self.job_id, self.face_index)


def unknown_face_job_id(job_id: str, face_index: int) -> str:
    """The identity a face of a search keeps for life: its faces.job_id once named (one face per enroll job there)."""
    return f"{job_id}-{face_index}"


def unknown_crop_key(face_job_id: str) -> str:
    """Where an unknown face's crop is kept (a search's own crops are deleted when its job ends)."""
    return f"unknown/{face_job_id}.png"


@dataclass(frozen=True)
class UnknownFaceRow:
    id: int
    collection_id: int
    job_id: str
    face_index: int
    face_job_id: str
    crop_key: str
    box: list[float]
    det_score: float
    model_pack: str
    cluster_id: int | None
    from_face_id: int | None
    to_face_id: int | None
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class ClusterRow:
    id: int
    collection_id: int
    model_pack: str
    named_user_id: int | None
    dismissed_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class ClusterSummary:
    id: int
    model_pack: str
    created_at: datetime
    faces: int
    sample_crop_keys: list[str]


@dataclass(frozen=True)
class NamingTarget:
    """An existing person of the cluster's collection (user_id), or a new one (email, full_name)."""

    user_id: int | None = None
    email: str | None = None
    full_name: str = ""


@dataclass(frozen=True)
class Naming:
    user_id: int
    created: bool  # this call created the person
    model_pack: str
    moves: list[tuple[int, int]]  # (unknown face id, face id) whose embeddings are still to move
    left_out: int  # faces rejected for this person, left waiting


class ClusterTaken(ValueError):
    """The cluster was named as someone else, or dismissed."""

    def __init__(self, cluster_id: int, how: str) -> None:
        super().__init__(f"cluster {cluster_id} was {how}")
        self.how = how


_UNKNOWN_COLUMNS = (
    "id, collection_id, job_id, face_index, face_job_id, crop_key, box, det_score, model_pack, cluster_id,"
    " from_face_id, to_face_id, created_at, expires_at"
)
_CLUSTER_COLUMNS = "id, collection_id, model_pack, named_user_id, dismissed_at, created_at"
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

    def enroll_target(self, user_id: int, external_id: str | None) -> tuple[UserRow | None, bool]:
        """What the API checks before it takes an enroll, in one query: the user, and whether a served face of the
        user's collection has ``external_id`` already (False without one, or without the user)."""
        with self.pool.connection() as conn:
            row = conn.execute(
                f"SELECT {_USER_COLUMNS}, %(external_id)s::text IS NOT NULL AND EXISTS (SELECT 1 FROM faces f"
                "  WHERE f.collection_id = users.collection_id AND f.external_id = %(external_id)s AND f.served)"
                " FROM users WHERE id = %(user_id)s",
                {"user_id": user_id, "external_id": external_id},
            ).fetchone()
        if row is None:
            return None, False
        return UserRow(*row[:-1]), bool(row[-1])

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
        face's external id, Reassigned when the job's face was served and then moved to another user (a replay of
        a finished enroll).

        Three round trips and six commands (the pool's check; BEGIN, the lock and one statement of every check; the
        insert and COMMIT) where one command at a time took eleven of each: the statements of a pipeline still run
        one after the other, and the checks' statement takes its snapshot once the lock is granted, so it sees what
        an erasure that held the lock committed, as the checks one by one did."""
        with self.pool.connection() as conn:
            with conn.pipeline():
                user_read = conn.execute(
                    "SELECT is_active, collection_id FROM users WHERE id = %s FOR SHARE", (face.user_id,)
                )
                checks_read = conn.execute(
                    "SELECT (SELECT id FROM faces WHERE job_id = %(job)s),"
                    " (SELECT user_id FROM faces WHERE job_id = %(job)s AND served),"
                    f" {_ERASED_COLUMNS}, {_RETURNED_COLUMN}",
                    {"user": face.user_id, "job": face.job_id},
                )
            checks = checks_read.fetchone()
            assert checks is not None
            found, served_to = checks[0], checks[1]
            # Before the tombstones: the user of a face merged away is erased, and that must not erase the face.
            if served_to is not None and int(served_to) != face.user_id:
                raise Reassigned(face.job_id, face_id=int(found), user_id=int(served_to))
            _check_erased(checks[2:4], face.job_id, ())
            _check_returned(checks[4:], face.job_id)
            if found is not None:
                return int(found)
            user = user_read.fetchone()
            # A person of another collection is no person of the job's: the job cannot reach outside it.
            if user is None or not user[0] or int(user[1]) != face.collection_id:
                raise UnknownUser(face.user_id)
            try:
                with conn.pipeline():
                    inserted = conn.execute(
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
                    )
                    conn.commit()
            except psycopg.errors.UniqueViolation as exc:  # two enrolls raced for one external id
                raise DuplicateFaceExternalId(face.external_id or "") from exc
            row = inserted.fetchone()
            if row is None:  # the other worker's row committed after this statement's snapshot: the next one sees it
                row = conn.execute("SELECT id FROM faces WHERE job_id = %s", (face.job_id,)).fetchone()
        assert row is not None
        return int(row[0])

    def serve_face(self, face_id: int, user_id: int, job_id: str) -> None:
        """Serve the face once its embedding is committed; raises Erased if it was erased meanwhile. The lock, the
        check and the update go in one round trip (a pipeline: each statement after the one before it), and the
        update is rolled back when the check finds a tombstone."""
        with self.pool.connection() as conn:
            with conn.pipeline():
                conn.execute("SELECT 1 FROM users WHERE id = %s FOR SHARE", (user_id,))
                erased_read = _read_erased(conn, user_id, job_id)
                served = conn.execute("UPDATE faces SET served = true WHERE id = %s", (face_id,))
            _check_erased(erased_read.fetchone(), job_id, (face_id,))
            if served.rowcount != 1:
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
            faces = _faces_of(conn, user_id)
            _tombstone_faces(conn, faces)
            conn.execute("UPDATE faces SET served = false WHERE user_id = %s", (user_id,))
        return faces

    # -- corrections: lock the users in id order (FOR UPDATE), so that two of them, or one beside an enrollment or
    # an erasure (which lock one user each), never wait for each other in a cycle ------------------------------

    def merge_users(self, into_id: int, from_id: int, visible: Collection[int] | None = None) -> Merge:
        """Move every served face of user ``from_id`` (B) to ``into_id`` (A), tombstone B (erased_users, and a
        merged_users record) and B's faces not yet served, and deactivate B, in one transaction. B's row and what
        else is held about B go afterwards (common/db/erasure.py). ``visible``: the caller's collections (None:
        all); a user outside them is unknown. A repeat of a merge that was done returns A, changing nothing.

        Raises UnknownUser (A missing or inactive, B missing or erased), CollectionMismatch."""
        if into_id == from_id:
            raise ValueError("a user cannot be merged into itself")
        with self.pool.connection() as conn, conn.transaction():
            users = _lock_users(conn, [into_id, from_id])
            merged_into = conn.execute("SELECT merged_into FROM merged_users WHERE user_id = %s", (from_id,)).fetchone()
            target = users.get(into_id)
            if target is None or not _sees(visible, target.collection_id):
                raise UnknownUser(into_id)
            if merged_into is not None:
                if int(merged_into[0]) != into_id:
                    raise UnknownUser(from_id)  # merged into someone else: as a person, B is gone
                # B's row is still there when the erasure after the first merge was cut short: finish it.
                dropped = _faces_of(conn, from_id) if from_id in users else []
                return Merge(_user(conn, into_id), [], dropped, repeated=True, from_row_left=from_id in users)
            source = users.get(from_id)
            if source is None or source.erased or not _sees(visible, source.collection_id):
                raise UnknownUser(from_id)
            if not target.is_active or target.erased:
                raise UnknownUser(into_id)
            if source.collection_id != target.collection_id:
                raise CollectionMismatch(f"users {into_id} and {from_id} are in different collections")
            with conn.cursor(row_factory=class_row(FaceRow)) as cur:
                moved = cur.execute(
                    f"UPDATE faces SET user_id = %s WHERE user_id = %s AND served RETURNING {_FACE_COLUMNS}",
                    (into_id, from_id),
                ).fetchall()
            dropped = _faces_of(conn, from_id)
            _tombstone_faces(conn, dropped)
            conn.execute("INSERT INTO erased_users (user_id) VALUES (%s) ON CONFLICT DO NOTHING", (from_id,))
            conn.execute("INSERT INTO merged_users (user_id, merged_into) VALUES (%s, %s)", (from_id, into_id))
            conn.execute("UPDATE users SET is_active = false, updated_at = now() WHERE id = %s", (from_id,))
            return Merge(_user(conn, into_id), sorted(moved, key=lambda f: f.id), dropped, False, True)

    def move_face(self, face_id: int, to_user_id: int, visible: Collection[int] | None = None) -> Move:
        """Give a served face to another active user of its collection, in one transaction; the face keeps its id,
        embeddings, photo and crop. Moving it to its own user changes nothing. ``visible`` as in merge_users.

        Raises UnknownFace, UnknownUser (the target missing, inactive or erased), CollectionMismatch."""
        with self.pool.connection() as conn:
            for _ in range(MOVE_ATTEMPTS):
                with conn.transaction():
                    found = conn.execute("SELECT user_id FROM faces WHERE id = %s AND served", (face_id,)).fetchone()
                    if found is None:
                        raise UnknownFace(face_id)
                    owner_id = int(found[0])
                    users = _lock_users(conn, [owner_id, to_user_id])
                    with conn.cursor(row_factory=class_row(FaceRow)) as cur:
                        face = cur.execute(
                            f"SELECT {_FACE_COLUMNS} FROM faces WHERE id = %s AND served FOR UPDATE", (face_id,)
                        ).fetchone()
                    if face is None:
                        raise UnknownFace(face_id)
                    if face.user_id != owner_id:
                        continue  # moved by another correction before the lock: lock its new owner
                    owner, target = users.get(owner_id), users.get(to_user_id)
                    if owner is None or not _sees(visible, owner.collection_id):
                        raise UnknownFace(face_id)
                    if (
                        target is None
                        or not target.is_active
                        or target.erased
                        or not _sees(visible, target.collection_id)
                    ):
                        raise UnknownUser(to_user_id)
                    if owner.collection_id != target.collection_id:
                        raise CollectionMismatch(f"face {face_id} and user {to_user_id} are in different collections")
                    if owner_id == to_user_id:
                        return Move(face, owner_id, moved=False)
                    with conn.cursor(row_factory=class_row(FaceRow)) as cur:
                        now = cur.execute(
                            f"UPDATE faces SET user_id = %s WHERE id = %s RETURNING {_FACE_COLUMNS}",
                            (to_user_id, face_id),
                        ).fetchone()
                    assert now is not None
                    return Move(now, owner_id, moved=True)
        raise TransientError(f"face {face_id} kept changing owner; retry")

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

    # -- unknown faces (migration 0007; common/db/unknown_faces.py says how the steps fit together) ------------

    def set_unknown_faces_policy(
        self, collection_id: int, *, keep: bool | None, retention_hours: int | None
    ) -> CollectionRow | None:
        """Change the collection's unknown-face policy (its row has it: get_collection reads it); a new retention
        applies to the faces kept already (their expiry moves with it)."""
        with self.pool.connection() as conn, conn.transaction():
            with conn.cursor(row_factory=class_row(CollectionRow)) as cur:
                row = cur.execute(
                    "UPDATE collections SET keep_unknown_faces = coalesce(%s, keep_unknown_faces),"
                    " unknown_retention_hours = coalesce(%s, unknown_retention_hours) WHERE id = %s"
                    f" RETURNING {_COLLECTION_COLUMNS}",
                    (keep, retention_hours, collection_id),
                ).fetchone()
            if row is None:
                return None
            if retention_hours is not None:
                conn.execute(
                    "UPDATE unknown_faces SET expires_at = created_at + make_interval(hours => %s)"
                    " WHERE collection_id = %s",
                    (retention_hours, collection_id),
                )
        return row

    def unknown_faces_of_job(self, job_id: str) -> list[UnknownFaceRow]:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(UnknownFaceRow)) as cur:
            cur.execute(
                f"SELECT {_UNKNOWN_COLUMNS} FROM unknown_faces WHERE job_id = %s ORDER BY face_index", (job_id,)
            )
            return cur.fetchall()

    def face_identities_taken(self, face_job_ids: Sequence[str]) -> set[str]:
        """Which of these face identities must not be kept as unknown again: kept already, enrolled (a named
        face), erased or dismissed."""
        if not face_job_ids:
            return set()
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT id FROM unnest(%s::text[]) AS t(id) WHERE"
                " EXISTS (SELECT 1 FROM unknown_faces u WHERE u.face_job_id = t.id)"
                " OR EXISTS (SELECT 1 FROM faces f WHERE f.job_id = t.id)"
                " OR EXISTS (SELECT 1 FROM erased_faces e WHERE e.job_id = t.id)"
                " OR EXISTS (SELECT 1 FROM erased_unknown_faces d WHERE d.face_job_id = t.id)",
                (list(face_job_ids),),
            ).fetchall()
        return {str(row[0]) for row in rows}

    def add_unknown_faces(self, faces: Sequence[NewUnknownFace], retention_hours: int) -> list[UnknownFaceRow]:
        """Insert these faces of one search (a face kept already is left as it is); returns the job's rows."""
        if not faces:
            return []
        with self.pool.connection() as conn, conn.transaction():
            for face in faces:
                conn.execute(
                    "INSERT INTO unknown_faces (collection_id, job_id, face_index, face_job_id, crop_key, box,"
                    " det_score, model_pack, expires_at)"
                    " SELECT %s, %s, %s, %s, %s, %s, %s, %s, now() + make_interval(hours => %s)"
                    " WHERE NOT EXISTS (SELECT 1 FROM faces WHERE job_id = %s)"
                    " AND NOT EXISTS (SELECT 1 FROM erased_faces WHERE job_id = %s)"
                    " AND NOT EXISTS (SELECT 1 FROM erased_unknown_faces WHERE face_job_id = %s)"
                    " ON CONFLICT DO NOTHING",
                    (
                        face.collection_id,
                        face.job_id,
                        face.face_index,
                        face.face_job_id,
                        face.crop_key,
                        list(face.box),
                        face.det_score,
                        face.model_pack,
                        retention_hours,
                        face.face_job_id,
                        face.face_job_id,
                        face.face_job_id,
                    ),
                )
        return self.unknown_faces_of_job(faces[0].job_id)

    def get_unknown_face(self, unknown_id: int) -> UnknownFaceRow | None:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(UnknownFaceRow)) as cur:
            cur.execute(f"SELECT {_UNKNOWN_COLUMNS} FROM unknown_faces WHERE id = %s", (unknown_id,))
            return cur.fetchone()

    def place_unknown_face(
        self, unknown_id: int, nearby: Sequence[tuple[int, float]], parameters: ClusterParameters
    ) -> Placement | None:
        """Apply clustering's placement of the face among ``nearby`` (unknown face id, cosine distance), deciding
        on the cluster memberships read under the collection's lock (two workers placing at once see each other's
        clusters); None when the face is gone or placed already."""
        with self.pool.connection() as conn, conn.transaction():
            me = conn.execute(
                "SELECT collection_id, model_pack, cluster_id FROM unknown_faces WHERE id = %s AND to_face_id IS NULL",
                (unknown_id,),
            ).fetchone()
            if me is None or me[2] is not None:
                return None
            collection_id, pack = int(me[0]), str(me[1])
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('fecapass.unknown_faces'), %s::int)", (collection_id,))
            ids = [face_id for face_id, _ in nearby if face_id != unknown_id]
            rows = conn.execute(
                "SELECT u.id, u.cluster_id FROM unknown_faces u LEFT JOIN unknown_clusters c ON c.id = u.cluster_id"
                " WHERE u.id = ANY(%s) AND u.collection_id = %s AND u.model_pack = %s AND u.to_face_id IS NULL"
                " AND (u.cluster_id IS NULL OR (c.named_user_id IS NULL AND c.dismissed_at IS NULL))",
                (ids, collection_id, pack),
            ).fetchall()
            clusters = {int(row[0]): (int(row[1]) if row[1] is not None else None) for row in rows}
            distances = dict(nearby)
            placement = place(
                [Nearby(face_id, distances[face_id], cluster) for face_id, cluster in clusters.items()], parameters
            )
            if isinstance(placement, Join):
                # Naming and dismissal lock the cluster first: one that ended meanwhile takes no new face (this
                # face waits for the next settle pass instead of sinking into a cluster nobody lists).
                open_cluster = conn.execute(
                    "SELECT 1 FROM unknown_clusters WHERE id = %s AND named_user_id IS NULL AND dismissed_at IS NULL"
                    " FOR SHARE",
                    (placement.cluster_id,),
                ).fetchone()
                if open_cluster is None:
                    return Wait()
                conn.execute(
                    "UPDATE unknown_faces SET cluster_id = %s WHERE id = %s", (placement.cluster_id, unknown_id)
                )
            elif isinstance(placement, Found):
                row = conn.execute(
                    "INSERT INTO unknown_clusters (collection_id, model_pack) VALUES (%s, %s) RETURNING id",
                    (collection_id, pack),
                ).fetchone()
                assert row is not None
                conn.execute(
                    "UPDATE unknown_faces SET cluster_id = %s WHERE id = ANY(%s) AND cluster_id IS NULL",
                    (int(row[0]), [unknown_id, *placement.face_ids]),
                )
        return placement

    def waiting_unknown_faces(self, after: int, limit: int, collection_id: int | None = None) -> list[UnknownFaceRow]:
        """Unclustered unknown faces not expired (of one collection, or all), oldest first (the settle pass)."""
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(UnknownFaceRow)) as cur:
            cur.execute(
                f"SELECT {_UNKNOWN_COLUMNS} FROM unknown_faces WHERE id > %s AND cluster_id IS NULL"
                " AND to_face_id IS NULL AND expires_at > now() AND (%s::bigint IS NULL OR collection_id = %s)"
                " ORDER BY id LIMIT %s",
                (after, collection_id, collection_id, limit),
            )
            return cur.fetchall()

    def expired_unknown_faces(self, limit: int) -> list[UnknownFaceRow]:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(UnknownFaceRow)) as cur:
            cur.execute(
                f"SELECT {_UNKNOWN_COLUMNS} FROM unknown_faces WHERE expires_at <= now() AND to_face_id IS NULL"
                " ORDER BY expires_at, id LIMIT %s",
                (limit,),
            )
            return cur.fetchall()

    def collection_unknown_faces(self, collection_id: int) -> list[UnknownFaceRow]:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(UnknownFaceRow)) as cur:
            cur.execute(
                f"SELECT {_UNKNOWN_COLUMNS} FROM unknown_faces WHERE collection_id = %s ORDER BY id", (collection_id,)
            )
            return cur.fetchall()

    def delete_unknown_faces(self, unknown_ids: Sequence[int]) -> None:
        """The rows last (their vectors and crops are gone), and clusters left empty that nobody named or
        dismissed. Rejections stay (identifiers only) until their person or collection is erased: an enroll entry
        of the face delivered again is still refused."""
        if not unknown_ids:
            return
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "DELETE FROM unknown_faces WHERE id = ANY(%s) RETURNING face_job_id, cluster_id", (list(unknown_ids),)
            ).fetchall()
            conn.execute(
                "DELETE FROM unknown_clusters c WHERE c.id = ANY(%s) AND c.named_user_id IS NULL"
                " AND c.dismissed_at IS NULL AND NOT EXISTS (SELECT 1 FROM unknown_faces u WHERE u.cluster_id = c.id)",
                ([int(r[1]) for r in rows if r[1] is not None],),
            )

    def forget_old_clusters(self) -> int:
        """Named and dismissed clusters (kept so that repeating the call answers the same) once their collection's
        retention has passed since they were made, and empty ones."""
        with self.pool.connection() as conn:
            return conn.execute(
                "DELETE FROM unknown_clusters c USING collections k WHERE k.id = c.collection_id"
                " AND NOT EXISTS (SELECT 1 FROM unknown_faces u WHERE u.cluster_id = c.id)"
                " AND ((c.named_user_id IS NULL AND c.dismissed_at IS NULL)"
                "      OR c.created_at + make_interval(hours => k.unknown_retention_hours) <= now())"
            ).rowcount

    def list_clusters(self, collection_id: int, after: int, limit: int, samples: int) -> list[ClusterSummary]:
        """Clusters waiting for a name, in id order, with their face counts and the crops of their best faces."""
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(ClusterSummary)) as cur:
            cur.execute(
                "SELECT c.id, c.model_pack, c.created_at, count(u.id) AS faces,"
                " (array_agg(u.crop_key ORDER BY u.det_score DESC, u.id))[1:%s] AS sample_crop_keys"
                " FROM unknown_clusters c JOIN unknown_faces u ON u.cluster_id = c.id AND u.to_face_id IS NULL"
                " WHERE c.collection_id = %s AND c.id > %s AND c.named_user_id IS NULL AND c.dismissed_at IS NULL"
                " GROUP BY c.id ORDER BY c.id LIMIT %s",
                (samples, collection_id, after, limit),
            )
            return cur.fetchall()

    def get_cluster(self, cluster_id: int) -> ClusterRow | None:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(ClusterRow)) as cur:
            cur.execute(f"SELECT {_CLUSTER_COLUMNS} FROM unknown_clusters WHERE id = %s", (cluster_id,))
            return cur.fetchone()

    def begin_naming(self, cluster_id: int, target: NamingTarget) -> Naming:
        """One transaction: the person found or created, the cluster's faces inserted as their faces (not served
        until their embeddings are in face_embeddings), faces rejected for that person left out (back to waiting).
        Naming again as the same person returns the same naming (with what is left to finish); another person:
        ClusterTaken. Raises LookupError for an unknown cluster, UnknownUser, DuplicateEmail."""
        with self.pool.connection() as conn, conn.transaction():
            with conn.cursor(row_factory=class_row(ClusterRow)) as cur:
                cluster = cur.execute(
                    f"SELECT {_CLUSTER_COLUMNS} FROM unknown_clusters WHERE id = %s FOR UPDATE", (cluster_id,)
                ).fetchone()
            if cluster is None:
                raise LookupError(cluster_id)
            if cluster.dismissed_at is not None:
                raise ClusterTaken(cluster_id, "dismissed")
            if cluster.named_user_id is not None:
                if not _names_user(conn, target, cluster.named_user_id):
                    raise ClusterTaken(cluster_id, f"named as user {cluster.named_user_id}")
                return Naming(cluster.named_user_id, False, cluster.model_pack, _moves(conn, cluster_id), 0)
            user_id, created = _naming_user(conn, cluster.collection_id, target)
            rejected = conn.execute(
                "UPDATE unknown_faces u SET cluster_id = NULL WHERE u.cluster_id = %s AND u.to_face_id IS NULL"
                " AND EXISTS (SELECT 1 FROM face_rejections r WHERE r.face_job_id = u.face_job_id AND r.user_id = %s)",
                (cluster_id, user_id),
            ).rowcount
            conn.execute(
                "WITH moved AS ("
                "  INSERT INTO faces (user_id, collection_id, job_id, image_key, crop_key, box, det_score, faces_seen,"
                "                     model_pack, served)"
                "  SELECT %s, u.collection_id, u.face_job_id, u.crop_key, u.crop_key, u.box, u.det_score, 1,"
                "         u.model_pack, false"
                "  FROM unknown_faces u WHERE u.cluster_id = %s AND u.to_face_id IS NULL ORDER BY u.id"
                "  RETURNING id, job_id"
                ") UPDATE unknown_faces u SET to_face_id = moved.id FROM moved WHERE u.face_job_id = moved.job_id",
                (user_id, cluster_id),
            )
            conn.execute("UPDATE unknown_clusters SET named_user_id = %s WHERE id = %s", (user_id, cluster_id))
            return Naming(user_id, created, cluster.model_pack, _moves(conn, cluster_id), rejected)

    def finish_naming(self, cluster_id: int, user_id: int, face_ids: Sequence[int]) -> bool:
        """Serve the named faces (their embeddings are committed) and drop their unknown rows; False (nothing
        served) when the person was erased meanwhile: the caller deletes the embeddings it wrote."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT 1 FROM users WHERE id = %s FOR SHARE", (user_id,))
            erased = conn.execute("SELECT 1 FROM erased_users WHERE user_id = %s", (user_id,)).fetchone()
            if erased is None:
                conn.execute(
                    "UPDATE faces f SET served = true WHERE f.id = ANY(%s) AND f.user_id = %s"
                    " AND NOT EXISTS (SELECT 1 FROM erased_faces e WHERE e.job_id = f.job_id)",
                    (list(face_ids), user_id),
                )
            conn.execute(
                "DELETE FROM unknown_faces WHERE cluster_id = %s AND to_face_id = ANY(%s)", (cluster_id, list(face_ids))
            )
        return erased is None

    def begin_dismissal(self, cluster_id: int) -> list[UnknownFaceRow]:
        """Mark the cluster dismissed and tombstone its faces (a redelivered search keeps none of them again);
        returns the faces still to erase. Raises LookupError for an unknown cluster, ClusterTaken once named."""
        with self.pool.connection() as conn, conn.transaction():
            with conn.cursor(row_factory=class_row(ClusterRow)) as cur:
                cluster = cur.execute(
                    f"SELECT {_CLUSTER_COLUMNS} FROM unknown_clusters WHERE id = %s FOR UPDATE", (cluster_id,)
                ).fetchone()
            if cluster is None:
                raise LookupError(cluster_id)
            if cluster.named_user_id is not None:
                raise ClusterTaken(cluster_id, f"named as user {cluster.named_user_id}")
            conn.execute(
                "UPDATE unknown_clusters SET dismissed_at = coalesce(dismissed_at, now()) WHERE id = %s", (cluster_id,)
            )
            with conn.cursor(row_factory=class_row(UnknownFaceRow)) as cur:
                faces = cur.execute(
                    f"SELECT {_UNKNOWN_COLUMNS} FROM unknown_faces WHERE cluster_id = %s AND to_face_id IS NULL"
                    " ORDER BY id",
                    (cluster_id,),
                ).fetchall()
            conn.execute(
                "INSERT INTO erased_unknown_faces (face_job_id) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
                ([face.face_job_id for face in faces],),
            )
        return faces

    def begin_not_this_person(self, face_id: int) -> tuple[UnknownFaceRow, FaceRow | None] | None:
        """One transaction: the enrolled face leaves its person for the unknown pool of its collection (a new
        unknown row, from_face_id = the face, its crop under unknown_crop_key) and the rejection (face, person) is
        recorded; returns the unknown row and the face row it was. Asked again for the same face: the unknown row and
        None (the caller finishes what is left). None for a face that is neither."""
        with self.pool.connection() as conn, conn.transaction():
            with conn.cursor(row_factory=class_row(FaceRow)) as cur:
                face = cur.execute(f"SELECT {_FACE_COLUMNS} FROM faces WHERE id = %s AND served", (face_id,)).fetchone()
            if face is None:
                with conn.cursor(row_factory=class_row(UnknownFaceRow)) as unknown:
                    again = unknown.execute(
                        f"SELECT {_UNKNOWN_COLUMNS} FROM unknown_faces WHERE from_face_id = %s", (face_id,)
                    ).fetchone()
                return None if again is None else (again, None)
            conn.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (face.user_id,))
            if conn.execute("UPDATE faces SET served = false WHERE id = %s AND served", (face_id,)).rowcount != 1:
                return None  # an erasure got there first
            conn.execute(
                "INSERT INTO face_rejections (face_job_id, user_id, collection_id)"
                " SELECT job_id, user_id, collection_id FROM faces WHERE id = %s ON CONFLICT DO NOTHING",
                (face_id,),
            )
            with conn.cursor(row_factory=class_row(UnknownFaceRow)) as cur:
                moved = cur.execute(
                    "INSERT INTO unknown_faces (collection_id, job_id, face_index, face_job_id, crop_key, box,"
                    " det_score, model_pack, from_face_id, expires_at)"
                    " SELECT f.collection_id, f.job_id, 0, f.job_id, %s, f.box, f.det_score, f.model_pack, f.id,"
                    " now() + make_interval(hours => k.unknown_retention_hours)"
                    " FROM faces f JOIN collections k ON k.id = f.collection_id WHERE f.id = %s"
                    f" RETURNING {_UNKNOWN_COLUMNS}",
                    (unknown_crop_key(face.job_id), face_id),
                ).fetchone()
            conn.execute("DELETE FROM faces WHERE id = %s", (face_id,))
        assert moved is not None
        return moved, face

    def unknown_face_from(self, face_id: int) -> UnknownFaceRow | None:
        """The unknown face an enrolled face became ("not this person")."""
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(UnknownFaceRow)) as cur:
            cur.execute(f"SELECT {_UNKNOWN_COLUMNS} FROM unknown_faces WHERE from_face_id = %s", (face_id,))
            return cur.fetchone()

    def rejected_users(self, face_job_id: str) -> list[int]:
        """The people this face is not, the latest rejection last."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT user_id FROM face_rejections WHERE face_job_id = %s ORDER BY created_at, user_id",
                (face_job_id,),
            ).fetchall()
        return [int(row[0]) for row in rows]

    def delete_collection_unknowns(self, collection_id: int) -> None:
        """Clusters and rejections of the collection (its unknown faces' vectors and crops are gone first)."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("DELETE FROM unknown_faces WHERE collection_id = %s", (collection_id,))
            conn.execute("DELETE FROM unknown_clusters WHERE collection_id = %s", (collection_id,))
            conn.execute("DELETE FROM face_rejections WHERE collection_id = %s", (collection_id,))


def _names_user(conn: psycopg.Connection[Any], target: NamingTarget, user_id: int) -> bool:
    if target.user_id is not None:
        return target.user_id == user_id
    row = conn.execute("SELECT lower(email) = lower(%s) FROM users WHERE id = %s", (target.email, user_id)).fetchone()
    return bool(row and row[0])


def _naming_user(conn: psycopg.Connection[Any], collection_id: int, target: NamingTarget) -> tuple[int, bool]:
    """The person a cluster is named as (locked against an erasure), and whether this call created them."""
    if target.user_id is not None:
        row = conn.execute(
            "SELECT is_active, collection_id FROM users WHERE id = %s FOR SHARE", (target.user_id,)
        ).fetchone()
        if row is None or not row[0] or int(row[1]) != collection_id:
            raise UnknownUser(target.user_id)
        return target.user_id, False
    created = conn.execute(
        "INSERT INTO users (email, full_name, collection_id) VALUES (%s, %s, %s)"
        " ON CONFLICT (collection_id, lower(email)) DO NOTHING RETURNING id",
        (target.email, target.full_name, collection_id),
    ).fetchone()
    if created is None:
        raise DuplicateEmail(target.email or "")
    return int(created[0]), True


def _moves(conn: psycopg.Connection[Any], cluster_id: int) -> list[tuple[int, int]]:
    rows = conn.execute(
        "SELECT id, to_face_id FROM unknown_faces WHERE cluster_id = %s AND to_face_id IS NOT NULL ORDER BY id",
        (cluster_id,),
    ).fetchall()
    return [(int(row[0]), int(row[1])) for row in rows]


@dataclass(frozen=True)
class _LockedUser:
    is_active: bool
    collection_id: int
    erased: bool


def _lock_users(conn: psycopg.Connection[Any], user_ids: Sequence[int]) -> dict[int, _LockedUser]:
    """Lock the rows of these users, in id order (LockRows runs above the sort)."""
    ids = sorted(set(user_ids))
    rows = conn.execute(
        "SELECT id, is_active, collection_id FROM users WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,)
    ).fetchall()
    # A statement of its own, after the locks: its snapshot sees the tombstone of an erasure that held one of them
    # (the locking statement's snapshot predates that commit).
    erased = {int(row[0]) for row in conn.execute("SELECT user_id FROM erased_users WHERE user_id = ANY(%s)", (ids,))}
    return {int(row[0]): _LockedUser(bool(row[1]), int(row[2]), int(row[0]) in erased) for row in rows}


def _sees(visible: Collection[int] | None, collection_id: int) -> bool:
    return visible is None or collection_id in visible


def _user(conn: psycopg.Connection[Any], user_id: int) -> UserRow:
    with conn.cursor(row_factory=class_row(UserRow)) as cur:
        row = cur.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = %s", (user_id,)).fetchone()
    assert row is not None
    return row


def _faces_of(conn: psycopg.Connection[Any], user_id: int) -> list[FaceRow]:
    """Every face row of the user, served or not."""
    with conn.cursor(row_factory=class_row(FaceRow)) as cur:
        return cur.execute(f"SELECT {_FACE_COLUMNS} FROM faces WHERE user_id = %s ORDER BY id", (user_id,)).fetchall()


# Whether the user is tombstoned, and the tombstone of the job's face (parameters user, job).
_ERASED_COLUMNS = (
    "EXISTS (SELECT 1 FROM erased_users WHERE user_id = %(user)s),"
    " (SELECT face_id FROM erased_faces WHERE job_id = %(job)s)"
)
# Whether the job's face went back to the unknown pool, away from this user (parameters user, job).
_RETURNED_COLUMN = (
    "EXISTS (SELECT 1 FROM face_rejections WHERE face_job_id = %(job)s AND user_id = %(user)s)"
    " OR EXISTS (SELECT 1 FROM unknown_faces WHERE face_job_id = %(job)s)"
    " OR EXISTS (SELECT 1 FROM erased_unknown_faces WHERE face_job_id = %(job)s)"
)


def _read_erased(conn: psycopg.Connection[Any], user_id: int, job_id: str) -> psycopg.Cursor[Any]:
    return conn.execute(f"SELECT {_ERASED_COLUMNS}", {"user": user_id, "job": job_id})


def _check_erased(row: Sequence[Any] | None, job_id: str, face_ids: Sequence[int]) -> None:
    """Raise Erased when the _ERASED_COLUMNS of a row find the user or the job's face tombstoned."""
    assert row is not None
    user_erased, erased_face = bool(row[0]), row[1]
    if user_erased or erased_face is not None:
        known = [*face_ids, *([int(erased_face)] if erased_face is not None else [])]
        raise Erased(job_id, user_erased=user_erased, face_ids=known)


def _check_returned(row: Sequence[Any] | None, job_id: str) -> None:
    """A face sent back to the unknown pool ("not this person") or dismissed there is not this person's face again,
    whatever enroll entry is delivered again (the _RETURNED_COLUMN of a row)."""
    if row is not None and row[0]:
        raise Erased(job_id, user_erased=False, face_ids=())


def _tombstone_faces(conn: psycopg.Connection[Any], faces: Sequence[FaceRow]) -> None:
    if faces:
        conn.execute(
            "INSERT INTO erased_faces (job_id, face_id) SELECT * FROM unnest(%s::text[], %s::bigint[])"
            " ON CONFLICT (job_id) DO NOTHING",
            ([face.job_id for face in faces], [face.id for face in faces]),
        )
