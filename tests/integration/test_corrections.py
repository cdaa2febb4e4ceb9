"""Corrections against the real servers: merging person B into A and moving one face, counted in PostgreSQL, Redis,
the S3 bucket and an index process's binary codes; enrolls of B in flight and running at the same time; repeats.

The index stage runs for real (its handler in the shared runner); the stages before it are stood in for by the
entries they write (tests/integration/test_erasure.py's helpers).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import faiss
import numpy as np
import pytest
import redis

from common.db.corrections import Corrections
from common.db.erasure import Erasure
from common.db.main_repository import CollectionMismatch, MainRepository, NewFace, UnknownFace, UnknownUser
from common.db.vector_repository import VectorRepository
from common.objects import ObjectStore, crop_key, original_key
from common.runner import StageRunner
from common.settings import StreamSettings
from indexer.binary_index import BinaryIndex
from indexer.gallery_feed import GalleryFeed
from indexer.stage import IndexHandler
from schemas.gallery import EVERY_PACK, Change, FeedEntry
from schemas.jobs import job_key, user_jobs_key
from schemas.results import StoredSearchResult
from schemas.streams import Stage
from tests.integration import test_erasure
from tests.integration.test_erasure import (
    DIM,
    PACK,
    TTL,
    Enroll,
    FailingOnce,
    face_rows,
    job,
    presign,
    search_entry,
    submit,
)

SIDE_BY_SIDE = StreamSettings(read_count=1, block_ms=20, claim_idle_ms=60_000, max_deliveries=5, retry_backoff_ms=1)


@dataclass
class World(test_erasure.World):
    """test_erasure's world (its handler enrolls and publishes to the gallery feed), plus corrections and another
    index process that searches through in-memory binary codes kept current by the feed."""

    feed: GalleryFeed
    corrections: Corrections
    binary: BinaryIndex
    searcher: IndexHandler


@pytest.fixture
def world(
    repositories: tuple[MainRepository, VectorRepository], object_store: ObjectStore, redis_client: redis.Redis
) -> World:
    feed = GalleryFeed(redis_client)  # the production stream: the API's erasure publishes there
    enrolling = test_erasure.world_over(repositories, object_store, redis_client, feed)
    binary = BinaryIndex(enrolling.vectors, feed, candidates=50)
    return World(
        **vars(enrolling),
        feed=feed,
        corrections=Corrections(enrolling.main, enrolling.erasure),
        binary=binary,
        searcher=IndexHandler(
            enrolling.main, enrolling.vectors, object_store, threshold=0.5, presign=presign, binary=binary
        ),
    )


def new_user(world: World, name: str = "Person") -> int:
    return world.main.create_user(f"{uuid.uuid4().hex}@example.com", name).id


def enrolled_for(world: World, user_id: int, rng: np.random.Generator) -> Enroll:
    enroll = submit(world, user_id, up_to=Stage.INDEX, rng=rng)
    assert world.runner().run_once() == 1
    assert job(world.redis, enroll.job_id)["state"] == "done"
    return enroll


def face_of(world: World, enroll: Enroll) -> int:
    ((face_id, served),) = face_rows(world, enroll.job_id)
    assert served
    return int(face_id)


def owners_found(world: World, embedding: np.ndarray) -> list[tuple[int, int]]:
    """(user id, face id) of the matches of a search with this embedding, through the binary codes."""
    finished = world.searcher.handle(search_entry(embedding)).result
    assert finished is not None and isinstance(finished.stored, StoredSearchResult)
    return [(match.user_id, match.face_id) for face in finished.stored.faces for match in face.matches]


def faces_per_user(world: World, *user_ids: int) -> list[int]:
    """Face rows (served or not) of each user, counted in PostgreSQL."""
    counted = dict(
        rows(world, "SELECT user_id, count(*) FROM faces WHERE user_id = ANY(%s) GROUP BY 1", list(user_ids))
    )
    return [int(counted.get(user_id, 0)) for user_id in user_ids]  # type: ignore[call-overload]


def rows(world: World, query: str, *args: object) -> list[tuple[object, ...]]:
    with world.main.pool.connection() as conn:
        return conn.execute(query, args).fetchall()


def embeddings(world: World, face_ids: list[int]) -> dict[int, bytes]:
    """The stored vectors of these faces, by face id, as PostgreSQL's text of them."""
    with world.vectors.pool.connection() as conn:
        found = conn.execute(
            "SELECT face_id, embedding::text FROM face_embeddings WHERE face_id = ANY(%s)", (face_ids,)
        ).fetchall()
    return {int(face_id): text.encode() for face_id, text in found}


