"""Waiting for a started API to answer, shared by the tests that run processes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx


def wait_until_answers(
    url: str,
    *,
    timeout: float = 90,
    process: subprocess.Popen[bytes] | None = None,
    describe: Callable[[], str] = lambda: "",
) -> None:
    """Until ``url`` answers 200; fails at once if ``process`` exits, with ``describe()`` (its log tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before {url} answered:\n{describe()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s:\n{describe()}")
