"""The index stage: enroll writes the face and its embedding; search runs k-NN and finishes the job;
reindex adds another pack's embedding to an enrolled face."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import psycopg
import redis

from common.db.main_repository import DuplicateFaceExternalId, Erased, MainRepository, NewFace, Reassigned, UnknownUser
from common.db.unknown_faces import UnknownFaces, UnseenFace
from common.db.vector_repository import Neighbour, PackMismatch, VectorRepository
from common.errors import DependencyUnavailable, JobFailed, PoisonMessage
from common.handlers import HandlerResult, Outcome, per_message
from common.objects import ObjectStore, discard_job_objects
from common.packs.catalog import default_threshold
from common.transient import TransientStore
from indexer.binary_index import BinaryIndex
from indexer.gallery_feed import Change, GalleryFeed
from indexer.threshold import SearchThreshold
from schemas.jobs import ErrorCode
from schemas.results import (
    EnrollResult,
    FinishedResult,
    FoundFace,
    Presign,
    ReindexResult,
    StoredMatch,
    StoredResult,
    StoredSearchFace,
    StoredSearchResult,
    VerifiedFace,
    VerifyResult,
)
from schemas.streams import EmbeddedMessage, JobKind, MalformedMessage, Stage

# Several faces of one person can be near the query; read this many more candidates than the limit
# so that, after keeping each person's best face, the limit can still be filled with distinct people.
CANDIDATES_PER_RESULT = 4


def crop_keys(message: EmbeddedMessage) -> list[str]:
    """The job's crops: align stored one per face, under these keys."""
    return [face.crop_key for face in message.faces]


