"""Unknown faces against the real servers: the index stage keeps the faces of searches that matched nobody (once,
however often an entry is delivered), clusters them, the settle pass erases them after retention, naming a cluster
makes its person found by the next search, "not this person" is visible in the next search and sticks, dismissing
and erasing leave nothing. Counted in both databases and the S3 bucket.

The index stage's handler runs for real on entries as the embed stage writes them (synthetic embeddings: the rules,
not a model, are under test here; tests/integration/test_unknown_clusters_lfw.py clusters real embeddings)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import redis
from structlog.testing import capture_logs

from common.clustering import ClusterParameters, Nearby, Placement, parameters_for, place
from common.db import main_repository
from common.db.erasure import Erasure
from common.db.main_repository import (
    ClusterTaken,
    Erased,
    MainRepository,
    NamingTarget,
    NewFace,
    unknown_crop_key,
)
from common.db.unknown_faces import SettleReport, UnknownFaces
from common.db.vector_repository import VectorRepository
from common.imaging import PNG_SIGNATURE, encode_png
from common.job_bytes import crop_blob
from common.objects import ObjectStore, crop_key, original_key
from common.settings import DatabaseSettings
from common.transient import TransientStore, crop_blob_key, delete_blobs
from indexer.stage import IndexHandler
from operations.services import LocalServices
from schemas.results import StoredSearchResult
from schemas.streams import (
    AlignedFace,
    AlignedMessage,
    DetectedMessage,
    EmbeddedMessage,
    FaceBox,
    JobKind,
    JobMessage,
    encode_embeddings,
)
from tests.conftest import unit

# An uncalibrated pack name: clustering uses buffalo_sc_lite's parameters for it.
PACK, DIM = "unknown64", 64
PARAMETERS = parameters_for(PACK)
SEARCH_THRESHOLD = 0.5


@dataclass
class World:
    main: MainRepository
    vectors: VectorRepository
    store: ObjectStore
    handler: IndexHandler
    unknown: UnknownFaces
    collection_id: int
    rng: np.random.Generator
    redis: redis.Redis
    seen_jobs: set[str]
    transient: TransientStore

    def erasure(self) -> Erasure:
        return Erasure(self.main, self.vectors, self.store, self.redis, 600)

    def person(self) -> np.ndarray:
        """A direction in embedding space: one person's faces lie near it."""
        return unit(self.rng.standard_normal(DIM))

    def face_of(self, person: np.ndarray) -> np.ndarray:
        """Another photo of the person: similarity ~0.93 to their direction, ~0.86 to their other photos (well
        inside max_distance); strangers (random directions in 64 dimensions) are near 0."""
        return unit(person + 0.4 * unit(self.rng.standard_normal(DIM)))

    def search(
        self, *embeddings: np.ndarray, collection_id: int | None = None
    ) -> tuple[EmbeddedMessage, StoredSearchResult]:
        message = search_message(self, list(embeddings), self.collection_id if collection_id is None else collection_id)
        return message, self.handle(message)

    def handle(self, message: EmbeddedMessage) -> StoredSearchResult:
        outcome = self.handler.handle(message)
        assert outcome.result is not None
        result = outcome.result.stored
        assert isinstance(result, StoredSearchResult)
        return result

    def counts(self) -> dict[str, int]:
        """What the unknown pool holds, in the main database, the vector database and the S3 folder."""
        with self.main.pool.connection() as conn:
            rows = conn.execute(
                "SELECT count(*) FROM unknown_faces WHERE collection_id = %s", (self.collection_id,)
            ).fetchone()
        with self.vectors.pool.connection() as conn:
            vectors = conn.execute(
                "SELECT count(*) FROM unknown_face_embeddings WHERE collection_id = %s", (self.collection_id,)
            ).fetchone()
        crops = [
            key for key in self.store.keys("unknown/") if key.removeprefix("unknown/").split("-")[0] in self.jobs()
        ]
        assert rows is not None and vectors is not None
        return {"rows": int(rows[0]), "vectors": int(vectors[0]), "crops": len(crops)}

    def jobs(self) -> set[str]:
        with self.main.pool.connection() as conn:
            found = conn.execute("SELECT job_id FROM unknown_faces WHERE collection_id = %s", (self.collection_id,))
            return {str(row[0]) for row in found.fetchall()} | self.seen_jobs

    def clusters(self) -> dict[int, set[int]]:
        """Cluster id -> the unknown face ids in it."""
        with self.main.pool.connection() as conn:
            rows = conn.execute(
                "SELECT cluster_id, id FROM unknown_faces WHERE collection_id = %s AND cluster_id IS NOT NULL",
                (self.collection_id,),
            ).fetchall()
        found: dict[int, set[int]] = {}
        for cluster_id, face_id in rows:
            found.setdefault(int(cluster_id), set()).add(int(face_id))
        return found


