"""Erasing a person or one face: face rows, embeddings of every pack, and the photo and crop in S3.

Each step is idempotent, so a failed erasure is finished by running it again. The user is deactivated first,
so nothing new is enrolled for them and searches stop returning them while the rest is removed.
"""

from __future__ import annotations

from common.db.main_repository import FaceRow, MainRepository
from common.db.vector_repository import VectorRepository
from common.objects import ObjectStore


class Erasure:
    def __init__(self, main: MainRepository, vectors: VectorRepository, store: ObjectStore) -> None:
        self.main = main
        self.vectors = vectors
        self.store = store

    def _erase_faces(self, faces: list[FaceRow]) -> None:
        self.vectors.delete_faces([face.id for face in faces])
        self.store.delete_many([key for face in faces for key in (face.image_key, face.crop_key)])

    def erase_user(self, user_id: int) -> bool:
        if not self.main.deactivate_user(user_id):
            return False
        self._erase_faces(self.main.list_faces(user_id))
        self.main.delete_user(user_id)
        return True

    def erase_face(self, face_id: int) -> bool:
        face = self.main.get_face(face_id)
        if face is None:
            return False
        self._erase_faces([face])
        self.main.delete_face(face_id)
        return True
