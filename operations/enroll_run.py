"""The work of ``fecapass enroll``: every photo enrolled through the API with the Python client, ``window`` requests
in flight, missing people created, and a second run skipping what is done.

Resuming rests on two keys derived from the photo (operations/enroll_plan.py), not on a local state file, so that
it holds on any machine, after a lost working folder, and for two runs at once:
- the face's external id is the photo's content hash: the API refuses a photo already enrolled in the collection
  with 409 ``face_external_id_taken``, which is reported as skipped, however long ago it was enrolled;
- the request's Idempotency-Key is derived from (collection, user id, content hash): a re-run within the API's
  idempotency TTL gets the first run's job back, so a photo whose job was still running when the first run was
  interrupted is waited for, not enrolled twice.
A photo whose job failed (``no_face``) fails again on the next run from the same remembered job (never retried in a
loop); after the TTL it is tried once more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from fecapass_client import AsyncFecapass, Conflict, FecapassError, Job, JobTimeout, User

from operations.enroll_plan import (
    Person,
    Photo,
    content_digest,
    create_idempotency_key,
    enroll_idempotency_key,
    face_external_id,
)

# The job error codes and API answers that mean "this photo is enrolled already".
ALREADY_ENROLLED = frozenset({"face_external_id_taken"})
# How long one enroll request holds its connection for the job's result (the API caps it further with
# FECAPASS_MAX_WAIT_SECONDS); a job not finished by then is polled until --timeout.
REQUEST_WAIT_SECONDS = 30.0
# Beyond the wait: time to send the photo and for the answer to come back.
TRANSFER_SECONDS = 30.0
DEFAULT_COLLECTION = "default"


@dataclass(frozen=True)
class EnrollOptions:
    api_url: str
    api_key: str
    collection: str | None = None  # None: the API's default collection (and nothing sent for it)
    window: int = 16  # requests in flight
    timeout: float = 120.0  # seconds a photo's job may take, from its upload to its result


class Outcome(StrEnum):
    ENROLLED = "enrolled"
    SKIPPED = "skipped"  # enrolled before (this or an earlier run), or a copy of a photo enrolled in this run
    FAILED = "failed"


@dataclass(frozen=True)
class PhotoResult:
    photo: Photo
    outcome: Outcome
    code: str = ""
    message: str = ""


@dataclass
class RunResult:
    results: list[PhotoResult] = field(default_factory=list)
    people_found: int = 0
    people_created: int = 0
    seconds: float = 0.0

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)

    @property
    def failures(self) -> list[PhotoResult]:
        return [r for r in self.results if r.outcome is Outcome.FAILED]


OnResult = Callable[[PhotoResult], None]


class People:
    """Each person looked up once per run (by external id, else by email) and created when missing; photos of one
    person wait on the same lookup."""

    def __init__(self, client: AsyncFecapass, collection: str | None) -> None:
        self._client = client
        self._collection = collection
        self._users: dict[str, asyncio.Task[User]] = {}
        self.found = 0
        self.created = 0

    async def user_id(self, person: Person) -> int:
        task = self._users.get(person.key)
        if task is None:
            task = self._users[person.key] = asyncio.ensure_future(self._resolve(person))
        # Shielded: one photo cancelled (the run interrupted) must not cancel the lookup its person's others share.
        return (await asyncio.shield(task)).id

    async def _resolve(self, person: Person) -> User:
        user = await self._lookup(person)
        if user is not None:
            self.found += 1
            return user
        try:
            user = await self._client.create_user(
                person.email_to_create(),
                person.full_name,
                collection=self._collection,
                external_id=person.external_id,
                idempotency_key=create_idempotency_key(self._collection or DEFAULT_COLLECTION, person),
            )
        except Conflict:
            # Another run created them between the lookup and the create: theirs is the person.
            user = await self._lookup(person)
            if user is None:
                raise
            self.found += 1
            return user
        self.created += 1
        return user

    async def _lookup(self, person: Person) -> User | None:
        # Exact matches only (the client checks them again against a server that does not filter).
        if person.external_id:
            users = await self._client.list_users(collection=self._collection, external_id=person.external_id)
        else:
            users = await self._client.list_users(collection=self._collection, email=person.email)
        return users[0] if users else None


class Enroller:
    def __init__(self, client: AsyncFecapass, options: EnrollOptions, on_result: OnResult) -> None:
        self._client = client
        self._options = options
        self._on_result = on_result
        self._collection_name = options.collection or DEFAULT_COLLECTION
        self.people = People(client, options.collection)
        # content hash -> the first photo with it in this run, and its result once known
        self._first: dict[str, tuple[Photo, asyncio.Future[PhotoResult]]] = {}
        self.results: list[PhotoResult] = []
        self._started_at = time.time()

    async def run(self, photos: Iterable[Photo]) -> list[PhotoResult]:
        """``window`` workers take the next photo as each finishes its last: never more requests in flight."""
        pending = iter(photos)

        async def worker() -> None:
            for photo in pending:  # one iterator shared by every worker: each photo is taken once
                result = await self._one(photo)
                self.results.append(result)
                self._on_result(result)

        await asyncio.gather(*(worker() for _ in range(max(1, self._options.window))))
        return self.results

    async def _one(self, photo: Photo) -> PhotoResult:
        try:
            data, digest = await asyncio.to_thread(_read, photo)
        except OSError as exc:
            return PhotoResult(photo, Outcome.FAILED, "unreadable_file", str(exc))
        if digest in self._first:
            return await self._copy(photo, *self._first[digest])
        outcome: asyncio.Future[PhotoResult] = asyncio.get_running_loop().create_future()
        self._first[digest] = (photo, outcome)
        try:
            result = await self._enrolled(photo, data, digest)
            outcome.set_result(result)
        finally:
            if not outcome.done():  # interrupted: its copies must not wait for ever
                outcome.cancel()
        return result

    async def _copy(self, photo: Photo, first: Photo, outcome: asyncio.Future[PhotoResult]) -> PhotoResult:
        """A second file with the same content: it shares the first's fate (a photo is one face)."""
        if first.person.key != photo.person.key:
            return PhotoResult(
                photo,
                Outcome.FAILED,
                "photo_of_two_people",
                f"the same photo as {first.path}, listed for {first.person.label}: a photo is enrolled for one person",
            )
        # Shielded: this copy cancelled (the run interrupted) leaves the first's result to the first.
        result = await asyncio.shield(outcome)
        if result.outcome is Outcome.FAILED:
            return PhotoResult(photo, Outcome.FAILED, result.code, f"the same photo as {first.path}: {result.message}")
        return PhotoResult(photo, Outcome.SKIPPED, "duplicate", f"the same photo as {first.path}")

    async def _enrolled(self, photo: Photo, data: bytes, digest: str) -> PhotoResult:
        try:
            user_id = await self.people.user_id(photo.person)
            job = await self._enroll(photo, user_id, data, digest)
        except JobTimeout as exc:
            return PhotoResult(photo, Outcome.FAILED, exc.code, exc.detail)
        except FecapassError as exc:
            if exc.code in ALREADY_ENROLLED:
                return PhotoResult(photo, Outcome.SKIPPED, exc.code, "enrolled by an earlier run")
            return PhotoResult(photo, Outcome.FAILED, exc.code or f"http_{exc.status}", _message(exc))
        return self._judged(photo, job)

    async def _enroll(self, photo: Photo, user_id: int, data: bytes, digest: str) -> Job:
        started = time.monotonic()
        job = await self._client.enroll(
            user_id,
            data,
            filename=photo.path.name,
            external_id=face_external_id(digest),
            idempotency_key=enroll_idempotency_key(self._collection_name, user_id, digest),
            wait=min(REQUEST_WAIT_SECONDS, self._options.timeout),
        )
        if not job.finished:
            left = self._options.timeout - (time.monotonic() - started)
            job = await self._client.wait_for_job(job.job_id, timeout=max(left, 0.1))
        return job

    def _judged(self, photo: Photo, job: Job) -> PhotoResult:
        if job.done:
            if job.created_at is not None and job.created_at < self._started_at:
                # The Idempotency-Key gave back the job of an earlier run, finished already. (The API's clock
                # against this one: a server behind by seconds counts the first seconds' jobs as skipped; the
                # faces are right either way, only the summary's split is.)
                return PhotoResult(photo, Outcome.SKIPPED, "", "enrolled by an earlier run")
            return PhotoResult(photo, Outcome.ENROLLED)
        error = job.error
        code = error.code if error is not None else "job_failed"
        if code in ALREADY_ENROLLED:
            return PhotoResult(photo, Outcome.SKIPPED, code, "enrolled by an earlier run")
        return PhotoResult(photo, Outcome.FAILED, code, error.message if error is not None else f"job {job.job_id}")


def _read(photo: Photo) -> tuple[bytes, str]:
    data = photo.path.read_bytes()
    return data, content_digest(data)


def _message(exc: FecapassError) -> str:
    return str(exc.detail or exc)


async def enroll_photos(photos: list[Photo], options: EnrollOptions, on_result: OnResult) -> RunResult:
    started = time.perf_counter()
    # The client adds each request's wait to this read timeout.
    async with AsyncFecapass(options.api_url, options.api_key, timeout=TRANSFER_SECONDS) as client:
        enroller = Enroller(client, options, on_result)
        results = await enroller.run(photos)
    return RunResult(results, enroller.people.found, enroller.people.created, time.perf_counter() - started)
