"""Helpers of the tests that run processes: waiting for a started API (the launcher's own wait), and data folders
for servers."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from operations.installation import wait_until_answers

__all__ = ["server_data_dir", "wait_until_answers"]


@contextmanager
def server_data_dir() -> Iterator[Path]:
    """A data folder for LocalServices outside pytest's own: as root PostgreSQL runs as `nobody`, which must pass
    through every parent, and each pytest session that starts on the machine makes /tmp/pytest-of-<user> 0700
    again (initdb then fails with "Permission denied")."""
    folder = Path(tempfile.mkdtemp(prefix="fecapass-servers-"))
    try:
        yield folder / "data"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
