"""The benchmark suite's verdicts: each target is a ratio of two figures of the same run."""

import os
import subprocess
import sys
import time

import pytest
import torch

from pipeline.bench.suite import targets


def _figures(peer_rate: float) -> dict:
    own = {"tool": "pipeline", "n_features": 32768, "batch": 4096}
    return {
        "harvest": {"harvest_of_slower": 0.95, "store_of_plain": 0.5},
        "grid": {"arms": 8, "stacked_speedup": 6.5},
        "steps": [
            {**own, "kind": "relu", "tokens_s": 1e6, "of_peak": 0.61},
            {**own, "kind": "jumprelu", "tokens_s": 1e6, "of_peak": 0.4},
            {**own, "kind": "relu", "batch": 16384, "tokens_s": 1e6, "of_peak": 0.3},  # only batch 4096 has a target
            {**own, "kind": "topk", "tokens_s": 1e6, "of_peak": 0.2},
            {**own, "kind": "topk", "tool": "sparsify", "tokens_s": peer_rate},
            {**own, "kind": "topk", "tool": "sae-lens", "tokens_s": peer_rate / 2},
            {**own, "kind": "batchtopk", "tokens_s": 1e6, "of_peak": 0.2},
            {**own, "kind": "batchtopk", "tool": "sae-lens", "failed": "failed: ImportError: no sae_lens"},
        ],
    }


def test_each_target_is_a_ratio_of_this_run_against_its_threshold():
    found = {t["what"]: (round(t["ratio"], 3), t["target"], t["met"]) for t in targets(_figures(4e5))}
    assert found == {
        "harvest / slower of forward and plain Zarr": (0.95, 0.9, True),
        "store write / plain Zarr write": (0.5, 0.8, False),
        "grid of 8 stacked / one after another": (6.5, 6.0, True),
        "relu N 32768 batch 4096: of matrix peak": (0.61, 0.6, True),
        "jumprelu N 32768 batch 4096: of matrix peak": (0.4, 0.6, False),
        "topk N 32768 batch 4096: over the faster peer": (2.5, 2.0, True),
    }  # batchtopk: no peer ran, so no ratio


def test_a_step_that_failed_misses_its_target():
    figures = _figures(4e5)
    failed = {"tool": "pipeline", "n_features": 32768, "batch": 4096, "failed": "failed: RuntimeError: no kernel"}
    figures["steps"][0] = {**failed, "kind": "relu"}
    figures["steps"][3] = {**failed, "kind": "topk"}
    found = {t["what"]: (t["ratio"], t["met"]) for t in targets(figures)}
    assert found["relu N 32768 batch 4096: of matrix peak"] == (0.0, False)
    assert found["topk N 32768 batch 4096: over the faster peer"] == (0.0, False)


def test_sparse_kinds_are_set_against_the_faster_peer():
    [topk] = [t for t in targets(_figures(6e5)) if t["what"].startswith("topk")]
    assert topk["ratio"] == pytest.approx(1e6 / 6e5) and not topk["met"]