def presign(key: str) -> str:
    return f"https://s3.invalid/{key}"


def crop_of(job_id: str, face_index: int) -> np.ndarray:
    """The pixels the align stage would have cut for this face (a pattern of its own)."""
    return np.random.default_rng([int(job_id[:8], 16), face_index]).integers(0, 256, (112, 112, 3), dtype=np.uint8)


def png_pixels(data: bytes) -> np.ndarray:
    assert data.startswith(PNG_SIGNATURE)  # what crop_url serves
    return np.asarray(cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR))


def search_message(
    world: World, embeddings: list[np.ndarray], collection_id: int, blobs: dict[int, bytes] | None = None
) -> EmbeddedMessage:
    """A search entry as the embed stage writes it, its photo and crops stored as the earlier stages leave them
    (``blobs``: other bytes for some faces' crops)."""
    job_id = uuid.uuid4().hex
    world.seen_jobs.add(job_id)
    world.store.put(original_key(job_id), b"photo of " + job_id.encode())
    base = JobMessage(
        job_id=job_id, kind=JobKind.SEARCH, image_key=original_key(job_id), pack=PACK, collection_id=collection_id
    )
    faces = []
    for index in range(len(embeddings)):
        box = (10.0 + 100 * index, 10.0, 90.0 + 100 * index, 100.0)
        faces.append(FaceBox(box=box, keypoints=[(box[0] + i, box[1] + i) for i in range(5)], score=0.9 - index / 100))
        # As the align stage leaves a search's crops: Redis blobs, deleted by the job's final write.
        blob = (blobs or {}).get(index, crop_blob(crop_of(job_id, index)))
        world.transient.put(crop_blob_key(job_id, index), blob)
    detected = base.advance(DetectedMessage, faces=faces, faces_seen=len(faces), crop_size=112)
    aligned = detected.advance(
        AlignedMessage,
        faces=[AlignedFace(**dict(face), crop_key=crop_blob_key(job_id, i)) for i, face in enumerate(faces)],
    )
    matrix = np.vstack(embeddings).astype(np.float32)
    return aligned.advance(EmbeddedMessage, embeddings=encode_embeddings(matrix), dim=DIM)


@pytest.fixture
def world(
    repositories: tuple[MainRepository, VectorRepository], object_store: ObjectStore, redis_client: redis.Redis
) -> World:
    main, vectors = repositories
    collection = main.create_collection(f"u-{uuid.uuid4().hex[:12]}")
    assert main.set_unknown_faces_policy(collection.id, keep=True, retention_hours=24) is not None
    transient = TransientStore(redis_client, 3600)
    handler = IndexHandler(
        main, vectors, object_store, threshold=SEARCH_THRESHOLD, presign=presign, transient=transient
    )
    return World(
        main,
        vectors,
        object_store,
        handler,
        UnknownFaces(main, vectors, object_store),
        collection.id,
        np.random.default_rng(collection.id),
        redis_client,
        set(),
        transient,
    )


def enroll(world: World, embedding: np.ndarray) -> tuple[int, int]:
    """An enrolled face (user id, face id) in the world's collection, as the index stage stores one."""
    user = world.main.create_user(f"{uuid.uuid4().hex[:10]}@example.com", "Enrolled", world.collection_id)
    job_id = uuid.uuid4().hex
    world.store.put(original_key(job_id), b"photo")
    world.store.put(crop_key(job_id, 0), b"crop")
    face = NewFace(
        user.id, job_id, original_key(job_id), crop_key(job_id, 0), (1, 2, 3, 4), 0.9, 1, PACK, world.collection_id
    )
    face_id = world.main.add_face(face)
    world.vectors.add_embedding(face_id, PACK, embedding, world.collection_id)
    world.main.serve_face(face_id, user.id, job_id)
    return user.id, face_id


