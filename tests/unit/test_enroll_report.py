"""What ``fecapass enroll`` shows and writes: the bar on a terminal, plain lines elsewhere, the summary table, the
failures CSV, and how a job's answer counts (enrolled, skipped, failed). No server: results made here."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pytest
from fecapass_client import AsyncFecapass, Job, JobError
from rich.console import Console

from operations.enroll import BarReporter, LineReporter, reporter, summary_line, summary_table, write_failures
from operations.enroll_plan import Person, Photo
from operations.enroll_run import Enroller, EnrollOptions, Outcome, PhotoResult, RunResult

ADA = Person("ada@example.com", None)
E7 = Person(None, "E-7", "Grace")


def result(name: str, outcome: Outcome, code: str = "", message: str = "", person: Person = ADA) -> PhotoResult:
    return PhotoResult(Photo(Path("photos") / name, person), outcome, code, message)


def console(*, terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120, color_system=None), out


def test_a_terminal_gets_the_bar_and_anything_else_plain_lines() -> None:
    assert isinstance(reporter(console(terminal=True)[0], 3), BarReporter)
    assert isinstance(reporter(console(terminal=False)[0], 3), LineReporter)


def test_the_bar_shows_done_of_all_the_outcomes_the_rate_and_the_time_left() -> None:
    screen, out = console(terminal=True)
    with reporter(screen, 4) as report:
        report(result("a.jpg", Outcome.ENROLLED))
        time.sleep(0.05)  # rich's rate needs two samples apart in time
        report(result("b.jpg", Outcome.FAILED, "no_face"))
    text = out.getvalue()
    assert "enrolled 1 skipped 0 failed 1" in text
    assert "2/4" in text and "photos/s" in text and "ETA" in text


def test_plain_lines_report_each_tenth_and_every_failure() -> None:
    screen, out = console(terminal=False)
    with reporter(screen, 20) as report:
        for number in range(20):
            failed = number == 4
            report(result(f"{number}.jpg", Outcome.FAILED if failed else Outcome.ENROLLED, "no_face" if failed else ""))
    lines = out.getvalue().splitlines()
    assert lines[0] == "enrolling 20 photos"
    progress = [line for line in lines[1:] if not line.startswith("failed:")]
    assert [line.split(" ")[0] for line in progress] == [f"{n}/20" for n in range(2, 21, 2)]
    assert progress[-1].startswith("20/20 (100 %): enrolled 19, skipped 0, failed 1;")
    assert "photos/s, ETA" in progress[-1]
    assert [line for line in lines if line.startswith("failed:")] == [f"failed: {Path('photos/4.jpg')}: no_face"]


def test_the_summary_counts_each_outcome_and_each_failure_code() -> None:
    run = RunResult(
        [
            result("a.jpg", Outcome.ENROLLED),
            result("b.jpg", Outcome.SKIPPED, "face_external_id_taken"),
            result("c.jpg", Outcome.FAILED, "no_face"),
            result("d.jpg", Outcome.FAILED, "no_face"),
            result("e.jpg", Outcome.FAILED, "job_timeout"),
        ],
        people_found=1,
        people_created=2,
        seconds=2.5,
    )
    screen, out = console(terminal=False)
    screen.print(summary_table(run))
    rows = {tuple(cell.strip() for cell in line.strip("│┃ ").split("│")) for line in out.getvalue().splitlines()}
    assert {("enrolled", "1"), ("skipped (done before)", "1"), ("failed: job_timeout", "1")} <= rows
    assert {("failed: no_face", "2"), ("total", "5")} <= rows
    assert summary_line(run) == "people: 1 found, 2 created; 2.5 s, 2.0 photos/s"


def test_the_failures_csv_lists_file_person_code_and_message(tmp_path: Path) -> None:
    path = tmp_path / "failures.csv"
    failures = [
        result("c.jpg", Outcome.FAILED, "no_face", "no face found, with a comma", person=E7),
        result("a.jpg", Outcome.FAILED, "job_timeout", 'job j1 still "queued"'),
    ]
    write_failures(path, failures)
    with path.open(newline="") as handle:
        assert list(csv.reader(handle)) == [  # by file, whatever order the photos finished in
            ["file", "person", "code", "message"],
            [str(Path("photos/a.jpg")), "ada@example.com", "job_timeout", 'job j1 still "queued"'],
            [str(Path("photos/c.jpg")), "E-7", "no_face", "no face found, with a comma"],
        ]
    write_failures(path, [])  # a run with no failure leaves no stale rows of the last one
    assert path.read_text().splitlines() == ["file,person,code,message"]


def job(state: str, *, age: float, code: str | None = None) -> Job:
    """A finished job created ``age`` seconds ago (negative: after now)."""
    error = JobError(code, "why") if code else None
    created_at = time.time() - age
    return Job("j1", "enroll", state, "http://api/v1/jobs/j1", "originals/j1", created_at=created_at, error=error)


@pytest.mark.parametrize(
    ("state", "age", "code", "outcome"),
    [
        ("done", -1, None, Outcome.ENROLLED),
        ("done", 3600, None, Outcome.SKIPPED),  # the Idempotency-Key gave back an earlier run's job
        ("failed", -1, "no_face", Outcome.FAILED),
        ("failed", -1, "face_external_id_taken", Outcome.SKIPPED),  # two runs raced; the other enrolled it
    ],
    ids=["done now", "done before this run", "no face", "enrolled by another"],
)
def test_how_a_finished_job_counts(state: str, age: float, code: str | None, outcome: Outcome) -> None:
    client = AsyncFecapass("http://127.0.0.1:9", "key")  # never called: only the answer is judged
    enroller = Enroller(client, EnrollOptions("http://127.0.0.1:9", "key"), lambda _: None)
    judged = enroller._judged(Photo(Path("a.jpg"), ADA), job(state, age=age, code=code))
    assert (judged.outcome, judged.code) == (outcome, code or "")