def codes_in_memory(world: World) -> set[int]:
    """Face ids whose code the searching process holds, after applying the feed."""
    world.binary.refresh(PACK, DIM)
    gallery = world.binary._packs[PACK]
    return {int(i) for codes in gallery.collections.values() for i in faiss.vector_to_array(codes.index.id_map)}


def feed_entries(world: World) -> list[FeedEntry]:
    return [FeedEntry.from_fields(fields) for _, fields in world.redis.xrange(world.feed.stream)]


def kept_objects(world: World, enroll: Enroll) -> list[str]:
    return world.store.keys(original_key(enroll.job_id)) + world.store.keys(f"crops/{enroll.job_id}/")


# -- merge ------------------------------------------------------------------------------------------------------


def test_a_merge_moves_every_face_of_b_to_a_and_erases_b(world: World) -> None:
    rng = np.random.default_rng(21)
    a, b, bystander = new_user(world, "A"), new_user(world, "B"), new_user(world, "C")
    of_a = enrolled_for(world, a, rng)
    of_b = [enrolled_for(world, b, rng) for _ in range(2)]
    other = enrolled_for(world, bystander, rng)
    b_faces = [face_of(world, e) for e in of_b]
    before = embeddings(world, [face_of(world, of_a), *b_faces])
    assert owners_found(world, of_b[0].embedding)[0] == (b, b_faces[0])
    codes = codes_in_memory(world)  # loaded before the merge
    assert set(b_faces) <= codes

    merge = world.corrections.merge(a, b)

    assert merge.into.id == a and [f.id for f in merge.moved] == b_faces and not merge.repeated
    assert faces_per_user(world, a, b, bystander) == [3, 0, 1]
    assert world.main.count_faces(a) == 3 and world.main.get_user(b) is None
    assert rows(world, "SELECT user_id FROM erased_users WHERE user_id = %s", b) == [(b,)]
    assert rows(world, "SELECT user_id, merged_into FROM merged_users WHERE user_id = %s", b) == [(b, a)]
    jobs = [e.job_id for e in of_b]
    assert rows(world, "SELECT count(*) FROM erased_faces WHERE job_id = ANY(%s)", jobs) == [(0,)]  # none erased
    # Same ids, same vectors, same codes: nothing embedded again, and the very next search names A.
    assert embeddings(world, [face_of(world, of_a), *b_faces]) == before
    assert codes_in_memory(world) == codes
    assert owners_found(world, of_b[0].embedding)[0] == (a, b_faces[0])
    assert owners_found(world, of_b[1].embedding)[0] == (a, b_faces[1])
    assert owners_found(world, other.embedding)[0][0] == bystander
    for enroll in of_b:  # the photos and crops of the moved faces stay
        assert kept_objects(world, enroll) == [original_key(enroll.job_id), crop_key(enroll.job_id, 0)]
    assert not world.redis.exists(user_jobs_key(b))

    # B's enroll delivered again: a duplicate of a done job is acknowledged without running; once its job hash has
    # expired it runs, finds its face given away and leaves it to A, photo and all.
    world.redis.xadd(Stage.INDEX.stream, of_b[0].entries[Stage.INDEX].to_fields())
    assert world.runner().run_once() == 1
    assert job(world.redis, of_b[0].job_id)["state"] == "done"
    world.redis.delete(job_key(of_b[0].job_id))  # FECAPASS_JOB_TTL_SECONDS later
    world.redis.xadd(Stage.INDEX.stream, of_b[0].entries[Stage.INDEX].to_fields())
    assert world.runner().run_once() == 1
    replayed = job(world.redis, of_b[0].job_id)
    assert replayed["state"] == "done" and f'"user_id":{a},' in replayed["result"].replace(" ", "")
    assert faces_per_user(world, a, b) == [3, 0] and owners_found(world, of_b[0].embedding)[0] == (a, b_faces[0])
    assert kept_objects(world, of_b[0]) == [original_key(of_b[0].job_id), crop_key(of_b[0].job_id, 0)]
    # A new enroll for B (a client that still holds B's id): refused, nothing stored.
    late = submit(world, b, up_to=Stage.INDEX, rng=rng)
    assert world.runner().run_once() == 1
    assert job(world.redis, late.job_id)["error_code"] == "user_not_found"
    assert face_rows(world, late.job_id) == [] and kept_objects(world, late) == []


