"""How the C allocator of a process that trains keeps the large blocks a training step frees, for the next step.

glibc maps every block of more than 32 MiB afresh and unmaps it once freed. A step's [rows x N] tensors are
such blocks on a CPU (33 MiB at 1024 rows and N 8192 in float32), so each step faulted every page of them
in again: 25,000 page faults a relu step there, a third of its time on 2 cores. Torch keeps no cache of
host memory of its own; a GPU's tensors come from its caching allocator and are not concerned.

The heap holds more than a step's peak: torch aligns its blocks, so a freed block alone is a little too small
for the next one of its size until it joins its neighbours. A loop whose peak is three 64 MiB blocks settles,
after two rounds, at 575 MiB of heap; one of three 256 MiB blocks at 1,280 MiB.
"""

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_FROM_HEAP = 1 << 30  # blocks up to this size come from the heap, where freed ones are reused ...
_KEPT = 1 << 31  # ... and up to this much freed memory at its top stays there rather than going back


def keep_freed_blocks() -> None:
    """Has glibc serve blocks of up to 1 GiB from its heap and keep up to 2 GiB freed there (a process's peak
    then stays with it until it exits); where the C library is not glibc, nothing changes."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None) if sys.platform.startswith("linux") else None
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _FROM_HEAP)
        mallopt(_M_TRIM_THRESHOLD, _KEPT)