def matched_faces(result: StoredSearchResult) -> list[set[int]]:
    return [{match.face_id for match in face.matches} for face in result.faces]


def test_faces_that_match_nobody_are_kept_once_however_often_the_entry_is_delivered(world: World) -> None:
    known = world.person()
    user_id, _ = enroll(world, world.face_of(known))
    message, first = world.search(world.face_of(known), world.face_of(world.person()), world.face_of(world.person()))
    assert [len(face.matches) for face in first.faces] == [1, 0, 0]
    assert world.counts() == {"rows": 2, "vectors": 2, "crops": 2}
    # The job's own photo and crops go as for every search; the kept copies stay.
    assert not world.store.keys(f"crops/{message.job_id}/") and not world.store.keys(original_key(message.job_id))
    rows = world.main.unknown_faces_of_job(message.job_id)
    assert [row.face_index for row in rows] == [1, 2]
    # Kept as a PNG of the blob's raw pixels.
    assert np.array_equal(png_pixels(world.store.get(rows[0].crop_key)), crop_of(message.job_id, 1))
    # The runner's final write deletes the job's blobs: the kept copies must not depend on them.
    assert delete_blobs(world.redis, [crop_blob_key(message.job_id, i) for i in range(3)]) > 0
    # Delivered again (its crops are gone by now), twice: nothing is kept twice, the result is the same.
    for _ in range(2):
        again = world.handle(message)
        assert matched_faces(again) == matched_faces(first)
    assert world.counts() == {"rows": 2, "vectors": 2, "crops": 2}
    # Unknown faces never become a search's candidates or matches.
    _, later = world.search(world.face_of(known))
    assert [m.user_id for m in later.faces[0].matches] == [user_id]


def test_a_png_crop_blob_is_kept_as_it_is_and_one_that_is_no_crop_is_not_kept(world: World) -> None:
    """A blob written before raw crops (a PNG) is kept byte for byte; one that is neither a PNG nor a crop's raw
    pixels is left out with a warning, and the search still answers."""
    old_png = encode_png(np.full((112, 112, 3), 7, dtype=np.uint8))
    embeddings = [world.face_of(world.person()) for _ in range(3)]
    message = search_message(world, embeddings, world.collection_id, blobs={0: old_png, 2: b"\0" * 100})
    with capture_logs() as logs:
        result = world.handle(message)
    assert [len(face.matches) for face in result.faces] == [0, 0, 0]
    rows = world.main.unknown_faces_of_job(message.job_id)
    assert [row.face_index for row in rows] == [0, 1]
    assert world.store.get(rows[0].crop_key) == old_png
    assert np.array_equal(png_pixels(world.store.get(rows[1].crop_key)), crop_of(message.job_id, 1))
    [warning] = [log for log in logs if log["event"] == "unknown.crop_unreadable"]
    assert warning["face_index"] == 2 and "100 bytes" in warning["error"]


def test_a_collection_that_does_not_ask_keeps_nothing(world: World) -> None:
    assert world.main.set_unknown_faces_policy(world.collection_id, keep=False, retention_hours=None) is not None
    world.search(world.face_of(world.person()))
    assert world.counts() == {"rows": 0, "vectors": 0, "crops": 0}


def test_clustering_groups_a_person_and_keeps_two_people_apart(world: World) -> None:
    ann, bob = world.person(), world.person()
    for _ in range(4):
        world.search(world.face_of(ann), world.face_of(bob))
    clusters = world.clusters()
    assert len(clusters) == 2 and sorted(len(faces) for faces in clusters.values()) == [4, 4]
    face_index = {row.id: row.face_index for row in world.main.collection_unknown_faces(world.collection_id)}
    # Ann was always face 0 of her search, Bob face 1: each cluster holds one of them only.
    for faces in clusters.values():
        assert len({face_index[face] for face in faces}) == 1