def test_repeating_a_merge_answers_with_a_and_changes_nothing(world: World) -> None:
    rng = np.random.default_rng(22)
    a, b = new_user(world, "A"), new_user(world, "B")
    enrolled_for(world, a, rng)
    enrolled_for(world, b, rng)
    first = world.corrections.merge(a, b)
    state = rows(world, "SELECT id, user_id, served FROM faces ORDER BY id"), faces_per_user(world, a, b)
    entries = world.redis.xlen(world.feed.stream)

    again = world.corrections.merge(a, b)

    assert again.repeated and again.moved == [] and again.dropped == [] and again.into == first.into
    assert (rows(world, "SELECT id, user_id, served FROM faces ORDER BY id"), faces_per_user(world, a, b)) == state
    assert rows(world, "SELECT count(*) FROM merged_users WHERE user_id = %s", b) == [(1,)]
    assert world.redis.xlen(world.feed.stream) == entries


def test_a_merge_cut_short_after_its_commit_is_finished_by_the_repeat(world: World) -> None:
    a, b = new_user(world, "A"), new_user(world, "B")
    in_flight = submit(world, b, up_to=Stage.EMBED, rng=np.random.default_rng(23))
    broken = Corrections(world.main, Erasure(world.main, world.vectors, BrokenStore(world.store), world.redis, TTL))
    with pytest.raises(RuntimeError):
        broken.merge(a, b)
    assert world.main.get_user(b) is not None  # tombstoned and inactive, its row still there
    assert rows(world, "SELECT is_active FROM users WHERE id = %s", b) == [(False,)]

    assert world.corrections.merge(a, b).repeated
    assert world.main.get_user(b) is None
    assert job(world.redis, in_flight.job_id)["error_code"] == "user_not_found"
    assert kept_objects(world, in_flight) == []


class BrokenStore(ObjectStore):
    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner.client, inner.bucket)

    def delete_many(self, keys: object) -> None:
        raise RuntimeError("S3 went away mid-merge")


def test_merges_refuse_unknown_people_themselves_and_other_collections(world: World) -> None:
    a, b, d = new_user(world, "A"), new_user(world, "B"), new_user(world, "D")
    with pytest.raises(ValueError, match="itself"):
        world.corrections.merge(a, a)
    with pytest.raises(UnknownUser) as unknown:
        world.corrections.merge(a, 10**12)
    assert unknown.value.args == (10**12,)
    with pytest.raises(UnknownUser) as unknown:
        world.corrections.merge(10**12, a)
    assert unknown.value.args == (10**12,)
    assert world.main.update_user(d, email=None, full_name=None, is_active=False) is not None
    with pytest.raises(UnknownUser):  # into an inactive user: nobody would find the faces
        world.corrections.merge(d, b)

    world.corrections.merge(a, b)
    with pytest.raises(UnknownUser) as unknown:  # B went into A: merging it into someone else finds nobody
        world.corrections.merge(d, b)
    assert unknown.value.args == (b,)

    elsewhere = user_in_new_collection(world)
    with pytest.raises(CollectionMismatch):
        world.corrections.merge(a, elsewhere)
    with pytest.raises(UnknownUser):  # a caller limited to the default collection does not see it
        world.corrections.merge(a, elsewhere, visible={1})
    with pytest.raises(UnknownUser):
        world.corrections.merge(elsewhere, a, visible={1})
    assert faces_per_user(world, a, elsewhere) == [0, 0]
    assert world.main.get_user(elsewhere) is not None and world.main.get_user(a) is not None


def user_in_new_collection(world: World) -> int:
    name = f"site-{uuid.uuid4().hex[:8]}"
    ((collection_id,),) = rows(world, "INSERT INTO collections (name) VALUES (%s) RETURNING id", name)
    user_id = new_user(world, "Elsewhere")
    with world.main.pool.connection() as conn:
        conn.execute("UPDATE users SET collection_id = %s WHERE id = %s", (collection_id, user_id))
    return user_id


# -- enrolls of B in flight or running at the time ---------------------------------------------------------------


