"""SQL for the main database: users and faces."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row
from psycopg_pool import ConnectionPool


class DuplicateEmail(ValueError):
    pass


class UnknownUser(LookupError):
    pass


@dataclass(frozen=True)
class UserRow:
    id: int
    email: str
    full_name: str
    is_active: bool
    created_at: datetime
    updated_at: datetime


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


@dataclass(frozen=True)
class ApiKeyRow:
    id: int
    name: str
    scope: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class FaceOwner:
    face_id: int
    user_id: int
    image_key: str


_USER_COLUMNS = "id, email, full_name, is_active, created_at, updated_at"
_FACE_COLUMNS = "id, user_id, job_id, image_key, crop_key, box, det_score, faces_seen, model_pack, created_at"
_KEY_COLUMNS = "id, name, scope, prefix, created_at, revoked_at"


class MainRepository:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def create_user(self, email: str, full_name: str) -> UserRow:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(UserRow)) as cur:
            cur.execute(
                f"INSERT INTO users (email, full_name) VALUES (%s, %s)"
                f" ON CONFLICT (lower(email)) DO NOTHING RETURNING {_USER_COLUMNS}",
                (email, full_name),
            )
            row = cur.fetchone()
        if row is None:
            raise DuplicateEmail(email)
        return row

    def get_user(self, user_id: int) -> UserRow | None:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(UserRow)) as cur:
            cur.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = %s", (user_id,))
            return cur.fetchone()

    def list_users(self, after: int, limit: int, containing: str = "") -> list[UserRow]:
        """Keyset pagination: users with id > after, in id order; with ``containing``, only those whose name or
        email contains it (case-insensitive, taken literally: % and _ match themselves)."""
        pattern = "%" + containing.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(UserRow)) as cur:
            cur.execute(
                f"SELECT {_USER_COLUMNS} FROM users WHERE id > %s AND (%s = '' OR full_name ILIKE %s OR email ILIKE %s)"
                " ORDER BY id LIMIT %s",
                (after, containing, pattern, pattern, limit),
            )
            return cur.fetchall()

    def update_user(
        self, user_id: int, *, email: str | None, full_name: str | None, is_active: bool | None
    ) -> UserRow | None:
        try:
            with self.pool.connection() as conn, conn.cursor(row_factory=class_row(UserRow)) as cur:
                cur.execute(
                    f"UPDATE users SET email = coalesce(%s, email), full_name = coalesce(%s, full_name),"
                    f" is_active = coalesce(%s, is_active), updated_at = now() WHERE id = %s RETURNING {_USER_COLUMNS}",
                    (email, full_name, is_active, user_id),
                )
                return cur.fetchone()
        except psycopg.errors.UniqueViolation as exc:
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
            cur.execute(f"SELECT {_FACE_COLUMNS} FROM faces WHERE user_id = %s ORDER BY id", (user_id,))
            return cur.fetchall()

    def get_face(self, face_id: int) -> FaceRow | None:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(FaceRow)) as cur:
            cur.execute(f"SELECT {_FACE_COLUMNS} FROM faces WHERE id = %s", (face_id,))
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

    def delete_face(self, face_id: int) -> None:
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM faces WHERE id = %s", (face_id,))

    # -- API keys ------------------------------------------------------------------------------------

    def create_api_key(self, name: str, scope: str, prefix: str, key_hash: bytes) -> ApiKeyRow:
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(ApiKeyRow)) as cur:
            cur.execute(
                f"INSERT INTO api_keys (name, scope, prefix, key_hash) VALUES (%s, %s, %s, %s)"
                f" RETURNING {_KEY_COLUMNS}",
                (name, scope, prefix, key_hash),
            )
            row = cur.fetchone()
        assert row is not None
        return row

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

    def add_face(self, face: NewFace) -> int:
        """Insert the face of an enroll job, or return the id it already has (redelivery)."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "WITH inserted AS ("
                "  INSERT INTO faces (user_id, job_id, image_key, crop_key, box, det_score, faces_seen, model_pack)"
                "  SELECT id, %s, %s, %s, %s, %s, %s, %s FROM users WHERE id = %s AND is_active"
                "  ON CONFLICT (job_id) DO NOTHING RETURNING id"
                ") SELECT id FROM inserted UNION ALL SELECT id FROM faces WHERE job_id = %s",
                (
                    face.job_id,
                    face.image_key,
                    face.crop_key,
                    list(face.box),
                    face.det_score,
                    face.faces_seen,
                    face.model_pack,
                    face.user_id,
                    face.job_id,
                ),
            ).fetchone()
        if row is None:
            raise UnknownUser(face.user_id)
        return int(row[0])

    def face_owners(self, face_ids: Sequence[int]) -> dict[int, FaceOwner]:
        """Owners of the given faces, active users only."""
        if not face_ids:
            return {}
        with self.pool.connection() as conn, conn.cursor(row_factory=class_row(FaceOwner)) as cur:
            cur.execute(
                "SELECT f.id AS face_id, f.user_id, f.image_key FROM faces f JOIN users u ON u.id = f.user_id"
                " WHERE f.id = ANY(%s) AND u.is_active",
                (list(face_ids),),
            )
            return {row.face_id: row for row in cur.fetchall()}

    def count_faces(self, user_id: int) -> int:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT count(*) FROM faces WHERE user_id = %s", (user_id,)).fetchone()
        return int(row[0]) if row else 0

    def ping(self) -> None:
        with self.pool.connection() as conn:
            conn.execute("SELECT 1")
