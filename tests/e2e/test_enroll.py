"""``fecapass enroll`` on the whole product (the API and every stage as processes, real models): the people and
faces it makes, a second run that makes nothing new, an interrupted run (its task cancelled, or the process killed)
that resumes to one face per photo, and the photo without a face in the failures CSV. Counted in PostgreSQL and in
Redis's job hashes.

Each test enrolls copies of ../shared/faces/basic made unique by a trailer after the image data (decoders ignore
it): a photo's content hash is its face's external id, and the session's other tests enroll the originals."""

from __future__ import annotations

import asyncio
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import psycopg
import pytest
import redis

from common.apikeys import hash_key
from ingest_api.idempotency import KEY_PREFIX as IDEMPOTENCY_PREFIX
from operations import cli
from operations.enroll_plan import from_folders, synthetic_email
from operations.enroll_run import EnrollOptions, Outcome, PhotoResult, RunResult, enroll_photos
from tests.e2e.conftest import RunningPipeline
from tests.shared_data import BASIC, labels

pytestmark = pytest.mark.e2e

NO_FACE = "aligned112_tom_hanks.png"  # an aligned crop: the detector finds no face in it


def unique_copy(source: Path, target: Path, tag: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes() + f"fecapass-test-{tag}".encode())
    return target


def single_photos() -> dict[str, list[str]]:
    """identity -> its photos with one face."""
    photos: dict[str, list[str]] = {}
    for row in labels():
        if row.role == "single":
            photos.setdefault(row.identity, []).append(row.file)
    return photos


def faces_per_user(pipeline: RunningPipeline, emails: list[str]) -> dict[str, int]:
    """email -> served faces, for the users with these emails."""
    with psycopg.connect(pipeline.env["FECAPASS_MAIN_DB_DSN"]) as conn:
        rows = conn.execute(
            "SELECT u.email, count(f.id) FILTER (WHERE f.served) FROM users u LEFT JOIN faces f ON f.user_id = u.id"
            " WHERE u.email = ANY(%s) GROUP BY u.email",
            (emails,),
        ).fetchall()
    return {str(email): int(count) for email, count in rows}


def enroll_jobs(pipeline: RunningPipeline, emails: list[str]) -> set[str]:
    """The ids of every enroll job in Redis for the users with these emails."""
    with psycopg.connect(pipeline.env["FECAPASS_MAIN_DB_DSN"]) as conn:
        ids = {str(row[0]) for row in conn.execute("SELECT id FROM users WHERE email = ANY(%s)", (emails,))}
    client = redis.Redis.from_url(pipeline.env["FECAPASS_REDIS_URL"])
    try:
        jobs = set()
        for key in client.scan_iter("fecapass:job:*"):
            kind, user_id = client.hmget(key, "kind", "user_id")
            if kind == b"enroll" and user_id is not None and user_id.decode() in ids:
                jobs.add(key.decode().rsplit(":", 1)[1])
        return jobs
    finally:
        client.close()


def summary_count(text: str, row: str) -> int:
    """A row of the summary table (rich draws its cells between vertical bars)."""
    found = re.search(rf"\S {re.escape(row)} +\S +(\d+) \S", text)
    assert found, f"no row {row!r} in:\n{text}"
    return int(found.group(1))


def test_bulk_enroll_creates_people_and_faces_and_a_second_run_enrolls_nothing_new(
    pipeline: RunningPipeline, own_collection: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = uuid.uuid4().hex[:8]
    photos = single_photos()
    manifest = tmp_path / "people.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "external_id", "name"])
        for identity, files in photos.items():
            for name in files:
                unique_copy(BASIC / name, tmp_path / "photos" / name, tag)
                writer.writerow([name, f"{identity}-{tag}", identity.replace("_", " ").title()])
        unique_copy(BASIC / NO_FACE, tmp_path / "photos" / NO_FACE, tag)
        writer.writerow([NO_FACE, f"tom_hanks-{tag}", "Tom Hanks"])
    emails = [synthetic_email(f"{identity}-{tag}") for identity in [*photos, "tom_hanks"]]
    failures = tmp_path / "failures.csv"
    argv = ["enroll", str(tmp_path / "photos"), "--manifest", str(manifest), "--api", pipeline.base_url]
    argv += ["--collection", own_collection]
    argv += ["--api-key", pipeline.keys["write"], "--failures", str(failures), "--window", "8"]

    with pytest.raises(SystemExit) as first:
        cli.main(argv)
    assert first.value.code == 1  # the photo without a face failed
    expected = {synthetic_email(f"{i}-{tag}"): len(files) for i, files in photos.items()}
    assert faces_per_user(pipeline, emails) == {**expected, synthetic_email(f"tom_hanks-{tag}"): 0}
    jobs = enroll_jobs(pipeline, emails)
    assert len(jobs) == sum(expected.values()) + 1
    with failures.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(Path(r["file"]).name, r["person"], r["code"]) for r in rows] == [(NO_FACE, f"tom_hanks-{tag}", "no_face")]
    assert rows[0]["message"]
    shown = capsys.readouterr().out
    assert summary_count(shown, "enrolled") == sum(expected.values())
    assert summary_count(shown, "failed: no_face") == 1

    with pytest.raises(SystemExit) as second:
        cli.main(argv)
    assert second.value.code == 1  # the same photo fails the same way: from its first job, not tried again
    assert faces_per_user(pipeline, emails) == {**expected, synthetic_email(f"tom_hanks-{tag}"): 0}
    assert enroll_jobs(pipeline, emails) == jobs  # no new job in Redis
    shown = capsys.readouterr().out
    assert summary_count(shown, "enrolled") == 0
    assert summary_count(shown, "skipped (done before)") == sum(expected.values())