@pytest.mark.parametrize(
    "command, error",
    [
        ("pipeline.bench all --steps 0", "argument --steps: expected a whole number of at least 1, got 0"),
        ("pipeline.bench all --out no/such/b.json", "--out: expected a file in a writable folder, got no/such/b.json"),
        ("pipeline.bench.train --steps x", "argument --steps: expected a whole number of at least 1, got x"),
        ("pipeline.bench.kernels --steps 0", "argument --steps: expected a whole number of at least 1, got 0"),
        ("pipeline.bench.store no-store", "STORE: expected a completely harvested activation store, got no-store"),
    ],
)
def test_a_bad_option_is_refused_in_one_line_before_any_work(tmp_path, command, error):
    module, *options = command.split()
    result = subprocess.run(
        [sys.executable, "-m", module, *options], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    prog = "python -m pipeline.bench" if module == "pipeline.bench" else f"{module.rsplit('.', 1)[1]}.py"
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"{prog}: error: {error}"
    assert not list(tmp_path.iterdir())


def test_the_trace_cost_table_has_every_case_with_its_figures(tmp_path):
    from pipeline.bench.tiny_lm import tiny_gpt2
    from pipeline.bench.trace_cost import COLUMNS, Case, cost_table

    model = str(tiny_gpt2(tmp_path / "model"))
    rows = cost_table([Case(model, "", 8, cap, 256, None, "cpu") for cap in (0, 500, 100)])
    assert [tuple(row) for row in rows] == [COLUMNS] * 3
    assert [row["max_feature_nodes"] for row in rows] == [0, 500, 100] and {row["length"] for row in rows} == {8}
    assert all(row["seconds"] > 0 and row["peak_mb"] > 0 and row["attribute_mb"] >= 0 for row in rows)
    features = [row["feature_nodes"] for row in rows]
    assert features[0] > 500 and features[1:] == [500, 100]  # the exact CLT's active neurons, then each cap
    assert rows[0]["nodes"] > rows[1]["nodes"] > rows[2]["nodes"]
    for row in rows:  # the exact CLT replaces the MLPs: nothing goes through error nodes
        assert row["replacement_score"] == pytest.approx(1.0, abs=1e-3)
        assert 0 <= row["completeness_score"] <= 1 + 1e-6


@pytest.mark.parametrize(
    "option, error",
    [
        (["--lengths", "1"], "--lengths: expected at least 2 tokens (BOS and one more), got 1"),
        (["--run", "no/run"], "--model and --run: expected both (a model and its trained dictionary) or neither"),
    ],
)
def test_a_bad_trace_cost_option_is_refused_in_one_line(tmp_path, option, error):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.bench.circuits", *option], capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].endswith(error), result.stderr
    assert not any(tmp_path.iterdir())


def test_the_harvest_benchmark_times_every_part_on_a_real_store():
    from pipeline.bench import harvest

    overrides = ["model.name=random:gpt2", "harvest.hooks=[resid_pre.1]", "tracking.mode=disabled"]
    shape = ["data.context_len=16", "harvest.batch_contexts=2", "harvest.contexts_per_shard=2"]
    r = harvest.measure(overrides + shape)
    assert r["tokens"] == harvest.SHARDS * 2 * 15  # the BOS position is dropped
    assert r["store"] == "float16/none" and r["batch_tokens"] == 32
    for rate in ("forward_tokens_s", "store_write_tokens_s", "plain_zarr_tokens_s", "harvest_tokens_s"):
        assert r[rate] > 0
    # Both writes moved the same bytes: their GB/s stand in the ratio of their tokens/s.
    assert r["store_write_gb_s"] / r["plain_zarr_gb_s"] == pytest.approx(r["store_of_plain"])
    assert r["store_write_gb_s"] * 1e9 / r["store_write_tokens_s"] == pytest.approx(768 * 2)
    # The flush to disk only adds to the plain write's time.
    assert r["plain_flushed_gb_s"] <= r["plain_zarr_gb_s"]
    assert r["store_write_gb_s"] / r["plain_flushed_gb_s"] == pytest.approx(r["store_of_flushed_plain"])
    slower = min(r["forward_tokens_s"], r["plain_flushed_tokens_s"])
    assert r["harvest_of_slower_flushed"] == pytest.approx(r["harvest_tokens_s"] / slower)


@pytest.mark.parametrize(
    "override, error",
    [
        ("bogus", "bogus: expected an override of the form key=value"),
        ("harvest.hooks=[resid_pre.99]", "harvest.hooks: layer 99 of 'resid_pre.99' is out of range; the model has"),
    ],
)
def test_a_bad_harvest_benchmark_override_is_refused_in_one_line(tmp_path, override, error):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.bench.harvest", "model.name=random:gpt2", override],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith(f"error: {error}") and len(result.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_each_kernel_choice_is_timed_against_its_alternative_on_cpu():
    from pipeline.bench.kernels import kernel_rows

    rows = kernel_rows(1)
    assert [(r["what"], r["chosen"], list(r["ms"])) for r in rows] == [
        ("batchtopk selection over the batch", "sampled threshold", ["sampled threshold", "two rounds", "one round"]),
        ("W_enc gradient through the selection", "sum over entries", ["sum over entries", "dense product"]),
        ("AuxK selection, 5% of the latents dead", "dead columns", ["dead columns", "fixed size"]),
        ("decoder embedding bag, forward and backward", "contiguous copy", ["contiguous copy", "strided columns"]),
    ]  # a GPU takes the two rounds, the dense product and the fixed size
    assert all(ms > 0 for r in rows for ms in r["ms"].values())


def test_the_table_says_which_step_or_kernel_failed(capsys):
    from pipeline.bench.suite import print_table

    rates = ("forward_tokens_s", "store_write_tokens_s", "plain_zarr_tokens_s", "harvest_tokens_s")
    figures = _figures(4e5) | {"device": "cpu", "torch": "2", "matrix_peak_tflops": 1.0, "wall_s": 9.0}
    figures["harvest"] |= {"model": "m", "hooks": ["h"], "store_write_gb_s": 1.0, "plain_zarr_gb_s": 1.0}
    figures["harvest"] |= {"plain_flushed_gb_s": 0.5, "store_of_flushed_plain": 2.0, "harvest_of_slower_flushed": 1.5}
    figures["harvest"] |= dict.fromkeys(rates, 1.0)
    figures["grid"] |= {"n_features": 8, "batch": 4, "stacked_s": 1.0, "unstacked_s": 1.0, "one_after_another_s": 6.5}
    figures["steps"] = [{"tflops": 1.0, "of_peak": 0.1} | r for r in figures["steps"]]
    figures["kernels"] = [
        {"what": "decoder bags, forward and backward", "failed": "failed: CompilationError: no"},
        {"what": "AuxK selection", "ms": {"fixed size": 1.5, "dead columns": 2.0}},
    ]
    figures["targets"] = targets(figures)
    print_table(figures)
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert "kernel: decoder bags, forward and backward failed: CompilationError: no" in lines
    assert "kernel: AuxK selection fixed size 1.5 ms, dead columns 2 ms" in lines
    assert "harvest: plain Zarr write flushed to disk 0.50 GB/s, 2.00 x it for the store" in lines
    assert "harvest: harvest 1 tokens/s, 1.50 x the slower of the forward pass and the flushed plain write" in lines
    assert "step: batchtopk N 32768 batch 4096, sae-lens failed: ImportError: no sae_lens" in lines


def test_the_gpus_triton_row_checks_both_bags_agree_before_timing_them():
    """The kernel row only a GPU with Triton adds, run here by Triton's interpreter at a small shape."""
    pytest.importorskip("triton")
    from pipeline.bench.kernels import triton_against_torch

    torch.manual_seed(0)
    d, n, batch, k = 12, 40, 6, 3
    w_dec = torch.randn(d, n, requires_grad=True)
    ids, weights = torch.randint(0, n, (batch, k)), torch.randn(batch, k, requires_grad=True)
    timed_steps = []

    def bag(columns, bags):
        def step():
            bags(columns()).sum().backward()
            timed_steps.append(w_dec.grad.abs().sum().item())
            w_dec.grad = weights.grad = None

        return step

    ways = triton_against_torch(ids, weights, w_dec, bag)
    assert [name for name, _ in ways] == ["triton", "embedding bag"]
    for _, step in ways:
        step()
    assert timed_steps[0] == pytest.approx(timed_steps[1], rel=1e-5) and timed_steps[0] > 0


def test_the_gpus_selection_row_checks_each_tile_against_torch_topk_before_timing_them():
    """The other kernel row only a GPU with Triton adds, run here by Triton's interpreter on a few rows."""
    pytest.importorskip("triton")
    from pipeline.bench.kernels import row_tops_against_torch

    torch.manual_seed(0)
    pre = torch.randn(2, 50)
    ways = row_tops_against_torch(pre, 5)
    assert [name for name, _ in ways] == ["triton 4 x 1024", "triton 1 x 1024", "torch.topk"]
    chosen = {name: set(select().flatten().tolist()) for name, select in ways[:-1]}
    assert len({frozenset(ids) for ids in chosen.values()}) == 1
    assert ways[-1][1]().values.shape == (2, 5)


SPARSIFY_STEP = """
from pipeline.bench.peers import sparsify_step

sparsify_step("topk", 256, 64)()
print("ok")
"""


def test_sparsifys_step_runs_on_a_cpu_where_triton_is_installed():
    """sparsify takes its Triton decoder whenever Triton imports; the CPU rehearsal of the benchmark must get its
    eager one. In a child process, as the benchmark runs (without Triton's interpreter, which this one has on)."""
    pytest.importorskip("sparsify")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SPARSIFY_DISABLE_TRITON")}
    done = subprocess.run(
        [sys.executable, "-c", SPARSIFY_STEP], env=env | {"CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "ok"


@pytest.mark.parametrize("n, calls", [(2, 3 + 2), (100, 3 + 3)])
def test_a_case_stops_being_timed_after_its_seconds_once_it_has_three_calls(monkeypatch, n, calls):
    from pipeline.bench import timing

    monkeypatch.setattr(timing, "CASE_S", 0.05)
    made = []

    def step():
        made.append(1)
        time.sleep(0.02)

    assert timing.timed(step, n) == pytest.approx(0.02, abs=0.015)
    assert len(made) == calls  # three warm-up calls, then n, or three past which 0.05 s have gone
