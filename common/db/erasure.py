"""Erasing a person or one face: face rows, embeddings of every pack, the photos and crops in S3, and what Redis holds
about their jobs (status hashes, stream entries with boxes and embeddings, dead letters).

The order makes every cut-short erasure safe and finishable by running it again:
1. main database, one transaction: tombstones (job and face ids, the user id; see migration 0003), the user
   deactivated, the faces no longer served. From this commit on, nothing is served and the index stage refuses to
   store anything for these jobs, whatever is delivered to it again;
2. embeddings in the vector database, and their removal published on the gallery feed (schemas/gallery.py), so
   that no index process keeps the faces' binary codes in memory; 3. the faces' photos and crops in S3;
4. Redis traces (job_traces), then an AOF rewrite; then the photos and crops of the jobs still in flight, except
   those whose entry a worker holds: the index stage refuses such a job and deletes them;
5. the main rows last: until then a second DELETE finds the face or user and finishes the work.

A user merged into another (common/db/corrections.py) is erased the same way once its served faces have moved: only
what is left (faces not yet served, jobs without a face, the row) goes. A job whose face now belongs to someone else
(merged or moved) keeps its photo and crop, whoever erases the user it was enrolled for.

Erasing a collection erases every person in it this way, one at a time, then the collection's row: cut short, the
same DELETE erases the people left and the row.
"""

from __future__ import annotations

import redis
import structlog

from common.db import job_traces
from common.db.main_repository import CollectionNotEmpty, FaceRow, MainRepository, Merge
from common.db.unknown_faces import UnknownFaces
from common.db.vector_repository import VectorRepository
from common.errors import DependencyUnavailable
from common.objects import ObjectStore, discard_job_objects
from common.transient import PHOTOS_PER_JOB, delete_blobs, job_blob_keys
from schemas.gallery import EVERY_PACK, FEED, FEED_LENGTH, Change, FeedEntry
from schemas.jobs import ErrorCode

log = structlog.get_logger(__name__)

# Times a collection's erasure looks again for people created while it ran before it gives up.
ERASE_COLLECTION_ROUNDS = 5


