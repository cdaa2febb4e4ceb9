"""Transient bytes on the real servers: a search's photo and crops live in Valkey only, through the real detect,
align, embed and index handlers under the real runner; an enroll's stay in S3 (its crop with a copy in Valkey for
the embed stage, gone with the job). Counted from the S3 folder and from
Valkey's keys, at every step: nothing of a search in S3 at any point, no blob (and no count) left after a job ends
done, failed or dead-lettered, a blob gone before its stage read it fails the job ``photo_expired`` at once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import psycopg
import pytest
import redis

from common import clients, status
from common.db.main_repository import MainRepository
from common.db.migrate import migrate_all
from common.db.vector_repository import VectorRepository
from common.errors import TransientError
from common.handlers import HandlerResult, StageHandler
from common.imaging import PNG_SIGNATURE, decode, encode_png
from common.job_bytes import JobBytes, crop_pixels
from common.metrics import StreamCollector
from common.packs.library import PackLibrary
from common.runner import StageRunner, ensure_group
from common.settings import DatabaseSettings, ModelSettings, StreamSettings
from common.transient import (
    BLOB_PREFIX,
    BYTES_KEY,
    WINDOW_MS,
    PhotoExpired,
    crop_blob_key,
    job_blob_keys,
    minimum_ttl_seconds,
    photo_blob_key,
    region_blob_key,
)
from detector.stages import AlignHandler, DetectHandler, from_wire
from embedder.stage import EmbedHandler
from indexer.stage import IndexHandler
from operations.services import LocalServices
from schemas.jobs import JobState, job_key
from schemas.results import EnrollResult
from schemas.streams import AlignedFace, AlignedMessage, DetectedMessage, EmbeddedMessage, JobKind, JobMessage, Stage
from tests.shared_data import BASIC, MODEL_ROOT, PACK, require_basic, require_pack

FAST = StreamSettings(read_count=8, block_ms=20, claim_idle_ms=50, max_deliveries=2)
MAX_PIXELS = 50_000_000


@pytest.fixture(scope="module")
def repositories(services: LocalServices) -> Iterator[tuple[MainRepository, VectorRepository]]:
    # Databases of their own: the real pack's embeddings must not reach other tests' galleries.
    names = ("fecapass_transient_main", "fecapass_transient_vector")
    with psycopg.connect(services.dsn("postgres"), autocommit=True) as conn:
        for database in names:
            conn.execute(f"DROP DATABASE IF EXISTS {database}")
            conn.execute(f"CREATE DATABASE {database}")
    migrate_all(services.dsn(names[0]), services.dsn(names[1]))
    settings = DatabaseSettings(main_db_dsn=services.dsn(names[0]), vector_db_dsn=services.dsn(names[1]))
    with clients.main_db_pool(settings) as main_pool, clients.vector_db_pool(settings) as vector_pool:
        yield MainRepository(main_pool), VectorRepository(vector_pool)


def bucket_files(services: LocalServices, job_id: str) -> list[str]:
    """The job's files in the S3 server's folder (rclone serves a directory: one file per object)."""
    root = services.data_dir / "s3" / services.bucket
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and job_id in str(p))


def blob_keys(client: redis.Redis) -> list[str]:
    return sorted(key.decode() for key in client.scan_iter(match=f"{BLOB_PREFIX}*"))


class Pipeline:
    """The four stages, each under its own runner, in this process; runs a job stage by stage."""

    def __init__(
        self,
        client: redis.Redis,
        objects: JobBytes,
        repositories: tuple[MainRepository, VectorRepository],
        services: LocalServices,
    ) -> None:
        packs = PackLibrary(ModelSettings(model_pack=PACK, model_root=MODEL_ROOT, ort_threads=1))
        main, vectors = repositories
        handlers: list[StageHandler] = [
            DetectHandler(objects, packs, MAX_PIXELS),
            AlignHandler(objects, packs, MAX_PIXELS),
            EmbedHandler(objects, packs),
            IndexHandler(main, vectors, objects.store, presign=str),
        ]
        self.client = client
        self.objects = objects
        self.services = services
        self.runners = [StageRunner(client, h, FAST, job_ttl_seconds=600, consumer=f"t-{h.stage}") for h in handlers]
        for stage in (Stage.DETECT, Stage.ALIGN, Stage.EMBED, Stage.INDEX, Stage.WEBHOOK):
            ensure_group(client, stage)

    def submit(self, kind: JobKind, photo: bytes, user_id: int | None = None) -> str:
        """As the API submits: the photo first (Valkey for a search, S3 for an enroll), then hash and event."""
        job_id = uuid.uuid4().hex
        if kind is JobKind.ENROLL:
            key = f"originals/{job_id}"
            self.objects.store.put(key, photo, "image/jpeg")
        else:
            key = photo_blob_key(job_id)
            self.objects.transient.put(key, photo)
        message = JobMessage(job_id=job_id, kind=kind, image_key=key, pack=PACK, user_id=user_id)
        with self.client.pipeline(transaction=True) as pipe:
            status.queue_job(pipe, message, 600)
            pipe.execute()
        return job_id

    def state(self, job_id: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(job_key(job_id)).items()}

    def run(self, job_id: str, after_each: list[tuple[Stage, list[str], list[str]]] | None = None) -> dict[str, str]:
        """Each stage once, in order, until the job ends; ``after_each`` gets the blobs and the S3 files seen."""
        for runner in self.runners:
            runner.run_once()
            if after_each is not None:
                after_each.append((runner.stage, blob_keys(self.client), self.s3_files(job_id)))
            if JobState(self.state(job_id)["state"]).terminal:
                break
        return self.state(job_id)

    def s3_files(self, job_id: str) -> list[str]:
        return bucket_files(self.services, job_id)


@pytest.fixture
def pipeline(
    redis_client: redis.Redis,
    job_bytes: JobBytes,
    repositories: tuple[MainRepository, VectorRepository],
    services: LocalServices,
) -> Pipeline:
    require_pack()
    require_basic()
    return Pipeline(redis_client, job_bytes, repositories, services)


def test_a_search_never_touches_s3_and_leaves_no_blob(pipeline: Pipeline, services: LocalServices) -> None:
    photo = (BASIC / "multi_group_t1.jpg").read_bytes()
    job_id = pipeline.submit(JobKind.SEARCH, photo)
    assert blob_keys(pipeline.client) == [photo_blob_key(job_id)] and pipeline.s3_files(job_id) == []
    assert pipeline.objects.transient.held_bytes() == len(photo)
    seen: list[tuple[Stage, list[str], list[str]]] = []
    final = pipeline.run(job_id, seen)
    assert final["state"] == "done", final
    faces = int(final["faces_seen"])
    assert faces >= 5
    by_stage = {stage: blobs for stage, blobs, _ in seen}
    # Detect sent each face's region of the photo and let the photo go in the same write; align cut the crops
    # from the regions and let them go; embed read the crops; the index stage's final write deleted them.
    assert by_stage[Stage.DETECT] == sorted(region_blob_key(job_id, i) for i in range(faces))
    assert by_stage[Stage.ALIGN] == sorted(crop_blob_key(job_id, i) for i in range(faces))
    assert by_stage[Stage.EMBED] == by_stage[Stage.ALIGN]
    assert by_stage[Stage.INDEX] == []
    assert all(files == [] for _, _, files in seen)  # nothing of the search in the S3 folder at any point
    assert not pipeline.client.exists(BYTES_KEY)  # and no count left
    for entry in (e for stage in Stage for _, e in pipeline.client.xrange(stage.stream)):
        # Bytes never ride in a stream entry: no photo, no PNG crop (embeddings, base64 text, are the largest field).
        assert all(photo[:64] not in value and b"PNG" not in value and len(value) < 40_000 for value in entry.values())


def test_an_enroll_keeps_its_photo_and_crop_in_s3(
    pipeline: Pipeline, services: LocalServices, repositories: tuple[MainRepository, VectorRepository]
) -> None:
    user = repositories[0].create_user(f"transient.{uuid.uuid4().hex[:8]}@example.com", "Transient Person")
    assert user is not None
    job_id = pipeline.submit(JobKind.ENROLL, (BASIC / "obama_1.jpg").read_bytes(), user_id=user.id)
    seen: list[tuple[Stage, list[str], list[str]]] = []
    assert pipeline.run(job_id, seen)["state"] == "done"
    # An enroll's transient bytes: its face's region, from detect to align, and a copy of its crop for the embed
    # stage, gone with the job's final write. Photo and crop are in S3 from the stage that wrote them on.
    crop = f"crops/{job_id}/0.png"
    copy = crop_blob_key(job_id, 0)
    assert [blobs for _, blobs, _ in seen] == [[region_blob_key(job_id, 0)], [copy], [copy], []]
    assert [files for _, _, files in seen] == [[f"originals/{job_id}"]] + [[crop, f"originals/{job_id}"]] * 3
    assert not pipeline.client.exists(BYTES_KEY)
    [face] = repositories[0].list_faces(user.id)
    assert (face.image_key, face.crop_key) == (f"originals/{job_id}", crop)
    assert pipeline.objects.store.get(crop)[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_enrolls_crop_is_a_png_in_s3_and_its_copy_in_redis_the_same_pixels_raw(
    pipeline: Pipeline, repositories: tuple[MainRepository, VectorRepository]
) -> None:
    user = repositories[0].create_user(f"transient.{uuid.uuid4().hex[:8]}@example.com", "Raw Person")
    assert user is not None
    job_id = pipeline.submit(JobKind.ENROLL, (BASIC / "obama_1.jpg").read_bytes(), user_id=user.id)
    pipeline.runners[0].run_once()
    pipeline.runners[1].run_once()
    size = detected_crop_size(pipeline, job_id)
    png = pipeline.objects.store.get(f"crops/{job_id}/0.png")
    copy = pipeline.objects.transient.get(crop_blob_key(job_id, 0))
    assert png.startswith(PNG_SIGNATURE) and not copy.startswith(PNG_SIGNATURE) and len(copy) == size * size * 3
    from_s3 = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_COLOR)  # what crop_url serves
    assert from_s3.shape == (size, size, 3) and np.array_equal(from_s3, crop_pixels(copy, size, "copy"))
    assert pipeline.run(job_id)["state"] == "done"
    assert blob_keys(pipeline.client) == []


def detected_crop_size(pipeline: Pipeline, job_id: str) -> int:
    [fields] = [f for _, f in pipeline.client.xrange(Stage.EMBED.stream) if f[b"job_id"] == job_id.encode()]
    return AlignedMessage.from_fields(fields).crop_size


def test_an_enrolls_crop_is_read_from_its_copy_in_redis_and_from_s3_without_it(
    job_bytes: JobBytes, services: LocalServices
) -> None:
    """The embed stage reads an enroll's crop from the Redis copy the align stage wrote beside the S3 object (the
    copy is given other bytes here to tell which one was read), from S3 once the copy is gone; a search's crop has
    no other copy than its blob. Redis holds raw pixels, S3 a PNG."""
    enroll, search = uuid.uuid4().hex, uuid.uuid4().hex
    enroll_crop, search_crop, other = (random_crop(seed) for seed in range(3))
    enroll_message = JobMessage(job_id=enroll, kind=JobKind.ENROLL, image_key=f"originals/{enroll}", pack=PACK)
    search_message = JobMessage(job_id=search, kind=JobKind.SEARCH, image_key=photo_blob_key(search), pack=PACK)
    durable = job_bytes.put_crop(enroll_message, 0, enroll_crop)
    transient = job_bytes.put_crop(search_message, 0, search_crop)
    assert (durable, transient) == (f"crops/{enroll}/0.png", crop_blob_key(search, 0))
    assert bucket_files(services, enroll) == [durable] and bucket_files(services, search) == []
    assert job_bytes.transient.get(crop_blob_key(enroll, 0)) == enroll_crop.tobytes()
    assert job_bytes.store.get(durable) == encode_png(enroll_crop)
    job_bytes.transient.put(crop_blob_key(enroll, 0), other.tobytes())
    assert job_bytes.get_crops([durable, transient]) == [other.tobytes(), search_crop.tobytes()]
    job_bytes.transient.delete([crop_blob_key(enroll, 0)])
    assert job_bytes.get_crops([durable, transient]) == [encode_png(enroll_crop), search_crop.tobytes()]
    job_bytes.transient.delete([transient])
    with pytest.raises(PhotoExpired):
        job_bytes.get_crops([durable, transient])
    assert job_bytes.get_crops([]) == []
    job_bytes.store.delete_many([durable])


def test_the_embed_stage_reads_an_enrolls_crop_from_its_copy_not_from_s3(
    pipeline: Pipeline, repositories: tuple[MainRepository, VectorRepository]
) -> None:
    """The S3 object is made unreadable as an image after the align stage: the job still ends done, so the embed
    stage read the Redis copy (one request fewer to S3 per enroll); the face row still points at the S3 key."""
    main = repositories[0]
    user = main.create_user(f"transient.{uuid.uuid4().hex[:8]}@example.com", "Copied Person")
    assert user is not None
    job_id = pipeline.submit(JobKind.ENROLL, (BASIC / "obama_1.jpg").read_bytes(), user_id=user.id)
    pipeline.runners[0].run_once()
    pipeline.runners[1].run_once()
    crop = f"crops/{job_id}/0.png"
    pipeline.objects.store.put(crop, b"not an image", "image/png")
    final = pipeline.run(job_id)
    assert final["state"] == "done", final
    [face] = main.list_faces(user.id)
    assert face.crop_key == crop and blob_keys(pipeline.client) == []


def test_an_enroll_delivered_again_to_the_index_stage_after_it_finished_stores_no_second_face(
    pipeline: Pipeline, services: LocalServices, repositories: tuple[MainRepository, VectorRepository]
) -> None:
    """A replay of the index stage's entry once the job is done (its crop copy already gone with the final write):
    the same face, one row, one embedding, the photo and crop still in S3."""
    main, vectors = repositories
    user = main.create_user(f"transient.{uuid.uuid4().hex[:8]}@example.com", "Replayed Person")
    assert user is not None
    job_id = pipeline.submit(JobKind.ENROLL, (BASIC / "obama_1.jpg").read_bytes(), user_id=user.id)
    assert pipeline.run(job_id)["state"] == "done"
    [face] = main.list_faces(user.id)
    [fields] = [f for _, f in pipeline.client.xrange(Stage.INDEX.stream) if f[b"job_id"] == job_id.encode()]
    handler = IndexHandler(main, vectors, pipeline.objects.store, presign=str)
    replayed = handler.handle(EmbeddedMessage.from_fields(fields))
    assert replayed.result is not None and isinstance(replayed.result.stored, EnrollResult)
    assert replayed.result.stored.face_id == face.id
    assert [f.id for f in main.list_faces(user.id)] == [face.id]
    with vectors.pool.connection() as conn:
        rows = conn.execute("SELECT count(*) FROM face_embeddings WHERE face_id = %s", (face.id,)).fetchone()
    assert rows is not None and rows[0] == 1
    assert pipeline.s3_files(job_id) == [face.crop_key, face.image_key] and blob_keys(pipeline.client) == []


def test_an_enroll_failed_in_the_index_stage_leaves_no_crop_in_s3_and_no_blob(
    pipeline: Pipeline, services: LocalServices, repositories: tuple[MainRepository, VectorRepository]
) -> None:
    main = repositories[0]
    user = main.create_user(f"transient.{uuid.uuid4().hex[:8]}@example.com", "Leaving Person")
    assert user is not None
    job_id = pipeline.submit(JobKind.ENROLL, (BASIC / "obama_1.jpg").read_bytes(), user_id=user.id)
    for runner in pipeline.runners[:3]:
        runner.run_once()
    assert pipeline.state(job_id)["state"] == "embedding"
    assert pipeline.s3_files(job_id) == [f"crops/{job_id}/0.png", f"originals/{job_id}"]
    assert blob_keys(pipeline.client) == [crop_blob_key(job_id, 0)]
    main.deactivate_user(user.id)  # between the embed and the index stage
    assert pipeline.runners[3].run_once() == 1
    final = pipeline.state(job_id)
    assert (final["state"], final["error_code"]) == ("failed", "user_not_found"), final
    assert pipeline.s3_files(job_id) == [] and blob_keys(pipeline.client) == []
    assert not pipeline.client.exists(BYTES_KEY) and main.list_faces(user.id) == []


def test_a_failed_search_leaves_no_blob(pipeline: Pipeline) -> None:
    ok, blank = cv2.imencode(".jpg", np.full((240, 320, 3), 128, dtype=np.uint8))
    assert ok
    job_id = pipeline.submit(JobKind.SEARCH, blank.tobytes())
    final = pipeline.run(job_id)
    assert (final["state"], final["error_code"]) == ("failed", "no_face")
    assert blob_keys(pipeline.client) == [] and not pipeline.client.exists(BYTES_KEY)


def test_a_photo_gone_before_detect_fails_photo_expired_at_once(pipeline: Pipeline) -> None:
    job_id = pipeline.submit(JobKind.SEARCH, (BASIC / "obama_1.jpg").read_bytes())
    pipeline.client.pexpire(photo_blob_key(job_id), 1)  # its TTL runs out while the entry waits
    for _ in range(1000):
        if not pipeline.client.exists(photo_blob_key(job_id)):
            break
    assert not pipeline.client.exists(photo_blob_key(job_id))
    assert pipeline.runners[0].run_once() == 1
    final = pipeline.state(job_id)
    assert (final["state"], final["error_code"]) == ("failed", "photo_expired"), final
    assert "FECAPASS_TRANSIENT_TTL_SECONDS" in final["error_message"]
    # Settled on its first delivery: acknowledged, neither retried nor dead-lettered.
    assert int(pipeline.client.xpending(Stage.DETECT.stream, Stage.DETECT.group)["pending"]) == 0
    assert pipeline.client.xlen(Stage.DETECT.dead_letter_stream) == 0
    assert pipeline.runners[0].run_once() == 0


def test_a_crop_gone_before_embed_fails_only_its_own_job(pipeline: Pipeline) -> None:
    photo = (BASIC / "obama_1.jpg").read_bytes()
    gone, kept = pipeline.submit(JobKind.SEARCH, photo), pipeline.submit(JobKind.SEARCH, photo)
    pipeline.runners[0].run_once()
    pipeline.runners[1].run_once()
    pipeline.client.delete(crop_blob_key(gone, 0))
    pipeline.runners[2].run_once()  # both in one batch: one MGET, then each message on its own
    assert pipeline.state(gone)["error_code"] == "photo_expired"
    assert pipeline.state(kept)["state"] == "embedding"
    assert pipeline.run(kept)["state"] == "done"
    assert blob_keys(pipeline.client) == []


class Failing:
    """A detect stage whose handler fails every delivery (as one that crashes on a photo would)."""

    stage = Stage.DETECT
    message_type = JobMessage

    def handle_batch(self, messages: Sequence[JobMessage]) -> list[HandlerResult]:
        return [TransientError("cannot get through") for _ in messages]


def test_a_dead_lettered_job_keeps_no_blob(pipeline: Pipeline) -> None:
    job_id = pipeline.submit(JobKind.SEARCH, (BASIC / "obama_1.jpg").read_bytes())
    runner = StageRunner(pipeline.client, Failing(), FAST, job_ttl_seconds=600, consumer="failing")
    for _ in range(200):  # each delivery waits out the claim idle; dead after max_deliveries
        runner.run_once()
        if pipeline.client.xlen(Stage.DETECT.dead_letter_stream):
            break
    assert pipeline.state(job_id)["error_code"] == "too_many_deliveries"
    assert blob_keys(pipeline.client) == [] and not pipeline.client.exists(BYTES_KEY)


def random_crop(seed: int, size: int = 112) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"not an image at all", id="too short for raw pixels"),
        pytest.param(random_crop(1).tobytes() + b"\0", id="one byte over"),
        pytest.param(random_crop(1, 224).tobytes(), id="another size's raw pixels"),
        pytest.param(PNG_SIGNATURE + b"\0" * 64, id="a broken PNG"),
        pytest.param(encode_png(random_crop(1, 224)), id="a PNG of another size"),
    ],
)
def test_a_poison_crop_dead_letters_its_job_and_deletes_its_blobs(pipeline: Pipeline, data: bytes) -> None:
    job_id = uuid.uuid4().hex
    crops = [crop_blob_key(job_id, i) for i in range(2)]
    pipeline.objects.transient.put(photo_blob_key(job_id), b"not an image at all")
    for key in crops:
        pipeline.objects.transient.put(key, data)
    faces = [AlignedFace(box=(0, 0, 1, 1), keypoints=[(0, 0)] * 5, score=1.0, crop_key=key) for key in crops]
    message = AlignedMessage(
        job_id=job_id, kind=JobKind.SEARCH, image_key=photo_blob_key(job_id), faces=faces, faces_seen=2, pack=PACK,
        crop_size=112,
    )  # fmt: skip
    pipeline.client.hset(job_key(job_id), mapping={"kind": "search", "state": "aligning"})
    pipeline.client.xadd(Stage.EMBED.stream, message.to_fields())
    pipeline.runners[2].run_once()
    assert pipeline.client.xlen(Stage.EMBED.dead_letter_stream) == 1
    assert pipeline.state(job_id)["error_code"] == "undecodable_image"
    assert blob_keys(pipeline.client) == [] and not pipeline.client.exists(BYTES_KEY)


def detected_entry(pipeline: Pipeline, job_id: str) -> DetectedMessage:
    [(_, fields)] = [(i, f) for i, f in pipeline.client.xrange(Stage.ALIGN.stream) if f[b"job_id"] == job_id.encode()]
    return DetectedMessage.from_fields(fields)


def test_an_entry_written_before_regions_is_aligned_from_its_photo_into_the_same_crops(pipeline: Pipeline) -> None:
    photo = (BASIC / "multi_two_people.jpg").read_bytes()
    new, old = pipeline.submit(JobKind.SEARCH, photo), pipeline.submit(JobKind.SEARCH, photo)
    pipeline.runners[0].run_once()  # both detected: regions sent, photos released
    assert blob_keys(pipeline.client) == sorted(
        region_blob_key(job, i) for job in (new, old) for i in range(len(detected_entry(pipeline, job).faces))
    )
    # The old job's entry as a detect stage before regions wrote it: no region fields, the photo still in Valkey.
    entry_id = next(i for i, f in pipeline.client.xrange(Stage.ALIGN.stream) if f[b"job_id"] == old.encode())
    legacy = detected_entry(pipeline, old)
    bare = legacy.model_copy(
        update={"faces": [f.model_copy(update={"region_key": None, "region_box": None}) for f in legacy.faces]}
    )
    assert "region" not in str(bare.to_fields()["faces"]) and "region_key" in str(legacy.to_fields()["faces"])
    pipeline.client.xdel(Stage.ALIGN.stream, entry_id)
    pipeline.objects.transient.delete([region_blob_key(old, i) for i in range(len(legacy.faces))])
    pipeline.objects.transient.put(photo_blob_key(old), photo)
    pipeline.client.xadd(Stage.ALIGN.stream, bare.to_fields())
    pipeline.runners[1].run_once()
    crops = {job: [pipeline.client.get(crop_blob_key(job, i)) for i in range(len(legacy.faces))] for job in (new, old)}
    assert all(crops[new]) and crops[new] == crops[old]  # byte for byte, the same raw crops
    # Align let go of the old job's photo and of the new job's regions.
    assert blob_keys(pipeline.client) == sorted(
        crop_blob_key(job, i) for job in (new, old) for i in range(len(legacy.faces))
    )
    for job in (new, old):
        assert pipeline.run(job)["state"] == "done"
    assert blob_keys(pipeline.client) == [] and not pipeline.client.exists(BYTES_KEY)


def test_a_job_failed_in_align_keeps_no_region(pipeline: Pipeline) -> None:
    job_id = pipeline.submit(JobKind.SEARCH, (BASIC / "multi_group_t1.jpg").read_bytes())
    pipeline.runners[0].run_once()
    faces = len(detected_entry(pipeline, job_id).faces)
    assert faces >= 5 and blob_keys(pipeline.client) == sorted(region_blob_key(job_id, i) for i in range(faces))
    pipeline.objects.transient.delete([region_blob_key(job_id, 0)])  # gone while the entry waited
    pipeline.runners[1].run_once()
    assert pipeline.state(job_id)["error_code"] == "photo_expired"
    assert blob_keys(pipeline.client) == [] and not pipeline.client.exists(BYTES_KEY)


def test_a_region_that_does_not_match_its_box_dead_letters_its_job_and_its_blobs(pipeline: Pipeline) -> None:
    job_id = pipeline.submit(JobKind.SEARCH, (BASIC / "obama_1.jpg").read_bytes())
    pipeline.runners[0].run_once()
    pipeline.objects.transient.put(region_blob_key(job_id, 0), b"\x00" * 12)  # not the box's pixels
    pipeline.runners[1].run_once()
    assert pipeline.client.xlen(Stage.ALIGN.dead_letter_stream) == 1
    assert pipeline.state(job_id)["error_code"] == "malformed_message"
    assert blob_keys(pipeline.client) == [] and not pipeline.client.exists(BYTES_KEY)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda victim, box: {"region_key": region_blob_key(victim, 0)}, id="another job's region"),
        pytest.param(lambda victim, box: {"region_key": f"originals/{victim}"}, id="an S3 object"),
        pytest.param(  # the same size as the region's pixels, far down and right: a canvas of 11 GB
            lambda victim, box: {"region_box": (60_000, 60_000, 60_000 + box[2] - box[0], 60_000 + box[3] - box[1])},
            id="a canvas past the limit",
        ),
    ],
)
def test_an_entry_cannot_point_align_at_bytes_not_its_own(pipeline: Pipeline, tamper: object) -> None:
    photo = (BASIC / "obama_1.jpg").read_bytes()
    attacker, victim = pipeline.submit(JobKind.SEARCH, photo), pipeline.submit(JobKind.SEARCH, photo)
    pipeline.runners[0].run_once()
    entry_id = next(i for i, f in pipeline.client.xrange(Stage.ALIGN.stream) if f[b"job_id"] == attacker.encode())
    entry = detected_entry(pipeline, attacker)
    forged = entry.model_copy(
        update={"faces": [entry.faces[0].model_copy(update=tamper(victim, entry.faces[0].region_box))]}
    )  # type: ignore[operator]
    pipeline.client.xdel(Stage.ALIGN.stream, entry_id)
    pipeline.client.xadd(Stage.ALIGN.stream, forged.to_fields())
    pipeline.runners[1].run_once()
    assert pipeline.state(attacker)["error_code"] == "malformed_message"
    assert pipeline.client.xlen(Stage.ALIGN.dead_letter_stream) == 1
    # The victim's region was neither read into the attacker's crop nor deleted by its dead letter.
    assert not pipeline.client.exists(crop_blob_key(attacker, 0))
    assert pipeline.run(victim)["state"] == "done"
    assert blob_keys(pipeline.client) == [] and not pipeline.client.exists(BYTES_KEY)


def test_bytes_are_counted_with_every_write_and_a_count_left_by_expiry_heals(job_bytes: JobBytes) -> None:
    store, client = job_bytes.transient, job_bytes.transient.client
    store.put("fecapass:blob:count:photo", b"x" * 1000)
    store.put("fecapass:blob:count:crop.0", b"y" * 300)
    store.put("fecapass:blob:count:crop.0", b"z" * 200)  # a redelivery overwrites: counted once
    assert store.held_bytes() == 1200
    [gauge] = [f for f in StreamCollector(client).collect() if f.name == "fecapass_transient_bytes"]
    assert gauge.samples[0].value == 1200  # what operators see on /metrics
    # What an expired blob leaves: bytes counted in a window of expiry time that has passed.
    past_window = int(client.time()[0]) * 1000 // WINDOW_MS - 2
    client.hincrby(BYTES_KEY, str(past_window), 5_000_000)
    assert store.held_bytes() == 1200
    assert not client.hexists(BYTES_KEY, str(past_window))  # dropped, not carried forever
    assert store.delete(["fecapass:blob:count:photo", "fecapass:blob:count:crop.0", "fecapass:blob:none"]) == 1200
    assert store.held_bytes() == 0 and not client.exists(BYTES_KEY)
    # A name under the prefix that holds something else is not a blob: left alone, and deleting it fails nothing.
    client.hset("fecapass:blob:count:photo", "not", "a blob")
    client.set("fecapass:blob:count:crop.0", b"no ttl")  # written by hand: deleted all the same, nothing counted
    assert store.delete(["fecapass:blob:count:photo", "fecapass:blob:count:crop.0"]) == len(b"no ttl")
    assert client.type("fecapass:blob:count:photo") == b"hash" and not client.exists("fecapass:blob:count:crop.0")
    assert store.held_bytes() == 0


def test_the_default_ttl_outlasts_every_redelivery_under_production_defaults() -> None:
    from common.settings import PipelineSettings

    production = StreamSettings()
    # A message that is claimed again and again in every stage before it is dead-lettered still finds its bytes.
    assert PipelineSettings.model_fields["transient_ttl_seconds"].default > minimum_ttl_seconds(production) == 600


def test_a_verify_sends_a_region_of_each_photo_and_its_crops_are_those_of_the_photos(job_bytes: JobBytes) -> None:
    require_pack()
    packs = PackLibrary(ModelSettings(model_pack=PACK, model_root=MODEL_ROOT, ort_threads=1))
    job_id = uuid.uuid4().hex
    photos = [(require_basic() / name).read_bytes() for name in ("obama_1.jpg", "biden_1.jpg")]
    for source, photo in enumerate(photos):
        job_bytes.transient.put(photo_blob_key(job_id, source), photo)
    keys = [photo_blob_key(job_id, source) for source in (0, 1)]
    message = JobMessage(job_id=job_id, kind=JobKind.VERIFY, image_key=keys[0], second_image_key=keys[1], pack=PACK)
    detected = DetectHandler(job_bytes, packs, MAX_PIXELS).handle(message)
    assert detected.forward is not None and list(detected.release) == message.image_keys
    entry = DetectedMessage.from_fields(detected.forward.to_fields())
    assert [(f.source, f.region_key) for f in entry.faces] == [(s, region_blob_key(job_id, s)) for s in (0, 1)]
    aligned = AlignHandler(job_bytes, packs, MAX_PIXELS).handle(entry)
    assert aligned.forward is not None
    assert set(aligned.release) == {*message.image_keys, region_blob_key(job_id, 0), region_blob_key(job_id, 1)}
    result = AlignedMessage.from_fields(aligned.forward.to_fields())
    aligner = packs.aligner(PACK, entry.crop_size)
    for face, photo in zip(result.faces, photos, strict=True):
        assert "region" not in face.model_dump(exclude_none=True)  # later stages do not carry the region
        expected = aligner.align(decode(photo, MAX_PIXELS), from_wire(face))
        blob = job_bytes.get(face.crop_key)
        assert len(blob) == entry.crop_size**2 * 3  # raw pixels, no PNG
        assert np.array_equal(crop_pixels(blob, entry.crop_size, face.crop_key), expected)
    job_bytes.transient.delete(job_blob_keys(job_id, crops=2))
