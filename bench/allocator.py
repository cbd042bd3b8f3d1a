"""The glibc allocator setting the benchmarks can run under (``--fast-malloc``).

By default glibc serves blocks over 32 MB (a batch of activations) with fresh ``mmap`` calls and returns
them on ``free``, so every large tensor is page-faulted in again. On some machines (virtual machines,
sandboxes) that costs more than the arithmetic: on the 2-core development machine a MobileNet-V2 forward
of 64 images takes 1.8 s this way and 0.6 s when freed memory is kept for reuse. Keeping it
(``MALLOC_MMAP_MAX_=0``, ``MALLOC_TRIM_THRESHOLD_`` large) speeds up every library in the process alike,
so benchmarks report ratios under both settings.
"""

from __future__ import annotations

import os
import sys

FAST_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def use_fast_malloc() -> None:
    """Re-run this script with freed memory kept for reuse (glibc reads the setting at start-up)."""
    if all(os.environ.get(key) == value for key, value in FAST_MALLOC.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **FAST_MALLOC})


def malloc_regime() -> str:
    """One line saying which allocator setting this process runs under."""
    if all(os.environ.get(key) == value for key, value in FAST_MALLOC.items()):
        return "glibc malloc keeps freed memory (--fast-malloc: MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=2**40)"
    return "glibc malloc default (large blocks mmapped and returned; --fast-malloc keeps them)"