def test_an_enroll_of_b_waiting_in_a_stage_fails_with_user_not_found_and_stores_nothing(world: World) -> None:
    a, b = new_user(world, "A"), new_user(world, "B")
    waiting = submit(world, b, up_to=Stage.EMBED, rng=np.random.default_rng(24))
    world.corrections.merge(a, b)
    assert job(world.redis, waiting.job_id)["error_code"] == "user_not_found"
    assert kept_objects(world, waiting) == []
    # A worker that held it carries on to the index stage, which refuses it.
    world.store.put(crop_key(waiting.job_id, 0), b"crop written late")
    world.redis.xadd(Stage.INDEX.stream, waiting.entries[Stage.INDEX].to_fields())
    assert world.runner().run_once() == 1
    assert job(world.redis, waiting.job_id)["error_code"] == "user_not_found"
    assert faces_per_user(world, a, b) == [0, 0] and kept_objects(world, waiting) == []
    assert face_rows(world, waiting.job_id) == []


def test_an_enroll_of_b_whose_row_is_in_but_not_yet_served_is_erased_not_moved(world: World) -> None:
    a, b = new_user(world, "A"), new_user(world, "B")
    enroll = submit(world, b, up_to=Stage.INDEX, rng=np.random.default_rng(25))
    # The face row and its embedding committed, then the worker died before serving it.
    crashing = IndexHandler(
        world.main, FailingOnce(world.vectors, "add_embedding"), world.store, 0.5, presign=presign, feed=world.feed
    )
    assert world.runner(crashing).run_once() == 1
    ((face_id, served),) = face_rows(world, enroll.job_id)
    assert not served and embeddings(world, [face_id])

    merge = world.corrections.merge(a, b)

    assert merge.moved == [] and [f.id for f in merge.dropped] == [face_id]
    assert faces_per_user(world, a, b) == [0, 0] and embeddings(world, [face_id]) == {}
    assert FeedEntry(Change.REMOVE, EVERY_PACK, [face_id]) in feed_entries(world)
    time.sleep(0.01)
    assert world.runner(crashing).run_once() == 1  # redelivered: refused
    assert job(world.redis, enroll.job_id)["error_code"] == "user_not_found"
    assert face_rows(world, enroll.job_id) == [] and embeddings(world, [face_id]) == {}
    assert kept_objects(world, enroll) == []


def test_a_merge_while_enrolls_of_b_run_leaves_every_face_on_a_or_nowhere(world: World) -> None:
    """Index workers enroll B's photos in threads while the merge runs: each enroll either finished before it (its
    face moved to A) or fails with user_not_found (nothing stored); no face is left on B or unserved."""
    rng = np.random.default_rng(26)
    a, b = new_user(world, "A"), new_user(world, "B")
    enrolls = [submit(world, b, up_to=Stage.INDEX, rng=rng) for _ in range(8)]
    start = threading.Barrier(3)

    errors: list[BaseException] = []

    def work(consumer: str) -> None:
        try:
            run(consumer)
        except BaseException as exc:
            errors.append(exc)
            raise

    def run(consumer: str) -> None:
        start.wait(10)
        # One entry at a time, never claimed from the other worker: two index processes side by side.
        runner = StageRunner(world.redis, world.handler, SIDE_BY_SIDE, job_ttl_seconds=TTL, consumer=consumer)
        for _ in range(len(enrolls)):  # bounded
            runner.run_once()

    workers = [threading.Thread(target=work, args=(f"index-{i}",)) for i in range(2)]
    for worker in workers:
        worker.start()
    start.wait(10)
    for _ in range(3000):  # bounded (30 s): some enrolls done first, so that the merge has faces to move
        if sum(job(world.redis, e.job_id).get("state") == "done" for e in enrolls) >= 2:
            break
        time.sleep(0.01)
    world.corrections.merge(a, b)
    for worker in workers:
        worker.join(60)
    assert int(world.redis.xpending(Stage.INDEX.stream, Stage.INDEX.group)["pending"]) == 0

    states = {e.job_id: job(world.redis, e.job_id) for e in enrolls}
    done = [e for e in enrolls if states[e.job_id].get("state") == "done"]
    # Failed with user_not_found; or failed by its worker just before the erasure's Redis step, which then took
    # the finished job's hash away with the rest of B's traces.
    failed = [e for e in enrolls if states[e.job_id].get("error_code") == "user_not_found" or not states[e.job_id]]
    assert len(done) + len(failed) == len(enrolls), states
    assert len(done) >= 2 and not errors
    assert faces_per_user(world, a, b) == [len(done), 0]
    jobs = [e.job_id for e in enrolls]
    assert rows(world, "SELECT count(*) FROM faces WHERE job_id = ANY(%s) AND NOT served", jobs) == [(0,)]
    for enroll in done:
        face_id = face_of(world, enroll)
        assert owners_found(world, enroll.embedding)[0] == (a, face_id)
        assert kept_objects(world, enroll) != []
    for enroll in failed:
        assert face_rows(world, enroll.job_id) == [] and kept_objects(world, enroll) == []
    # No embedding without a face: no vector equal to a failed enroll's is stored.
    with world.vectors.pool.connection() as conn:
        for enroll in failed:
            found = conn.execute(
                "SELECT count(*) FROM face_embeddings WHERE embedding = %s::vector", (enroll.embedding,)
            )
            assert found.fetchone() == (0,)
    assert len(embeddings(world, [face_of(world, e) for e in done])) == len(done)