class Erasure:
    def __init__(
        self,
        main: MainRepository,
        vectors: VectorRepository,
        store: ObjectStore,
        redis_client: redis.Redis,
        job_ttl_seconds: int,
        feed_stream: str = FEED,
    ) -> None:
        self.main = main
        self.vectors = vectors
        self.store = store
        self.redis = redis_client
        self.job_ttl_seconds = job_ttl_seconds
        self.feed_stream = feed_stream

    def erase_user(self, user_id: int) -> bool:
        faces = self.main.begin_user_erasure(user_id)
        if faces is None:
            return False
        job_ids = self._erase_user_rest(faces, user_id)
        log.info("erasure.user_erased", user_id=user_id, faces=len(faces), jobs=len(job_ids))
        return True

    def erase_merged(self, merge: Merge, from_id: int) -> None:
        """Finish erasing user ``from_id`` after merge_users moved its served faces: its faces not yet served, its
        jobs without a face, its row. Nothing to do when a repeated merge finds the row gone."""
        if merge.from_row_left:
            job_ids = self._erase_user_rest(merge.dropped, from_id)
            log.info("erasure.merged_user_erased", user_id=from_id, faces=len(merge.dropped), jobs=len(job_ids))

    def _erase_user_rest(self, faces: list[FaceRow], user_id: int) -> list[str]:
        """Steps 2-5 for a user tombstoned with these face rows; returns the jobs whose traces went."""
        # Jobs in flight have no face row yet: the API recorded them per user when they were submitted. A listed job
        # whose face row is someone else's (moved or merged there) is theirs now: its photo and crop stay.
        listed = job_traces.user_job_ids(self.redis, user_id)
        own = {face.job_id for face in faces}
        job_ids = sorted(own | (listed - self.main.jobs_with_faces(sorted(listed - own))))
        self._erase(faces, job_ids, user_id, whole_user=True)
        self.main.delete_user(user_id)  # and, by cascade, the face rows
        return job_ids

    def erase_collection(self, collection_id: int, *, keep_row: bool = False) -> int:
        """Erase every person of the collection (as erase_user), then its row unless ``keep_row`` (the default
        collection is only ever emptied). Returns how many people were erased. People added while it runs are
        erased too; raises CollectionNotEmpty if they keep coming faster than they are erased."""
        erased = 0
        for _ in range(ERASE_COLLECTION_ROUNDS):
            while user_ids := self.main.collection_user_ids(collection_id):
                for user_id in user_ids:
                    erased += int(self.erase_user(user_id))
            # Its unknown faces (vectors and crops; the rows, clusters and rejections with them).
            UnknownFaces(self.main, self.vectors, self.store).erase_collection(collection_id)
            if keep_row:
                break
            try:
                self.main.delete_collection(collection_id)
            except CollectionNotEmpty:
                continue  # a person was created meanwhile: erase them too
            break
        else:
            raise CollectionNotEmpty(collection_id)
        log.info("erasure.collection_erased", collection_id=collection_id, users=erased, row_deleted=not keep_row)
        return erased

    def erase_face(self, face_id: int) -> bool:
        face = self.main.begin_face_erasure(face_id)
        if face is None:
            return False
        self._erase([face], [face.job_id], face.user_id, whole_user=False)
        self.main.delete_face(face_id)
        log.info("erasure.face_erased", face_id=face_id, job_id=face.job_id)
        return True

    def _erase(self, faces: list[FaceRow], job_ids: list[str], user_id: int, *, whole_user: bool) -> None:
        self.vectors.delete_faces([face.id for face in faces])
        self.store.delete_many([key for face in faces for key in (face.image_key, face.crop_key)])
        try:
            self._publish_removals(faces)
            running = self._erase_traces(job_ids, user_id, whole_user=whole_user)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise DependencyUnavailable(f"Redis: {exc}") from exc  # 503: the same DELETE again finishes
        # Photos and crops of the jobs in flight, wherever they got to; a job a worker holds needs its photo to
        # reach the index stage, which refuses it and deletes them (job_traces).
        for job_id in job_ids:
            if job_id not in running:
                discard_job_objects(self.store, job_id)
                delete_blobs(self.redis, job_blob_keys(job_id, crops=PHOTOS_PER_JOB))  # a verify's, in Redis

    def _publish_removals(self, faces: list[FaceRow]) -> None:
        """Tell every index process to drop the faces' codes (they would drop them anyway once a search's ranking
        found the rows gone, but a code is derived from the face: it does not stay until then)."""
        by_collection: dict[int, list[int]] = {}
        for face in faces:
            by_collection.setdefault(face.collection_id, []).append(face.id)
        for collection_id, face_ids in by_collection.items():
            entry = FeedEntry(Change.REMOVE, EVERY_PACK, face_ids, collection_id)
            self.redis.xadd(self.feed_stream, entry.to_fields(), maxlen=FEED_LENGTH, approximate=True)

    def _erase_traces(self, job_ids: list[str], user_id: int, *, whole_user: bool) -> set[str]:
        traces = job_traces.find_traces(self.redis, job_ids)
        running = job_traces.delete_traces(
            self.redis,
            traces,
            owner=user_id,
            whole_user=whole_user,
            closing_code=ErrorCode.USER_NOT_FOUND if whole_user else ErrorCode.FACE_ERASED,
            job_ttl_seconds=self.job_ttl_seconds,
        )
        if traces.entry_count or traces.finished or traces.in_flight:
            job_traces.rewrite_append_only_file(self.redis)
        log.info(
            "erasure.redis_cleared",
            entries=traces.entry_count,
            job_hashes=len(traces.finished) + len(traces.in_flight),
            closed_in_flight=len(traces.in_flight),
            held_by_workers=len(running),
        )
        return running
