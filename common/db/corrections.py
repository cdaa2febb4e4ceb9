"""Corrections of who a face belongs to: merge person B into A (B's faces move to A, B is erased), move one face to
another person. Faces keep their ids, embeddings, photos and crops, so nothing is embedded again and the index
processes' codes stay as they are; a search reads each face's owner from the main database, so the next search
answers with the new owner. Each change is one transaction in the main database (main_repository.py), and a repeat
of a change that was made changes nothing.

An enroll of B still in flight when B is merged fails with ``user_not_found`` and stores nothing, as when B is
erased: B's tombstone refuses it in the index stage (a face row it had inserted, not yet served, is tombstoned by the
merge and erased with B). It is not redirected to A: the client asked for B, and the job's result names its user;
the client enrolls the photo again for A.
"""

from __future__ import annotations

from collections.abc import Collection

import structlog

from common.db.erasure import Erasure
from common.db.main_repository import MainRepository, Merge, Move

log = structlog.get_logger(__name__)


class Corrections:
    def __init__(self, main: MainRepository, erasure: Erasure) -> None:
        self.main = main
        self.erasure = erasure

    def merge(self, into_id: int, from_id: int, visible: Collection[int] | None = None) -> Merge:
        """Merge user ``from_id`` into ``into_id``; see MainRepository.merge_users for what it raises."""
        merge = self.main.merge_users(into_id, from_id, visible)
        log.info(
            "corrections.users_merged",
            user_id=into_id,
            from_user_id=from_id,
            face_ids=[face.id for face in merge.moved],
            dropped_face_ids=[face.id for face in merge.dropped],
            repeated=merge.repeated,
        )
        self.erasure.erase_merged(merge, from_id)
        return merge

    def move(self, face_id: int, to_user_id: int, visible: Collection[int] | None = None) -> Move:
        """Move face ``face_id`` to user ``to_user_id``; see MainRepository.move_face for what it raises."""
        move = self.main.move_face(face_id, to_user_id, visible)
        log.info(
            "corrections.face_moved",
            face_id=face_id,
            user_id=to_user_id,
            from_user_id=move.from_user_id,
            job_id=move.face.job_id,
            moved=move.moved,
        )
        return move