def test_retention_expiry_erases_rows_vectors_and_crops(world: World) -> None:
    person = world.person()
    for _ in range(3):
        world.search(world.face_of(person))
    assert world.counts() == {"rows": 3, "vectors": 3, "crops": 3} and len(world.clusters()) == 1
    assert world.unknown.settle(collection_id=world.collection_id).expired == 0
    assert world.counts() == {"rows": 3, "vectors": 3, "crops": 3}
    with world.main.pool.connection() as conn:  # the retention has passed for these faces
        conn.execute(
            "UPDATE unknown_faces SET created_at = now() - interval '25 hours' WHERE collection_id = %s",
            (world.collection_id,),
        )
    # A new retention applies to the faces kept already: 24 h from their creation, past now.
    assert world.main.set_unknown_faces_policy(world.collection_id, keep=None, retention_hours=24) is not None
    assert world.unknown.settle(collection_id=world.collection_id).expired == 3
    assert world.counts() == {"rows": 0, "vectors": 0, "crops": 0}
    with world.main.pool.connection() as conn:
        left = conn.execute("SELECT count(*) FROM unknown_clusters WHERE collection_id = %s", (world.collection_id,))
        assert left.fetchone() == (0,)


def test_the_settle_pass_places_faces_that_waited(world: World) -> None:
    person = world.person()
    first, _ = world.search(world.face_of(person))
    second, _ = world.search(world.face_of(person))
    assert world.clusters() == {}  # two faces: fewer than min_faces, both wait
    assert world.unknown.settle(collection_id=world.collection_id) == SettleReport(placed=0, waiting=2, expired=0)
    # A third face founds the cluster with the two waiting.
    world.search(world.face_of(person))
    (members,) = world.clusters().values()
    assert {row.id for m in (first, second) for row in world.main.unknown_faces_of_job(m.job_id)} < members
    # A face kept while clustering could not place it (placed by nobody: as if its worker died after the rows)
    # waits; the settle pass places it.
    late = search_message(world, [world.face_of(person)], world.collection_id)
    world.handler.unknown.place = lambda row: None  # type: ignore[method-assign]
    world.handle(late)
    del world.handler.unknown.place
    (late_row,) = world.main.unknown_faces_of_job(late.job_id)
    assert late_row.cluster_id is None
    assert world.unknown.settle(collection_id=world.collection_id) == SettleReport(placed=1, waiting=0, expired=0)
    assert late_row.id in next(iter(world.clusters().values()))


def test_naming_a_cluster_makes_its_person_found_by_the_next_search(world: World) -> None:
    person = world.person()
    messages = [world.search(world.face_of(person))[0] for _ in range(3)]
    (cluster_id,) = world.clusters()
    _, before = world.search(world.face_of(person))
    assert before.faces[0].matches == []
    target = NamingTarget(email=f"{uuid.uuid4().hex[:8]}@example.com", full_name="Named Later")
    naming = world.unknown.name(cluster_id, target)
    assert naming.created and len(naming.moves) == 4  # the search just made joined the cluster too
    faces = world.main.list_faces(naming.user_id)
    assert len(faces) == 4 and all(face.image_key == face.crop_key for face in faces)
    assert world.counts() == {"rows": 0, "vectors": 0, "crops": 4}  # the crops stay, now the faces' images
    assert world.vectors.embedded_among(PACK, [face.id for face in faces]) == {face.id for face in faces}
    _, after = world.search(world.face_of(person))
    assert {m.user_id for m in after.faces[0].matches} == {naming.user_id}
    # Naming again as the same person changes nothing; as another person, or dismissing it, is refused.
    again = world.unknown.name(cluster_id, target)
    assert again.user_id == naming.user_id and again.moves == [] and not again.created
    assert len(world.main.list_faces(naming.user_id)) == 4
    with pytest.raises(ClusterTaken):
        world.unknown.name(cluster_id, NamingTarget(email="someone.else@example.com"))
    with pytest.raises(ClusterTaken):
        world.unknown.dismiss(cluster_id)
    # A search entry delivered again after its face was named keeps nothing again (the face is enrolled now).
    world.handle(messages[0])
    assert world.counts() == {"rows": 0, "vectors": 0, "crops": 4}
    assert len(world.main.list_faces(naming.user_id)) == 4
    # Nor after that face is erased: erased stays erased.
    (first,) = [face for face in faces if face.job_id == f"{messages[0].job_id}-0"]
    assert world.erasure().erase_face(first.id)
    world.handle(messages[0])
    assert world.counts() == {"rows": 0, "vectors": 0, "crops": 3}
    assert len(world.main.list_faces(naming.user_id)) == 3


