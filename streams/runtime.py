"""Process-level tuning shared by every long-running idstream command."""

from __future__ import annotations

import gc

__all__ = ["YOUNG_GC_THRESHOLD", "tune_gc"]

#: Allocations between young-generation collections. CPython's default (700) makes a
#: process holding millions of long-lived graph objects spend ~40% of its time in the
#: collector (benchmarks/bench_core.py measures both); idstream creates few reference
#: cycles, so collecting less often costs little memory.
YOUNG_GC_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect young objects less often, and exempt everything loaded so far from collection."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)