class IndexHandler:
    stage = Stage.INDEX
    message_type = EmbeddedMessage

    def __init__(
        self,
        main: MainRepository,
        vectors: VectorRepository,
        store: ObjectStore,
        threshold: float | None = None,
        *,
        presign: Presign,
        false_matches_per_search: float = 0.1,
        feed: GalleryFeed | None = None,
        binary: BinaryIndex | None = None,
        transient: TransientStore | None = None,
    ) -> None:
        self.main = main
        self.vectors = vectors
        self.store = store
        self.threshold = threshold  # FECAPASS_SIMILARITY_THRESHOLD; unset: verify uses each pack's calibrated one
        self.presign = presign  # photo URLs of search matches, for the webhook body
        # Faces added and removed, for every index process's in-memory codes (None: no process keeps codes).
        self.feed = binary.feed if binary is not None else feed
        self.binary = binary  # None: search through pgvector's HNSW index
        self.search_threshold = SearchThreshold(threshold, false_matches_per_search, self._gallery_size)
        # Crops of searches are Redis blobs: the unknown faces a collection keeps are copied from there.
        self.unknown = UnknownFaces(main, vectors, store, self._publish, transient)

    def _gallery_size(self, pack: str, collection_id: int) -> int:
        """Faces of the pack in the collection, which a search compares with: the codes in memory once loaded, else
        the stored rows. Both may count a face being enrolled or erased right now: a gallery one face larger only
        raises the threshold."""
        loaded = self.binary.loaded_size(pack, collection_id) if self.binary is not None else None
        return loaded if loaded is not None else self.vectors.count(pack, collection_id)

    def _publish(self, change: Change, pack: str, face_ids: list[int], collection_id: int) -> None:
        if self.feed is None:
            return
        try:
            self.feed.publish(change, pack, face_ids, collection_id)
        except redis.RedisError as exc:
            # Retried like a database outage: an enroll is served only once its face is on the feed.
            raise DependencyUnavailable(f"gallery feed unavailable: {exc}") from exc

    def _nearest(self, pack: str, query: np.ndarray, limit: int, collection_id: int) -> list[Neighbour]:
        if self.binary is not None:
            return self.binary.nearest(pack, query, limit, collection_id)
        return self.vectors.nearest(pack, query, limit, collection_id)

    def _threshold(self, message: EmbeddedMessage, pack: str) -> float:
        """Verify's threshold (1:1: the gallery's size plays no part)."""
        if message.threshold is not None:
            return message.threshold
        return self.threshold if self.threshold is not None else default_threshold(pack)

    def handle(self, message: EmbeddedMessage) -> Outcome:
        try:
            matrix = message.embedding_matrix()
        except MalformedMessage as exc:
            raise PoisonMessage(ErrorCode.MALFORMED_MESSAGE, str(exc)) from exc
        try:
            if message.kind is JobKind.ENROLL:
                return self._finished(self._enroll(message, message.pack, matrix))
            # Search and verify photos are not kept once answered, nor a reindex job's crop.
            result: StoredResult
            if message.kind is JobKind.REINDEX:
                result = self._reindex(message, message.pack, matrix)
            elif message.kind is JobKind.VERIFY:
                result = self._verify(message, message.pack, matrix)
            else:
                result = self._search(message, message.pack, matrix)
            discard_job_objects(self.store, message.job_id, crop_keys(message), image_keys=message.image_keys)
            return self._finished(result)
        except JobFailed:
            discard_job_objects(self.store, message.job_id, crop_keys(message), image_keys=message.image_keys)
            raise
        except PackMismatch as exc:
            raise PoisonMessage(ErrorCode.MALFORMED_MESSAGE, str(exc)) from exc
        except psycopg.OperationalError as exc:
            raise DependencyUnavailable(f"database unavailable: {exc}") from exc
        except redis.RedisError as exc:
            # The binary index cannot tell what it missed without the feed: answering could miss a new face.
            raise DependencyUnavailable(f"gallery feed unavailable: {exc}") from exc

    def handle_batch(self, messages: Sequence[EmbeddedMessage]) -> list[HandlerResult]:
        return per_message(self.handle)(messages)

    def _finished(self, result: StoredResult) -> Outcome:
        return Outcome(result=FinishedResult(result, self.presign))

    def _enroll(self, message: EmbeddedMessage, pack: str, matrix: np.ndarray) -> EnrollResult:
        if message.user_id is None:
            raise PoisonMessage(ErrorCode.MALFORMED_MESSAGE, "enroll message without user_id")
        face = message.faces[0]
        user_id = message.user_id
        try:
            face_id = self._store_face(
                NewFace(
                    user_id=message.user_id,
                    job_id=message.job_id,
                    image_key=message.image_key,
                    crop_key=face.crop_key,
                    box=face.box,
                    det_score=face.score,
                    faces_seen=message.faces_seen,
                    model_pack=pack,
                    collection_id=message.collection_id,
                    external_id=message.external_id,
                ),
                matrix[0],
            )
        except Erased as exc:
            discard_job_objects(self.store, message.job_id, crop_keys(message), image_keys=message.image_keys)
            if exc.user_erased:
                raise JobFailed(ErrorCode.USER_NOT_FOUND, "the user was erased") from exc
            raise JobFailed(ErrorCode.FACE_ERASED, "the face of this job was erased; nothing is stored again") from exc
        except UnknownUser as exc:
            discard_job_objects(self.store, message.job_id, crop_keys(message), image_keys=message.image_keys)
            raise JobFailed(ErrorCode.USER_NOT_FOUND, f"user {message.user_id} does not exist or is inactive") from exc
        except DuplicateFaceExternalId as exc:  # the API checked; another enroll of the same id got there first
            discard_job_objects(self.store, message.job_id, crop_keys(message))
            raise JobFailed(
                ErrorCode.FACE_EXTERNAL_ID_TAKEN, f"a face of this collection has external id {message.external_id}"
            ) from exc
        except Reassigned as exc:  # replayed after a correction gave its face away: theirs, photo and all
            face_id, user_id = exc.face_id, exc.user_id
        return EnrollResult(
            user_id=user_id,
            face_id=face_id,
            faces_seen=message.faces_seen,
            face=FoundFace(box=face.box, score=face.score),
            model_pack=pack,
        )

    def _store_face(self, new_face: NewFace, embedding: np.ndarray) -> int:
        """Three commits over two databases, each safe to cut short and redo: the face row (not served), its
        embedding, then the row served. Until the last, neither the API nor a search shows the face. The main
        database checks the tombstones, under the user row's lock, in the first and last commit: an erased face is
        never inserted again, and an embedding written after an erasure deleted it is deleted here (Erased)."""
        try:
            face_id = self.main.add_face(new_face)
            self.vectors.add_embedding(face_id, new_face.model_pack, embedding, new_face.collection_id)
            # Published before the face is served, so every served face is on the feed: a redo after a crash here
            # publishes again. A search that finds the code before the face is served leaves it out (face_owners
            # keeps served faces only).
            self._publish(Change.ADD, new_face.model_pack, [face_id], new_face.collection_id)
            self.main.serve_face(face_id, new_face.user_id, new_face.job_id)
        except Erased as exc:
            self.vectors.delete_faces(exc.face_ids)
            self._publish(Change.REMOVE, new_face.model_pack, exc.face_ids, new_face.collection_id)
            raise
        return face_id

    def _reindex(self, message: EmbeddedMessage, pack: str, matrix: np.ndarray) -> ReindexResult:
        if message.face_id is None:
            raise PoisonMessage(ErrorCode.MALFORMED_MESSAGE, "reindex message without face_id")
        erased = ReindexResult(face_id=message.face_id, model_pack=pack, skipped="the face was erased")
        face = self.main.get_face(message.face_id)
        if face is None:
            return erased
        self.vectors.add_embedding(message.face_id, pack, matrix[0], face.collection_id)
        self._publish(Change.ADD, pack, [message.face_id], face.collection_id)
        # An erasure between the check and the insert would leave this vector behind: look again.
        if self.main.get_face(message.face_id) is None:
            self.vectors.delete_faces([message.face_id])
            self._publish(Change.REMOVE, pack, [message.face_id], face.collection_id)
            return erased
        return ReindexResult(face_id=message.face_id, model_pack=pack)

    def _search(self, message: EmbeddedMessage, pack: str, matrix: np.ndarray) -> StoredSearchResult:
        collection_id = message.collection_id  # the gallery: nothing outside it is compared or returned
        if self.binary is not None:
            self.binary.refresh(pack, int(matrix.shape[1]))
        chosen = self.search_threshold.choose(pack, message.threshold, collection_id)
        threshold = chosen.value
        limit = message.limit or 10
        faces = message.faces
        neighbours = [self._nearest(pack, row, limit * CANDIDATES_PER_RESULT, collection_id) for row in matrix]
        # Filtered by collection again: an embedding's collection is a copy of the face's (main database).
        owners = self.main.face_owners(sorted({n.face_id for found in neighbours for n in found}), collection_id)
        results = []
        for face, found in zip(faces, neighbours, strict=True):
            matches: list[StoredMatch] = []
            seen_users: set[int] = set()
            for neighbour in found:  # nearest first
                owner = owners.get(neighbour.face_id)
                if owner is None or neighbour.similarity < threshold or owner.user_id in seen_users:
                    continue
                seen_users.add(owner.user_id)
                matches.append(
                    StoredMatch(
                        user_id=owner.user_id,
                        face_id=neighbour.face_id,
                        similarity=round(neighbour.similarity, 4),
                        external_id=owner.external_id,
                        image_key=owner.image_key,  # clients get a short-lived photo URL instead
                    )
                )
                if len(matches) == limit:
                    break
            results.append(StoredSearchFace(box=face.box, score=face.score, matches=matches))
        self._keep_unknown(message, pack, matrix, results)
        return StoredSearchResult(
            faces=results,
            threshold=threshold,
            threshold_source=chosen.source,
            gallery_size=chosen.gallery_size,
            model_pack=pack,
            faces_seen=len(faces),
        )

    def _keep_unknown(
        self, message: EmbeddedMessage, pack: str, matrix: np.ndarray, results: list[StoredSearchFace]
    ) -> None:
        """Faces that matched nobody, kept where the search's collection asks (before the job's crops go)."""
        unseen = [
            UnseenFace(index, face.crop_key, list(face.box), face.score, matrix[index], message.crop_size)
            for index, (face, result) in enumerate(zip(message.faces, results, strict=True))
            if not result.matches
        ]
        if not unseen:
            return
        collection = self.main.get_collection(message.collection_id)
        if collection is None or not collection.keep_unknown_faces:
            return
        self.unknown.keep(message.collection_id, message.job_id, pack, unseen, collection.unknown_retention_hours)

    def _verify(self, message: EmbeddedMessage, pack: str, matrix: np.ndarray) -> VerifyResult:
        threshold = self._threshold(message, pack)
        faces = message.faces
        user_id: int | None = None  # set when comparing with a user's enrolled faces
        face_id: int | None = None
        faces_compared: int | None = None
        if message.user_id is not None:
            stored = self.main.list_faces(message.user_id)
            user = self.main.get_user(message.user_id)
            # A person of another collection does not exist for this job (the API refused it; this holds whatever
            # the entry says).
            if user is None or not user.is_active or user.collection_id != message.collection_id:
                raise JobFailed(ErrorCode.USER_NOT_FOUND, f"user {message.user_id} does not exist or is inactive")
            best = self.vectors.best_among(pack, matrix[0], [face.id for face in stored])
            if best is None:
                raise JobFailed(ErrorCode.USER_HAS_NO_FACES, f"user {message.user_id} has no face enrolled with {pack}")
            similarity = best.similarity
            user_id, face_id, faces_compared = message.user_id, best.face_id, len(stored)
        else:
            if len(faces) != 2:
                raise PoisonMessage(ErrorCode.MALFORMED_MESSAGE, "verify of two photos needs one face of each")
            similarity = float(matrix[0] @ matrix[1])
        return VerifyResult(
            threshold=threshold,
            model_pack=pack,
            user_id=user_id,
            face_id=face_id,
            faces_compared=faces_compared,
            similarity=round(similarity, 4),
            match=similarity >= threshold,
            faces=[VerifiedFace(box=face.box, score=face.score, photo=face.source) for face in faces],
        )
