"""``fecapass enroll DIR``: bulk enrollment of a folder per person or a CSV manifest (operations/enroll_plan.py) through
the API (operations/enroll_run.py), shown as a progress bar with rate and ETA on a terminal (plain lines elsewhere,
e.g. in a CI log), a summary table at the end and a CSV of the failures. Exit 1 when any photo failed."""

from __future__ import annotations

import asyncio
import csv
import logging
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from operations.enroll_plan import Photo, from_folders, from_manifest
from operations.enroll_run import EnrollOptions, Outcome, PhotoResult, RunResult, enroll_photos

FAILURE_COLUMNS = ("file", "person", "code", "message")
# Plain progress: a line at each tenth of the photos, and at least this often.
PLAIN_EVERY_SECONDS = 10.0


class Reporter(Protocol):
    def __enter__(self) -> Reporter: ...

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None: ...

    def __call__(self, result: PhotoResult) -> None: ...


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- photos/s" if speed is None else f"{speed:.1f} photos/s", style="progress.data.speed")


class BarReporter:
    """A rich progress bar: photos done of all, outcomes so far, photos per second, elapsed and remaining time."""

    def __init__(self, console: Console, total: int) -> None:
        self._counts: Counter[Outcome] = Counter()
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self._task = self._progress.add_task(self._description(), total=total)

    def _description(self) -> str:
        counts = self._counts
        return f"enrolled {counts[Outcome.ENROLLED]} skipped {counts[Outcome.SKIPPED]} failed {counts[Outcome.FAILED]}"

    def __enter__(self) -> BarReporter:
        self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._progress.stop()

    def __call__(self, result: PhotoResult) -> None:
        self._counts[result.outcome] += 1
        self._progress.update(self._task, advance=1, description=self._description())


class LineReporter:
    """No terminal: a line now and then (each tenth of the photos, and every PLAIN_EVERY_SECONDS), with the rate
    and the time left, and a line for each failure."""

    def __init__(self, console: Console, total: int) -> None:
        self._console = console
        self._total = total
        self._counts: Counter[Outcome] = Counter()
        self._started = time.monotonic()
        self._last_line = self._started
        self._step = max(1, total // 10)

    def __enter__(self) -> LineReporter:
        self._console.print(f"enrolling {self._total} photos", highlight=False)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        return None

    def __call__(self, result: PhotoResult) -> None:
        self._counts[result.outcome] += 1
        done = sum(self._counts.values())
        if result.outcome is Outcome.FAILED:
            why = f"{result.code}: {result.message}" if result.message else result.code
            self._console.print(f"failed: {result.photo.path}: {why}", highlight=False)
        now = time.monotonic()
        if done % self._step and done != self._total and now - self._last_line < PLAIN_EVERY_SECONDS:
            return
        self._last_line = now
        rate = done / max(now - self._started, 1e-9)
        left = (self._total - done) / rate if rate else float("inf")
        counts = self._counts
        self._console.print(
            f"{done}/{self._total} ({done * 100 // max(self._total, 1)} %): enrolled {counts[Outcome.ENROLLED]},"
            f" skipped {counts[Outcome.SKIPPED]}, failed {counts[Outcome.FAILED]}; {rate:.1f} photos/s,"
            f" ETA {left:.0f} s",
            highlight=False,
        )


def reporter(console: Console, total: int) -> Reporter:
    return BarReporter(console, total) if console.is_terminal else LineReporter(console, total)


def summary_table(run: RunResult) -> Table:
    table = Table(title="fecapass enroll")
    table.add_column("photos")
    table.add_column("count", justify="right")
    table.add_row("enrolled", str(run.count(Outcome.ENROLLED)))
    table.add_row("skipped (done before)", str(run.count(Outcome.SKIPPED)))
    for code, count in sorted(Counter(r.code for r in run.failures).items()):
        table.add_row(f"failed: {code}", str(count))
    table.add_section()
    table.add_row("total", str(len(run.results)))
    return table


def summary_line(run: RunResult) -> str:
    rate = len(run.results) / run.seconds if run.seconds else 0.0
    return f"people: {run.people_found} found, {run.people_created} created; {run.seconds:.1f} s, {rate:.1f} photos/s"


def write_failures(path: Path, failures: list[PhotoResult]) -> None:
    """Written on every run, with only its header when nothing failed: the file always describes the last run."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(FAILURE_COLUMNS)
        for failure in sorted(failures, key=lambda f: str(f.photo.path)):
            writer.writerow([str(failure.photo.path), failure.photo.person.label, failure.code, failure.message])


def plan(folder: Path, manifest: Path | None) -> list[Photo]:
    """The photos to enroll; raises PlanError (nothing sent) when the input is not usable."""
    return from_manifest(manifest, folder) if manifest is not None else from_folders(folder)


def run_command(photos: list[Photo], options: EnrollOptions, failures: Path, console: Console | None = None) -> int:
    """Enroll, show the summary, write the failures; the exit status: 0, or 1 when any photo failed."""
    console = console or Console()
    # httpx logs every request at INFO: thousands of lines that would tear the bar and bury the summary.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").getEffectiveLevel()))
    with reporter(console, len(photos)) as report:
        run = asyncio.run(enroll_photos(photos, options, report))
    console.print(summary_table(run))
    console.print(summary_line(run), highlight=False)
    write_failures(failures, run.failures)
    if run.failures:
        console.print(f"{len(run.failures)} photos failed: listed in {failures}", highlight=False)
        return 1
    return 0
