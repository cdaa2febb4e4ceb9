"""``fecapass enroll`` against the real API under uvicorn (PostgreSQL, Valkey, S3), no model and no stage: people
are created once, a second run gets the first run's jobs back instead of new ones, and what the API refuses is
listed in the failures CSV with its code. Counted in PostgreSQL and Redis. The full enroll, with the pipeline, is
in tests/e2e/test_enroll.py."""

from __future__ import annotations

import asyncio
import csv
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from operations import cli
from operations.enroll_plan import from_folders
from operations.enroll_run import EnrollOptions, enroll_photos
from tests.api.conftest import Installation, photo, serving

WAIT_UNTIL_GIVEN_UP = "0.5"  # seconds: no stage runs here, every job stays queued


@pytest.fixture(scope="module")
def api_url(installation: Installation) -> Iterator[str]:
    with serving(installation.config()) as (host, port):
        yield f"http://{host}:{port}"


def people_folder(root: Path, people: dict[str, int], seed: int) -> Path:
    """A folder per person with ``count`` distinct photos each (noise images: the API accepts them; no stage runs)."""
    made = 0
    for person, count in people.items():
        (root / person).mkdir(parents=True)
        for number in range(count):
            (root / person / f"{number}.jpg").write_bytes(photo(seed=seed * 1000 + made))
            made += 1
    return root


def users_named(installation: Installation, emails: list[str], external_ids: list[str]) -> list[tuple[int, str]]:
    with installation.main.pool.connection() as conn:
        rows = conn.execute(
            "SELECT id, email FROM users WHERE lower(email) = ANY(%s) OR email LIKE ANY(%s) ORDER BY id",
            ([e.lower() for e in emails], [f"{x.lower()}.%" for x in external_ids]),
        ).fetchall()
    return [(int(row[0]), str(row[1])) for row in rows]


def enroll_jobs_of(installation: Installation, user_ids: list[int]) -> dict[str, int]:
    """Job id -> user id of every enroll job's status hash in Redis for these users."""
    jobs = {}
    wanted = {str(u) for u in user_ids}
    for key in installation.redis.scan_iter("fecapass:job:*"):
        fields = installation.redis.hmget(key, "kind", "user_id")
        if fields[0] == b"enroll" and fields[1] is not None and fields[1].decode() in wanted:
            jobs[key.decode().rsplit(":", 1)[1]] = int(fields[1])
    return jobs


def run_cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit:
        cli.main(["enroll", *argv])
    return int(exit.value.code or 0)