def merges_at_once(world: World, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], object]:
    """Run these merges (into, from) in threads released together: what each returned (A's id) or raised."""
    start = threading.Barrier(len(pairs))
    outcomes: dict[tuple[int, int], object] = {}

    def merge(into: int, source: int) -> None:
        start.wait(10)
        try:
            outcomes[(into, source)] = world.corrections.merge(into, source).into.id
        except Exception as exc:  # recorded, for the test to judge
            outcomes[(into, source)] = exc

    threads = [threading.Thread(target=merge, args=pair) for pair in pairs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def test_two_opposite_merges_at_once_neither_deadlock_nor_both_win(world: World) -> None:
    """A into B and B into A at the same moment: the users are locked in id order, so one waits for the other; the
    second then finds its target merged away (a deadlock would raise DeadlockDetected in one). Rounds bounded."""
    rng = np.random.default_rng(31)
    for _ in range(4):
        a, b = new_user(world, "A"), new_user(world, "B")
        faces = {face_of(world, enrolled_for(world, user, rng)) for user in (a, b)}
        outcomes = merges_at_once(world, [(a, b), (b, a)])
        won = [pair for pair, outcome in outcomes.items() if isinstance(outcome, int)]
        lost = [outcome for outcome in outcomes.values() if not isinstance(outcome, int)]
        assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], UnknownUser), outcomes
        winner, loser = won[0]
        assert faces_per_user(world, winner, loser) == [2, 0] and {f.id for f in world.main.list_faces(winner)} == faces


WAITING_FOR_A_LOCK = (
    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
)


def test_a_merge_waiting_for_an_erasure_of_b_finds_b_erased_and_moves_nothing(world: World) -> None:
    """The erasure's first transaction holds B's row when the merge asks for it; once it commits, the merge must see
    the tombstone that transaction wrote (not the snapshot it took before waiting)."""
    rng = np.random.default_rng(32)
    a, b = new_user(world, "A"), new_user(world, "B")
    face_of(world, enrolled_for(world, b, rng))
    outcome: list[object] = []
    with world.main.pool.connection() as erasing:
        erasing.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (b,))  # as begin_user_erasure does
        erasing.execute("INSERT INTO erased_users (user_id) VALUES (%s)", (b,))
        erasing.execute("UPDATE users SET is_active = false WHERE id = %s", (b,))
        erasing.execute("UPDATE faces SET served = false WHERE user_id = %s", (b,))

        def merge() -> None:
            try:
                outcome.append(world.corrections.merge(a, b))
            except Exception as exc:  # judged below
                outcome.append(exc)

        thread = threading.Thread(target=merge)
        thread.start()
        for _ in range(1000):  # bounded (10 s): until the merge waits for B's row
            waiting = rows(world, WAITING_FOR_A_LOCK)
            if waiting != [(0,)]:
                break
            time.sleep(0.01)
        assert waiting != [(0,)], "the merge never waited for the erasure's lock"
        erasing.commit()
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], UnknownUser) and outcome[0].args == (b,), outcome
    assert faces_per_user(world, a) == [0]
    assert rows(world, "SELECT count(*) FROM merged_users WHERE user_id = %s", b) == [(0,)]


# -- move -------------------------------------------------------------------------------------------------------


