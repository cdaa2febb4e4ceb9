"""A stage loop's heartbeat: a file the loop itself rewrites on every turn (the arq pattern).

A liveness check must fail when the loop is stuck (a handler hung, a deadlock), which an HTTP endpoint served by
another thread cannot show: the metrics thread answers while the loop is dead. The file's modification time is
the beat; its content (stage, consumer, pid, time) is for a person looking at it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


def write_heartbeat(path: Path, info: dict[str, str | int | float]) -> None:
    """Replace the file atomically, so a reader never sees half of it."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(info))
    os.replace(partial, path)


def heartbeat_problem(path: Path, max_age_seconds: float, *, now: float | None = None) -> str | None:
    """Why the loop writing ``path`` is not alive, or None when its last beat is recent enough."""
    try:
        beaten = path.stat().st_mtime
    except FileNotFoundError:
        return f"no heartbeat at {path} (the stage loop has not started)"
    except OSError as exc:
        return f"heartbeat {path} unreadable: {exc}"
    age = (time.time() if now is None else now) - beaten
    if age > max_age_seconds:
        return f"heartbeat {path} is {age:.0f} s old (max {max_age_seconds:g} s): the stage loop is stuck"
    return None


@dataclass
class Heartbeat:
    """Beats at most every ``interval_seconds``: the loop calls ``beat`` as often as it likes."""

    path: Path
    stage: str
    consumer: str
    interval_seconds: float = 1.0
    _last: float = field(default=float("-inf"), init=False)
    _failing: bool = field(default=False, init=False)

    def beat(self) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_seconds:
            return
        self._last = now
        info: dict[str, str | int | float] = {
            "stage": self.stage,
            "consumer": self.consumer,
            "pid": os.getpid(),
            "time": time.time(),
        }
        try:
            write_heartbeat(self.path, info)
        except OSError as exc:
            # Not worth stopping the stage over; the healthcheck then reports the stale file.
            if not self._failing:
                log.warning("stage.heartbeat_unwritable", path=str(self.path), error=str(exc))
            self._failing = True
        else:
            self._failing = False
