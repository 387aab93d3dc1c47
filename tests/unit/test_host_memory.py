"""A training process keeps the large blocks it frees, so the next step's tensors do not fault every page in again."""

import subprocess
import sys

import pytest

# In a child process: the test session may have trained already, which changes its own allocator.
FAULTS = """
import resource
import torch
from pipeline.train.host_memory import keep_freed_blocks

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(16 << 20)  # 64 MiB, written whole and freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

mapped = faults()
keep_freed_blocks()
# The heap grows until its freed blocks, joined, hold one block with torch's alignment: one to three rounds.
print(mapped, [faults() for _ in range(8)][-1])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_large_freed_block_is_reused_without_faulting_its_pages_in_again():
    mapped, kept = map(
        int, subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True).stdout.split()
    )
    assert mapped >= 5 * 32  # each block mapped afresh: at least a fault per 2 MiB page of it (4 KiB pages: 16384)
    assert kept * 10 < mapped
