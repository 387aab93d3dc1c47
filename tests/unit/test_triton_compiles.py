"""Every Triton kernel of the package compiles for the GPU the benchmarks run on (an H200: CUDA sm_90), which
Triton's interpreter, running the other tests' kernels on CPU, never checks. Compiling needs no GPU: Triton's
wheel carries the compiler down to the CUDA binary. It runs in a child process, since this one interprets."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from pipeline.coders import triton_bag, triton_topk

bag = {"table": "*fp32", "ids": "*i64", "bounds": "*i64", "out": "*fp32", "d": "i32"}
rounds = {"out": "*i64", "rows": "i32", "width": "i32"}
tile = {"K": 32, "CHUNK": triton_topk.CHUNK, "ROWS": triton_topk.ROWS}
kernels = {
    "bag sums": (triton_bag._sum_kernel, bag | {"weights": "*fp32"}, {"BLOCK": triton_bag.BLOCK}),
    "bag dots": (triton_bag._dots_kernel, bag | {"grad": "*fp32"}, {"BLOCK": triton_bag.BLOCK}),
    "first round": (triton_topk._round_kernel, rounds | {"src": "*bf16"}, tile | {"FROM_VALUES": True}),
    "later round": (triton_topk._round_kernel, rounds | {"src": "*i64"}, tile | {"FROM_VALUES": False}),
}
for name, (kernel, signature, constants) in kernels.items():
    signature |= dict.fromkeys(constants, "constexpr")
    compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32))
    print(name, len(compiled.asm["cubin"]))
"""


def test_the_kernels_compile_to_cuda_binaries_for_sm_90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sizes = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in done.stdout.splitlines()}
    assert set(sizes) == {"bag sums", "bag dots", "first round", "later round"}
    assert all(size > 1000 for size in sizes.values()), sizes