def read_failures(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_people_are_created_once_and_a_second_run_gets_the_same_jobs_back(
    installation: Installation, api_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = uuid.uuid4().hex[:8]
    email, external_id = f"ada.{tag}@example.com", f"emp-{tag}"
    folder = people_folder(tmp_path / "photos", {email: 2, external_id: 1}, seed=1)
    failures = tmp_path / "failures.csv"
    argv = [str(folder), "--api", api_url, "--api-key", installation.keys["write"], "--failures", str(failures)]
    argv += ["--timeout", WAIT_UNTIL_GIVEN_UP]

    assert run_cli(argv) == 1  # every job still queued after the timeout: failed, and said so
    users = users_named(installation, [email], [external_id])
    assert len(users) == 2
    first_jobs = enroll_jobs_of(installation, [u for u, _ in users])
    assert len(first_jobs) == 3
    listed = read_failures(failures)
    assert sorted(row["person"] for row in listed) == sorted([email, email, external_id])
    assert {row["code"] for row in listed} == {"job_timeout"}
    shown = capsys.readouterr().out
    assert "people: 0 found, 2 created" in shown and "failed: job_timeout" in shown

    assert run_cli(argv) == 1
    assert users_named(installation, [email], [external_id]) == users  # nobody created twice
    assert enroll_jobs_of(installation, [u for u, _ in users]) == first_jobs  # the same jobs, none new


def test_a_person_who_exists_is_found_and_not_created(installation: Installation, api_url: str, tmp_path: Path) -> None:
    email = f"Grace.{uuid.uuid4().hex[:8]}@Example.com"
    existing = installation.main.create_user(email.lower(), "Grace Hopper")
    folder = people_folder(tmp_path / "photos", {email: 1}, seed=2)
    options = EnrollOptions(api_url, installation.keys["write"], timeout=float(WAIT_UNTIL_GIVEN_UP))
    run = asyncio.run(enroll_photos(from_folders(folder), options, lambda _: None))
    assert (run.people_found, run.people_created) == (1, 0)
    assert users_named(installation, [email], []) == [(existing.id, email.lower())]
    assert list(enroll_jobs_of(installation, [existing.id]).values()) == [existing.id]


def test_two_runs_at_once_create_each_person_once(installation: Installation, api_url: str, tmp_path: Path) -> None:
    """Two runs with different keys (so their creates are not one idempotent request): one creates each person,
    the other's create is refused 409 and finds theirs."""
    emails = [f"p{n}.{uuid.uuid4().hex[:8]}@example.com" for n in range(6)]
    folder = people_folder(tmp_path / "photos", dict.fromkeys(emails, 1), seed=3)
    photos = from_folders(folder)
    other_key = installation.main.create_api_key("enroll-race", "write").key

    async def both() -> list[int]:
        runs = await asyncio.gather(
            *(
                enroll_photos(photos, EnrollOptions(api_url, key, timeout=float(WAIT_UNTIL_GIVEN_UP)), lambda _: None)
                for key in (installation.keys["write"], other_key)
            )
        )
        assert all(r.code == "job_timeout" for run in runs for r in run.results), [
            (r.code, r.message) for run in runs for r in run.results
        ]
        return [run.people_created for run in runs]

    created = asyncio.run(both())
    assert sum(created) == len(emails)
    assert len(users_named(installation, emails, [])) == len(emails)


def test_what_the_api_refuses_is_a_failure_with_its_code_and_is_not_retried(
    installation: Installation, api_url: str, tmp_path: Path
) -> None:
    email = f"bad.{uuid.uuid4().hex[:8]}@example.com"
    folder = tmp_path / "photos" / email
    folder.mkdir(parents=True)
    (folder / "not-a-photo.jpg").write_bytes(b"this is text, not a JPEG")
    (folder / "empty.png").write_bytes(b"")
    failures = tmp_path / "out" / "failures.csv"
    failures.parent.mkdir()
    argv = [str(folder.parent), "--api", api_url, "--api-key", installation.keys["write"], "--failures", str(failures)]
    assert run_cli([*argv, "--timeout", WAIT_UNTIL_GIVEN_UP]) == 1
    rows = sorted(read_failures(failures), key=lambda row: row["file"])
    assert [(Path(r["file"]).name, r["person"]) for r in rows] == [("empty.png", email), ("not-a-photo.jpg", email)]
    assert {row["code"] for row in rows} == {"unsupported_media_type"}
    assert all("not a supported image" in row["message"] for row in rows)
    (user_id, _), *_ = users_named(installation, [email], [])
    assert enroll_jobs_of(installation, [user_id]) == {}  # refused at the door: no job


def test_a_read_key_or_no_key_is_refused(installation: Installation, api_url: str, tmp_path: Path) -> None:
    email = f"ro.{uuid.uuid4().hex[:8]}@example.com"
    folder = people_folder(tmp_path / "photos", {email: 1}, seed=4)
    failures = tmp_path / "failures.csv"
    argv = [str(folder), "--api", api_url, "--failures", str(failures)]
    assert run_cli(argv) == 2  # no key at all: a usage error, nothing sent
    assert not failures.exists()
    assert run_cli([*argv, "--api-key", installation.keys["read"]]) == 1
    assert [row["code"] for row in read_failures(failures)] == ["insufficient_scope"]
    assert users_named(installation, [email], []) == []


def test_a_person_whose_email_belongs_to_someone_else_fails_with_the_conflict_and_nobody_is_created(
    installation: Installation, api_url: str, tmp_path: Path
) -> None:
    email = f"taken.{uuid.uuid4().hex[:8]}@example.com"
    existing = installation.main.create_user(email, "Someone Else")  # no external id
    (tmp_path / "a.jpg").write_bytes(photo(seed=5))
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"file,email,external_id,name\na.jpg,{email},E-{uuid.uuid4().hex[:8]},Ada\n")
    failures = tmp_path / "failures.csv"
    argv = [str(tmp_path), "--manifest", str(manifest), "--api", api_url, "--api-key", installation.keys["write"]]
    assert run_cli([*argv, "--failures", str(failures), "--timeout", WAIT_UNTIL_GIVEN_UP]) == 1
    assert [row["code"] for row in read_failures(failures)] == ["email_taken"]
    assert users_named(installation, [email], []) == [(existing.id, email)]
    assert enroll_jobs_of(installation, [existing.id]) == {}  # never enrolled for the person who has the email


def test_copies_of_a_photo_share_its_one_job_and_a_photo_of_two_people_fails(
    installation: Installation, api_url: str, tmp_path: Path
) -> None:
    ada, bob = (f"{name}.{uuid.uuid4().hex[:8]}@example.com" for name in ("ada", "bob"))
    same = photo(seed=7)
    for person, name in ((ada, "a.jpg"), (ada, "a-copy.jpg"), (bob, "not-bob.jpg")):
        (tmp_path / "photos" / person).mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / person / name).write_bytes(same)
    # One at a time, in the plan's order (by folder, then file): the first read of a content is its original.
    options = EnrollOptions(api_url, installation.keys["write"], window=1, timeout=float(WAIT_UNTIL_GIVEN_UP))
    run = asyncio.run(enroll_photos(from_folders(tmp_path / "photos"), options, lambda _: None))
    by_file = {r.photo.path.name: r for r in run.results}
    original = by_file["a-copy.jpg"]
    assert original.code == "job_timeout" and not original.message.startswith("the same photo as")  # no stage runs
    # The copy fails as its original did, from the original's one job; the photo listed for Bob too is refused.
    assert by_file["a.jpg"].code == "job_timeout" and by_file["a.jpg"].message.startswith("the same photo as")
    assert by_file["not-bob.jpg"].code == "photo_of_two_people"
    users = users_named(installation, [ada, bob], [])
    assert len(enroll_jobs_of(installation, [u for u, _ in users])) == 1
