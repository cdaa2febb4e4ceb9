"""Moving an installation to another model pack without re-uploads: embed every enrolled face again from its
stored original photo (`fecapass reindex`), then switch searches over (`fecapass models activate`).

The work is ordinary pipeline jobs (kind ``reindex``), so it runs on the stage processes that are already
there, alongside live traffic. Progress is the database itself: a face is done once it has an embedding of the
new pack, so an interrupted re-index resumes where it stopped when run again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis

from common import status
from common.db.main_repository import FaceRow, MainRepository
from common.db.vector_repository import VectorRepository
from common.packs import PackInfo
from schemas.jobs import JobState, job_key
from schemas.results import ReindexResult, parse_stored_result
from schemas.streams import JobKind, JobMessage
from schemas.text import decode_fields

PAGE = 500
# Jobs in flight at once: enough to keep every stage busy, few enough not to crowd out live searches.
DEFAULT_WINDOW = 64
POLL_SECONDS = 0.25


class ActivationRefused(RuntimeError):
    pass


def missing_faces(main: MainRepository, vectors: VectorRepository, pack: str) -> Iterator[FaceRow]:
    """Enrolled faces without an embedding of ``pack``, in id order."""
    after = 0
    while rows := main.faces_after(after, PAGE):
        have = vectors.embedded_among(pack, [row.id for row in rows])
        yield from (row for row in rows if row.id not in have)
        after = rows[-1].id


def reindex_job_id(pack: str, face_id: int) -> str:
    # Deterministic: a job submitted again after a crash is the same job, and its crop the same object.
    return f"reindex-{pack}-{face_id}"


@dataclass
class Progress:
    total: int  # faces enrolled when the run started
    already: int  # of which already had an embedding of the pack
    embedded: int = 0
    skipped: int = 0  # erased while the run went on
    failed: Counter[str] = field(default_factory=Counter)  # error code -> faces
    failures: list[str] = field(default_factory=list)  # a few "face N: message" lines to show
    in_flight: int = 0

    @property
    def finished(self) -> int:
        return self.already + self.embedded + self.skipped + sum(self.failed.values())


class Reindexer:
    def __init__(
        self,
        main: MainRepository,
        vectors: VectorRepository,
        client: redis.Redis,
        pack: PackInfo,
        job_ttl_seconds: int,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.main = main
        self.vectors = vectors
        self.client = client
        self.pack = pack
        self.job_ttl_seconds = job_ttl_seconds
        self.window = window

    def run(self, report: Callable[[Progress], None], max_faces: int | None = None) -> Progress:
        total = self.main.total_faces()
        progress = Progress(total=total, already=min(total, self.vectors.count(self.pack.name)))
        in_flight: dict[str, int] = {}  # job id -> face id
        for submitted, face in enumerate(missing_faces(self.main, self.vectors, self.pack.name)):
            if max_faces is not None and submitted >= max_faces:
                break
            while len(in_flight) >= self.window:
                self._collect(in_flight, progress, report)
            in_flight[self._submit(face)] = face.id
            progress.in_flight = len(in_flight)
            report(progress)
        while in_flight:
            self._collect(in_flight, progress, report)
        return progress

    def _submit(self, face: FaceRow) -> str:
        job_id = reindex_job_id(self.pack.name, face.id)
        x1, y1, x2, y2 = (float(v) for v in face.box)
        message = JobMessage(
            job_id=job_id,
            kind=JobKind.REINDEX,
            image_key=face.image_key,
            user_id=face.user_id,
            pack=self.pack.name,
            face_id=face.id,
            face_box=(x1, y1, x2, y2),
        )
        with self.client.pipeline(transaction=True) as pipe:
            status.queue_job(pipe, message, self.job_ttl_seconds)
            pipe.execute()
        return job_id

    def _collect(self, in_flight: dict[str, int], progress: Progress, report: Callable[[Progress], None]) -> None:
        """Wait a little, then count the jobs that ended."""
        time.sleep(POLL_SECONDS)
        job_ids = list(in_flight)
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(job_key(job_id))
            rows = pipe.execute()
        for job_id, raw in zip(job_ids, rows, strict=True):
            job = decode_fields(raw)
            state = job.get("state")
            if state == JobState.DONE.value:
                result = parse_stored_result(JobKind.REINDEX, job["result"])
                if isinstance(result, ReindexResult) and result.skipped:
                    progress.skipped += 1
                else:
                    progress.embedded += 1
            elif state == JobState.FAILED.value:
                reason = job.get("error_code", "unknown")
                progress.failed[reason] += 1
                if len(progress.failures) < 20:
                    progress.failures.append(f"face {in_flight[job_id]}: {reason}: {job.get('error_message', '')}")
            elif state is None:
                # The status hash is gone (expired or flushed): the face stays missing and a later run retries it.
                progress.failed["status_lost"] += 1
            else:
                continue
            del in_flight[job_id]
        progress.in_flight = len(in_flight)
        report(progress)


def count_missing(main: MainRepository, vectors: VectorRepository, pack: str) -> tuple[int, list[int]]:
    """How many faces lack an embedding of ``pack``, and the first few of them."""
    count, examples = 0, list[int]()
    for face in missing_faces(main, vectors, pack):
        count += 1
        if len(examples) < 10:
            examples.append(face.id)
    return count, examples


def activate(main: MainRepository, vectors: VectorRepository, pack: PackInfo, allow_missing: bool = False) -> int:
    """Make ``pack`` the one searched; refused while enrolled faces have no embedding of it. Returns how many
    faces were left without one (only with ``allow_missing``)."""
    missing, examples = count_missing(main, vectors, pack.name)
    if missing and not allow_missing:
        raise ActivationRefused(
            f"{missing} of {main.total_faces()} enrolled faces have no {pack.name} embedding yet (face ids"
            f" {', '.join(map(str, examples))}{', ...' if missing > len(examples) else ''}): run"
            f" `fecapass reindex --pack {pack.name}` first. --allow-missing switches anyway; those faces are then"
            " not found until they are re-indexed"
        )
    vectors.ensure_pack(pack.name, pack.dim)
    vectors.activate(pack.name)
    return missing