def test_an_interrupted_run_resumes_to_exactly_one_face_per_photo(
    pipeline: RunningPipeline, own_collection: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    folder = tmp_path / "photos"
    for identity, files in single_photos().items():
        for name in files:
            unique_copy(BASIC / name, folder / f"{identity}-{tag}" / name, tag)
    photos = from_folders(folder)
    per_person = Counter(photo.person.label for photo in photos)
    emails = [synthetic_email(person) for person in per_person]
    options = EnrollOptions(pipeline.base_url, pipeline.keys["write"], collection=own_collection, window=4, timeout=90)
    stop_after = 3
    seen: list[PhotoResult] = []

    async def interrupted() -> None:
        enough = asyncio.Event()

        def on_result(result: PhotoResult) -> None:
            seen.append(result)
            if len(seen) >= stop_after:
                enough.set()

        run = asyncio.ensure_future(enroll_photos(photos, options, on_result))
        await enough.wait()
        run.cancel()  # as Ctrl-C would: the requests in flight are dropped, their jobs may run on
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(interrupted())
    assert stop_after <= len(seen) < len(photos)
    assert all(r.outcome is Outcome.ENROLLED for r in seen), seen

    resumed: RunResult = asyncio.run(enroll_photos(photos, options, lambda _: None))
    assert resumed.failures == []
    assert resumed.count(Outcome.SKIPPED) >= stop_after  # done before the interruption
    assert resumed.count(Outcome.ENROLLED) + resumed.count(Outcome.SKIPPED) == len(photos)
    assert faces_per_user(pipeline, emails) == {synthetic_email(p): n for p, n in per_person.items()}
    assert len(enroll_jobs(pipeline, emails)) == len(photos)  # one job per photo, not one per attempt
    shutil.rmtree(folder)


def serves_face_external_ids(pipeline: RunningPipeline) -> bool:
    with pipeline.client() as client:
        operation = client.get("/openapi.json").json()["paths"]["/v1/users/{user_id}/faces"]["post"]
    return any(parameter["name"] == "external_id" for parameter in operation.get("parameters", []))


def test_after_the_idempotency_ttl_a_photo_enrolled_before_is_skipped_by_its_face_external_id(
    pipeline: RunningPipeline, own_collection: str, tmp_path: Path
) -> None:
    if not serves_face_external_ids(pipeline):
        pytest.skip("this API takes no face external_id on enroll (collections, issue 18, not merged here)")
    tag = uuid.uuid4().hex[:8]
    person = f"obama-{tag}"
    for name in single_photos()["obama"]:
        unique_copy(BASIC / name, tmp_path / "photos" / person / name, tag)
    photos = from_folders(tmp_path / "photos")
    options = EnrollOptions(pipeline.base_url, pipeline.keys["write"], collection=own_collection, timeout=90)
    first = asyncio.run(enroll_photos(photos, options, lambda _: None))
    assert first.count(Outcome.ENROLLED) == len(photos)
    jobs = enroll_jobs(pipeline, [synthetic_email(person)])
    # The API has forgotten every Idempotency-Key of this API key, as it does after its TTL.
    client = redis.Redis.from_url(pipeline.env["FECAPASS_REDIS_URL"])
    try:
        prefix = f"{IDEMPOTENCY_PREFIX}{hash_key(pipeline.keys['write']).hex()[:32]}:"
        forgotten = list(client.scan_iter(f"{prefix}*"))
        assert forgotten
        client.delete(*forgotten)
    finally:
        client.close()

    again = asyncio.run(enroll_photos(photos, options, lambda _: None))
    assert [(r.outcome, r.code) for r in again.results] == [(Outcome.SKIPPED, "face_external_id_taken")] * len(photos)
    assert enroll_jobs(pipeline, [synthetic_email(person)]) == jobs  # refused at the door: no new job
    assert faces_per_user(pipeline, [synthetic_email(person)]) == {synthetic_email(person): len(photos)}


def test_a_killed_command_resumes_to_exactly_one_face_per_photo(
    pipeline: RunningPipeline, own_collection: str, tmp_path: Path
) -> None:
    """`fecapass enroll` as a process, killed (SIGKILL: no clean-up of any kind) after its first photos."""
    tag = uuid.uuid4().hex[:8]
    folder = tmp_path / "photos"
    for identity in ("obama", "alex_lacamoire", "kit_harington"):
        for name in single_photos()[identity]:
            unique_copy(BASIC / name, folder / f"{identity}-{tag}" / name, tag)
    photos = from_folders(folder)
    emails = [synthetic_email(person) for person in {p.person.label for p in photos}]
    command = [sys.executable, "-m", "operations.cli", "enroll", str(folder), "--api", pipeline.base_url]
    command += ["--collection", own_collection]
    command += ["--window", "2", "--failures", str(tmp_path / "failures.csv")]
    env = {**os.environ, "FECAPASS_API_KEY": pipeline.keys["write"], "FECAPASS_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        # Not a terminal: a line per photo (each tenth of 10), "1/10 (10 %): enrolled 1, ..."
        for line in process.stdout:
            if re.match(r"2/\d+ ", line):
                break
        process.kill()
    finally:
        process.wait(30)
    assert process.returncode == -signal.SIGKILL

    with pytest.raises(SystemExit) as resumed:
        argv = ["enroll", str(folder), "--api", pipeline.base_url, "--api-key", pipeline.keys["write"]]
        cli.main([*argv, "--collection", own_collection])
    assert resumed.value.code == 0
    per_person = Counter(synthetic_email(p.person.label) for p in photos)
    assert faces_per_user(pipeline, emails) == dict(per_person)
    assert len(enroll_jobs(pipeline, emails)) == len(photos)
