"""A stage process keeps freed memory for its next photo (common/allocator.py): counted in page faults of a real
process, as the kernel reports them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from common import allocator
from common import settings as s
from operations import worker
from schemas.streams import Stage

pytestmark = pytest.mark.skipif(allocator._mallopt() is None, reason="glibc's malloc only (musl, macOS: a no-op)")

# A photo's worth of blocks (3 x 15 MiB: a large decode, its resized copy, the network's input part) allocated,
# written and freed again and again, as the detect stage does: the faults of the last rounds, with glibc's defaults
# (which trim the heap's freed top each round) or with the retention a stage process sets.
ROUNDS = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from common.allocator import retain_freed_memory

    applied = retain_freed_memory(int(sys.argv[1]))
    faults = []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [np.ones(15 * 2**20, np.uint8) for _ in range(3)]
        del blocks
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(applied, max(faults[2:]))
    """
)


def _rounds(retain_mb: int) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", ROUNDS, str(retain_mb)], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


def test_freed_blocks_are_reused_without_faulting_their_pages_in_again() -> None:
    applied, faults = _rounds(s.ModelSettings().heap_retain_mb)
    assert applied
    assert faults == 0


def test_zero_leaves_glibcs_defaults_which_fault_the_freed_pages_in_every_round() -> None:
    applied, faults = _rounds(0)
    assert not applied
    # The blocks' pages handed back and zeroed again by the kernel (4 KiB or, with transparent huge pages, 2 MiB a
    # fault: the count differs between machines, not that there are some).
    assert faults > 0


def test_a_stage_process_applies_its_setting_before_it_builds_its_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    class Built(Exception):
        pass

    def handler_factory(stage: Stage) -> object:
        assert calls == [32], "the handler is built after the setting is applied"
        raise Built

    monkeypatch.setenv("FECAPASS_HEAP_RETAIN_MB", "32")
    monkeypatch.setenv("FECAPASS_METRICS_PORT", "0")  # no metrics server in the test process
    monkeypatch.setattr(worker, "retain_freed_memory", calls.append)
    monkeypatch.setattr(worker, "handler_factory", handler_factory)
    with pytest.raises(Built):
        worker.run_worker(Stage.INDEX)
