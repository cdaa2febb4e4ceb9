"""How much freed memory a stage process keeps for its next photo (glibc's malloc; a no-op elsewhere).

A detect process allocates and frees a photo's worth of pixels for every photo (the decode, the resized copy, the
network's input part). glibc hands large freed blocks back to the system (munmap, or a trim of the heap's top), and
the next photo faults the same pages in again, zeroed by the kernel: ~360 page faults and ~0.7 ms of kernel CPU a
photo of ../shared/faces/basic, of the ~10 ms the stage spends outside its model (BENCHMARKS.md, profile).
Its own heuristics (a threshold that rises with the largest block freed) do not settle for this mix of sizes.
Keeping up to ``retain_mb`` MiB free in the heap, and taking blocks up to half of it from the heap, removes them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache

# malloc.h's mallopt parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses a larger mmap threshold on 64-bit systems (HEAP_MAX_SIZE / 2).
MAX_MMAP_THRESHOLD = 32 * 2**20


@cache
def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's mallopt, or None where the C library is another (musl's is a stub, macOS has none)."""
    # The process's own symbols, the C library's among them: find_library would run ldconfig at every start-up.
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # Windows opens no process handle this way
        return None
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc's own: absent from musl and macOS
        return None
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def retain_freed_memory(retain_mb: int) -> bool:
    """Keep up to ``retain_mb`` MiB of freed memory in this process's heap, and serve blocks up to half of it (at
    most 32 MiB) from there; 0 leaves glibc's defaults. True when glibc took both settings."""
    mallopt = _mallopt()
    if retain_mb <= 0 or mallopt is None:
        return False
    retain = retain_mb * 2**20
    threshold = min(retain // 2, MAX_MMAP_THRESHOLD)
    # Both, in this order: setting either one turns glibc's adaptive thresholds off for the two.
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, retain))