def test_naming_as_an_existing_person_adds_the_faces_to_them(world: World) -> None:
    person = world.person()
    user_id, face_id = enroll(world, unit(-person))  # a photo far from these: the searches do not match it
    for _ in range(3):
        world.search(world.face_of(person))
    (cluster_id,) = world.clusters()
    naming = world.unknown.name(cluster_id, NamingTarget(user_id=user_id))
    assert naming.user_id == user_id and not naming.created
    assert len(world.main.list_faces(user_id)) == 4
    other = world.main.create_collection(f"o-{uuid.uuid4().hex[:10]}")
    stranger = world.main.create_user("stranger@example.com", "In another collection", other.id)
    someone = world.person()
    for _ in range(3):
        world.search(world.face_of(someone))
    (second,) = world.clusters()
    with pytest.raises(LookupError):  # a person of another collection cannot be named
        world.unknown.name(second, NamingTarget(user_id=stranger.id))
    assert face_id in {face.id for face in world.main.list_faces(user_id)}


def test_not_this_person_is_visible_in_the_next_search_and_sticks(world: World) -> None:
    person = world.person()
    photo = world.face_of(person)
    user_id, face_id = enroll(world, photo)
    _, before = world.search(photo)
    assert matched_faces(before) == [{face_id}]
    assert world.counts()["rows"] == 0
    returned = world.unknown.not_this_person(face_id)
    assert returned is not None
    row, rejected = returned
    assert rejected == user_id and row.from_face_id == face_id
    # The face is theirs no more: not listed, not matched; its embedding is in the unknown pool, not the gallery.
    assert world.main.list_faces(user_id) == [] and world.main.get_face(face_id) is None
    assert world.vectors.embedded_among(PACK, [face_id]) == set()
    assert world.vectors.has_unknown_embedding(row.id, PACK)
    assert world.store.get(unknown_crop_key(row.face_job_id)) == b"crop"
    assert not world.store.keys(original_key(row.job_id)) and not world.store.keys(crop_key(row.job_id, 0))
    _, after = world.search(photo)
    assert after.faces[0].matches == []
    # Asked again: the same answer, nothing moved twice.
    again = world.unknown.not_this_person(face_id)
    assert again is not None and again[0].id == row.id and again[1] == user_id
    # The face and the search's face (kept just now) and one more make a cluster; naming it as the rejected person
    # leaves the face out, and it stays unknown.
    world.search(world.face_of(person))
    clusters = world.clusters()
    assert len(clusters) == 1 and row.id in next(iter(clusters.values()))
    (cluster_id,) = clusters
    naming = world.unknown.name(cluster_id, NamingTarget(user_id=user_id))
    assert naming.left_out == 1 and len(naming.moves) == 2
    assert face_id not in {face.id for face in world.main.list_faces(user_id)}
    left = world.main.get_unknown_face(row.id)
    assert left is not None and left.cluster_id is None and left.to_face_id is None
    # A redelivered enroll entry of the face does not make it theirs again.
    assert world.main.rejected_users(row.face_job_id) == [user_id]
    with pytest.raises(Erased):
        world.main.add_face(
            NewFace(
                user_id,
                row.job_id,
                original_key(row.job_id),
                crop_key(row.job_id, 0),
                (1, 2, 3, 4),
                0.9,
                1,
                PACK,
                world.collection_id,
            )
        )
    # Erasing the person erases their rejections.
    assert world.erasure().erase_user(user_id)
    assert world.main.rejected_users(row.face_job_id) == []


def test_dismissing_a_cluster_erases_its_faces_for_good(world: World) -> None:
    person = world.person()
    messages = [world.search(world.face_of(person))[0] for _ in range(3)]
    (cluster_id,) = world.clusters()
    assert world.unknown.dismiss(cluster_id) == 3
    assert world.counts() == {"rows": 0, "vectors": 0, "crops": 0}
    assert world.unknown.dismiss(cluster_id) == 0  # again: the same end state
    # The entries delivered again keep none of the dismissed faces.
    for message in messages:
        world.handle(message)
    assert world.counts() == {"rows": 0, "vectors": 0, "crops": 0}


