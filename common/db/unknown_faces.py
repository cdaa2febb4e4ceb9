"""Unknown faces over the two databases and S3: keeping the faces of searches that matched nobody, placing them in
clusters (common/clustering.py decides), the settle pass with retention expiry, naming and dismissing a cluster,
"not this person", and erasing a collection's unknown faces.

Every operation is a series of steps each safe to cut short and run again (the index stage runs handlers twice, an
API client retries):
- keep: crop copied (kept key), rows (unique job id + face index: a redelivered entry finds them), embeddings,
  placement;
- name: one main-database transaction (person found or created, face rows inserted unserved, the unknown rows
  pointing at them, the cluster marked named), the embeddings moved (one vector transaction), the feed told, the
  faces served and the unknown rows dropped. Naming again finds the cluster named and finishes what is left;
- dismiss and expiry: tombstones (dismiss) and the rows marked, vectors, crops, then the rows last;
- not this person: one main transaction (rejection, unknown row, face row gone), embeddings moved, crop copied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import structlog

from common.clustering import Placement, Wait, parameters_for
from common.db.main_repository import (
    MainRepository,
    Naming,
    NamingTarget,
    NewUnknownFace,
    UnknownFaceRow,
    unknown_crop_key,
    unknown_face_job_id,
)
from common.db.vector_repository import VectorRepository
from common.job_bytes import UndecodableCrop, crop_png
from common.objects import ObjectMissing, ObjectStore, ObjectUnreadable, crop_key, original_key
from common.transient import PhotoExpired, TransientStore, is_transient
from schemas.gallery import Change

log = structlog.get_logger(__name__)

# Neighbours read per placement: a face needs min_faces of them, or one clustered; more change nothing.
NEIGHBOURS = 64
PAGE = 500  # unknown faces settled or expired per database round trip

Publish = Callable[[Change, str, list[int], int], None]  # change, pack, face ids, collection id


def copy_crop(
    store: ObjectStore,
    source_key: str,
    kept_key: str,
    transient: TransientStore | None = None,
    crop_size: int | None = None,
) -> bool:
    """Keep a crop under ``kept_key``, as a PNG (crop_url serves it); False when the source is gone (and nothing is
    kept there yet). The one place that reads a job's crop for the unknown pool: where crops of searches live
    elsewhere than S3 (a Redis TTL), this is what reads them from there. ``crop_size``: a blob's side (its
    message's), without which its raw pixels cannot be read. Raises ``UndecodableCrop`` for a blob that holds no
    crop of that size."""
    try:
        if is_transient(source_key):  # a search's crop lives in Redis until its job ends (common/transient.py)
            if transient is None or crop_size is None:
                raise ObjectMissing(source_key)
            data = crop_png(transient.get(source_key), crop_size, source_key)
        else:
            data = store.get(source_key)
    except (ObjectMissing, PhotoExpired):
        try:
            store.get(kept_key)
        except ObjectMissing:
            return False
        return True
    store.put(kept_key, data, "image/png")
    return True


@dataclass(frozen=True)
class UnseenFace:
    """A face of a search that matched nobody."""

    face_index: int
    crop_key: str  # the job's crop, deleted when the job ends
    box: list[float]
    det_score: float
    embedding: np.ndarray
    crop_size: int  # the job's message's: a crop blob is raw pixels of this side


@dataclass(frozen=True)
class SettleReport:
    placed: int  # waiting faces that joined a cluster or founded one (its other founders are not counted)
    waiting: int  # looked at, still waiting
    expired: int  # unknown faces erased after their collection's retention


class UnknownFaces:
    def __init__(
        self,
        main: MainRepository,
        vectors: VectorRepository,
        store: ObjectStore,
        publish: Publish | None = None,
        transient: TransientStore | None = None,
    ) -> None:
        self.main = main
        self.vectors = vectors
        self.store = store
        self.transient = transient  # where the crops of searches are read from (None: only S3 keys are read)
        self.publish = publish  # the gallery feed (None: no index process keeps codes in memory)

    def _publish(self, change: Change, packs: list[str], face_ids: list[int], collection_id: int) -> None:
        if self.publish is not None:
            for pack in packs:
                self.publish(change, pack, face_ids, collection_id)

    def keep(
        self, collection_id: int, job_id: str, pack: str, faces: list[UnseenFace], retention_hours: int
    ) -> list[UnknownFaceRow]:
        """Keep these faces of search ``job_id`` and place each; returns the rows kept (on a redelivery, those kept
        before as well). A face erased, dismissed or named since is not kept again."""
        if not faces:
            return []
        kept_before = {row.face_index for row in self.main.unknown_faces_of_job(job_id)}
        fresh = [face for face in faces if face.face_index not in kept_before]
        taken = self.main.face_identities_taken([unknown_face_job_id(job_id, f.face_index) for f in fresh])
        new_rows = []
        for face in fresh:
            face_job_id = unknown_face_job_id(job_id, face.face_index)
            if face_job_id in taken:
                continue
            kept_key = unknown_crop_key(face_job_id)
            try:
                copied = copy_crop(self.store, face.crop_key, kept_key, self.transient, face.crop_size)
            except (ObjectUnreadable, UndecodableCrop) as exc:  # one bad crop: the search's answer does not wait on it
                log.warning("unknown.crop_unreadable", job_id=job_id, face_index=face.face_index, error=str(exc))
                continue
            if not copied:
                log.warning("unknown.crop_gone", job_id=job_id, face_index=face.face_index)
                continue
            new_rows.append(
                NewUnknownFace(collection_id, job_id, face.face_index, kept_key, face.box, face.det_score, pack)
            )
        if new_rows:
            self.main.add_unknown_faces(new_rows, retention_hours)
        rows = self.main.unknown_faces_of_job(job_id)
        by_index = {face.face_index: face for face in faces}
        kept = [row for row in rows if row.face_index in by_index and row.to_face_id is None]
        for row in kept:
            self.vectors.add_unknown_embedding(row.id, pack, collection_id, by_index[row.face_index].embedding)
        for row in kept:
            self.place(row)
        return kept

    def place(self, row: UnknownFaceRow) -> Placement | None:
        """Place one waiting face; None when it is gone or was placed meanwhile (a face founding a cluster)."""
        parameters = parameters_for(row.model_pack)
        nearby = self.vectors.unknown_neighbours(row.id, row.model_pack, parameters.max_distance, NEIGHBOURS)
        return self.main.place_unknown_face(row.id, nearby, parameters)

    def settle(self, limit: int = 10_000, collection_id: int | None = None) -> SettleReport:
        """Erase what has expired (everywhere), then place again every waiting face (oldest first, at most
        ``limit``; of one collection, or all)."""
        expired = self.expire()
        placed = waiting = 0
        after = 0
        looked = 0
        while looked < limit:
            page = self.main.waiting_unknown_faces(after, min(PAGE, limit - looked), collection_id)
            if not page:
                break
            after = page[-1].id
            looked += len(page)
            for row in page:
                placement = self.place(row)
                if isinstance(placement, Wait):
                    waiting += 1
                elif placement is not None:
                    placed += 1
        report = SettleReport(placed=placed, waiting=waiting, expired=expired)
        log.info("unknown.settled", placed=placed, waiting=waiting, expired=expired)
        return report

    def expire(self) -> int:
        erased = 0
        while rows := self.main.expired_unknown_faces(PAGE):
            self._erase(rows)
            erased += len(rows)
        self.main.forget_old_clusters()
        return erased

    def _erase(self, rows: list[UnknownFaceRow]) -> None:
        ids = [row.id for row in rows]
        self.vectors.delete_unknown_embeddings(ids)
        self.store.delete_many([row.crop_key for row in rows])
        self.main.delete_unknown_faces(ids)

    def dismiss(self, cluster_id: int) -> int:
        """Erase the cluster's faces; returns how many this call erased. Errors as begin_dismissal."""
        rows = self.main.begin_dismissal(cluster_id)
        self._erase(rows)
        log.info("unknown.cluster_dismissed", cluster_id=cluster_id, faces=len(rows))
        return len(rows)

    def name(self, cluster_id: int, target: NamingTarget) -> Naming:
        """The cluster's faces become the person's enrolled faces, found by the next search. Errors as
        MainRepository.begin_naming."""
        naming = self.main.begin_naming(cluster_id, target)
        cluster = self.main.get_cluster(cluster_id)
        collection_id = cluster.collection_id if cluster is not None else 0
        if naming.moves:
            face_ids = [face_id for _, face_id in naming.moves]
            packs = self.vectors.unknown_to_faces(naming.moves) or [naming.model_pack]
            # Announced before served, as the index stage does: every served face is on the feed.
            self._publish(Change.ADD, packs, face_ids, collection_id)
            if not self.main.finish_naming(cluster_id, naming.user_id, face_ids):
                self.vectors.delete_faces(face_ids)
                self._publish(Change.REMOVE, packs, face_ids, collection_id)
        log.info("unknown.cluster_named", cluster_id=cluster_id, user_id=naming.user_id, faces=len(naming.moves))
        return naming

    def not_this_person(self, face_id: int) -> tuple[UnknownFaceRow, int] | None:
        """The enrolled face leaves its person for the unknown pool: (its unknown row, the person it is not); None
        for an unknown face id."""
        found = self.main.begin_not_this_person(face_id)
        if found is None:
            return None
        row, face = found
        user_id = face.user_id if face is not None else self.main.rejected_users(row.face_job_id)[-1]
        packs = self.vectors.face_to_unknown(face_id, row.id)
        self._publish(Change.REMOVE, packs, [face_id], row.collection_id)
        # Enrolled faces keep their crop at the enroll job's key; the unknown pool keeps its own copy, so that a
        # redelivered enroll entry (refused, deleting that job's objects) cannot take it.
        old_crop = face.crop_key if face is not None else crop_key(row.job_id, 0)
        copy_crop(self.store, old_crop, row.crop_key)
        # The photo is not kept in the pool (search photos are not either): the crop is what a reviewer sees.
        old_keys = [face.image_key, face.crop_key] if face is not None else [original_key(row.job_id), old_crop]
        self.store.delete_many([key for key in old_keys if key != row.crop_key])
        if row.cluster_id is None:
            self.place(row)
        log.info("unknown.not_this_person", face_id=face_id, unknown_face_id=row.id, user_id=user_id)
        return row, user_id

    def erase_collection(self, collection_id: int) -> int:
        """Every unknown face of the collection (vectors, crops, rows), its clusters and its rejections."""
        rows = self.main.collection_unknown_faces(collection_id)
        self.vectors.delete_unknown_embeddings([row.id for row in rows])
        self.store.delete_many([row.crop_key for row in rows])
        self.main.delete_collection_unknowns(collection_id)
        return len(rows)