def test_a_moved_face_is_found_under_its_new_user_at_once_and_a_repeat_changes_nothing(world: World) -> None:
    rng = np.random.default_rng(27)
    x, c = new_user(world, "X"), new_user(world, "C")
    wrong, right = enrolled_for(world, x, rng), enrolled_for(world, x, rng)
    face_id = face_of(world, wrong)
    codes = codes_in_memory(world)
    before = embeddings(world, [face_id])

    move = world.corrections.move(face_id, c)

    assert move.moved and move.from_user_id == x and move.face.user_id == c
    assert (move.face.image_key, move.face.crop_key) == (original_key(wrong.job_id), crop_key(wrong.job_id, 0))
    assert faces_per_user(world, x, c) == [1, 1]
    assert owners_found(world, wrong.embedding)[0] == (c, face_id)
    assert owners_found(world, right.embedding)[0][0] == x
    assert embeddings(world, [face_id]) == before and codes_in_memory(world) == codes
    assert kept_objects(world, wrong) == [original_key(wrong.job_id), crop_key(wrong.job_id, 0)]

    again = world.corrections.move(face_id, c)
    assert not again.moved and again.face == move.face and faces_per_user(world, x, c) == [1, 1]


def test_erasing_the_user_a_face_was_moved_from_keeps_the_face_and_its_photo(world: World) -> None:
    """The user's job list still names the moved face's enroll: its photo and crop are the new owner's now."""
    rng = np.random.default_rng(28)
    x, c = new_user(world, "X"), new_user(world, "C")
    moved, erased = enrolled_for(world, x, rng), enrolled_for(world, x, rng)
    face_id = face_of(world, moved)
    world.corrections.move(face_id, c)

    assert world.erasure.erase_user(x)

    assert faces_per_user(world, x, c) == [0, 1] and owners_found(world, moved.embedding)[0] == (c, face_id)
    assert kept_objects(world, moved) == [original_key(moved.job_id), crop_key(moved.job_id, 0)]
    assert job(world.redis, moved.job_id)["state"] == "done"
    assert kept_objects(world, erased) == [] and owners_found(world, erased.embedding) == []


def test_moves_refuse_unknown_faces_and_users_inactive_erased_and_other_collections(world: World) -> None:
    rng = np.random.default_rng(29)
    x, inactive, being_erased = new_user(world, "X"), new_user(world, "I"), new_user(world, "E")
    face_id = face_of(world, enrolled_for(world, x, rng))
    with pytest.raises(UnknownFace):
        world.corrections.move(10**12, x)
    with pytest.raises(UnknownUser):
        world.corrections.move(face_id, 10**12)
    world.main.update_user(inactive, email=None, full_name=None, is_active=False)
    with pytest.raises(UnknownUser):
        world.corrections.move(face_id, inactive)
    assert world.main.begin_user_erasure(being_erased) == []  # tombstoned, its erasure not finished
    with pytest.raises(UnknownUser):
        world.corrections.move(face_id, being_erased)
    with pytest.raises(CollectionMismatch):
        world.corrections.move(face_id, user_in_new_collection(world))
    with pytest.raises(UnknownFace):  # a caller that does not see the face's collection
        world.corrections.move(face_id, x, visible={10**6})
    unserved = world.main.add_face(
        NewFace(x, uuid.uuid4().hex, "originals/u", "crops/u/0.png", (1, 2, 3, 4), 0.9, 1, PACK)
    )
    with pytest.raises(UnknownFace):  # an enroll in flight: not a face anyone was shown
        world.corrections.move(unserved, inactive)
    assert faces_per_user(world, x, inactive, being_erased) == [2, 0, 0]


# -- erasures by the API announce what they remove ---------------------------------------------------------------


def test_an_erasure_publishes_its_removals_so_index_processes_drop_the_codes_at_once(world: World) -> None:
    rng = np.random.default_rng(30)
    a, b = new_user(world, "A"), new_user(world, "B")
    lone = face_of(world, enrolled_for(world, a, rng))
    of_b = [face_of(world, enrolled_for(world, b, rng)) for _ in range(2)]
    kept = face_of(world, enrolled_for(world, a, rng))
    assert {lone, kept, *of_b} <= codes_in_memory(world)

    assert world.erasure.erase_face(lone)
    assert world.erasure.erase_user(b)

    # Dropped when the feed is applied, before any search ranks them (no search runs here).
    assert codes_in_memory(world) & {lone, *of_b} == set() and kept in codes_in_memory(world)
    removals = [e for e in feed_entries(world) if e.change is Change.REMOVE]
    assert [(e.pack, e.face_ids) for e in removals] == [(EVERY_PACK, [lone]), (EVERY_PACK, sorted(of_b))]