def test_erasing_a_collection_erases_its_unknown_faces_and_rejections(world: World) -> None:
    person = world.person()
    _, face_id = enroll(world, world.face_of(person))
    assert world.unknown.not_this_person(face_id) is not None
    someone = world.person()
    for _ in range(3):
        world.search(world.face_of(someone))
    assert world.counts()["rows"] == 4
    world.erasure().erase_collection(world.collection_id)
    assert world.counts() == {"rows": 0, "vectors": 0, "crops": 0}
    with world.main.pool.connection() as conn:
        for table in ("face_rejections", "unknown_clusters", "unknown_faces"):
            found = conn.execute(f"SELECT count(*) FROM {table} WHERE collection_id = %s", (world.collection_id,))
            assert found.fetchone() == (0,), table


def test_the_settle_command_expires_and_places(
    world: World,
    env: dict[str, str],
    module_databases: DatabaseSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from operations import cli

    monkeypatch.setenv("FECAPASS_MAIN_DB_DSN", module_databases.main_db_dsn.get_secret_value())
    monkeypatch.setenv("FECAPASS_VECTOR_DB_DSN", module_databases.vector_db_dsn.get_secret_value())
    person = world.person()
    messages = [search_message(world, [world.face_of(person)], world.collection_id) for _ in range(3)]
    world.handler.unknown.place = lambda row: None  # type: ignore[method-assign]
    for message in messages:
        world.handle(message)
    del world.handler.unknown.place
    assert world.clusters() == {}
    world.unknown.expire()  # what other tests left to expire
    capsys.readouterr()
    name = world.main.get_collection(world.collection_id)
    assert name is not None
    cli.main(["clusters", "settle", "--collection", name.name])
    # The first face founds the cluster with the other two.
    assert "placed 1, still waiting 0, expired and erased 0" in capsys.readouterr().out
    assert sorted(len(faces) for faces in world.clusters().values()) == [3]


def test_two_workers_placing_at_once_make_one_cluster(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    person = world.person()
    aside = unit(world.rng.standard_normal(DIM))
    aside = unit(aside - float(aside @ person) * person)  # orthogonal to the person's direction
    for face in (person, unit(person + 0.1 * aside)):
        world.search(face)  # two faces: they wait
    # Two late faces, each near both waiting ones but not near each other (distance 0.66 > max_distance).
    late = [search_message(world, [unit(person + sign * 0.7 * aside)], world.collection_id) for sign in (1, -1)]
    world.handler.unknown.place = lambda row: None  # type: ignore[method-assign]
    for message in late:
        world.handle(message)
    del world.handler.unknown.place
    rows = [row for message in late for row in world.main.unknown_faces_of_job(message.job_id)]
    assert world.clusters() == {} and len(rows) == 2
    # Each late face alone would found a cluster with the two waiting. Two workers place them at once: each decides
    # (clustering.place, inside the placement's transaction) only when both have got there, or after 2 s. Without
    # the collection's lock both decide on the same memberships and found two clusters (the second keeps only its own
    # face); with it the second waits for the first to commit, decides on what it committed, and joins its cluster.
    both_deciding = threading.Barrier(2)

    def decide(nearby: list[Nearby], parameters: ClusterParameters) -> Placement:
        with contextlib.suppress(threading.BrokenBarrierError):  # the other worker waits for the lock this one holds
            both_deciding.wait(timeout=2)
        return place(nearby, parameters)

    monkeypatch.setattr(main_repository, "place", decide)
    workers = [threading.Thread(target=world.unknown.place, args=(row,)) for row in rows]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [len(faces) for faces in world.clusters().values()] == [4]


def test_the_api_settles_on_its_own(world: World, services: LocalServices) -> None:
    import redis.asyncio as aioredis

    from ingest_api.clusters_sweeper import settle_forever
    from tests.conftest import redis_client_url

    person = world.person()
    for _ in range(3):
        world.search(world.face_of(person))
    with world.main.pool.connection() as conn:
        conn.execute("UPDATE unknown_faces SET expires_at = now() WHERE collection_id = %s", (world.collection_id,))

    async def run() -> bool:
        client = aioredis.Redis.from_url(redis_client_url(services))
        task = asyncio.create_task(settle_forever(world.unknown, client, every_seconds=0.05))
        try:
            for _ in range(200):  # bounded: 10 s at most
                await asyncio.sleep(0.05)
                if world.counts()["rows"] == 0:
                    return True
            return False
        finally:
            task.cancel()
            await client.aclose()

    assert asyncio.run(run())  # a pass ran and erased the expired faces
    assert world.counts() == {"rows": 0, "vectors": 0, "crops": 0}
