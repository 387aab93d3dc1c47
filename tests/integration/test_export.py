"""Dictionaries trained by the train stage, exported by the `pipeline export` command in a process of its own,
and loaded by SAELens, sparsify and circuit-tracer: their outputs on the store's raw rows are the trained coder's."""

import subprocess
import sys

import pytest
import torch

from pipeline.coders.registry import load
from pipeline.store.verify import read_checked

from integration.test_train import TRAIN_STAGE

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _train(out_dir, *overrides):
    from pipeline.cli import main

    assert main(["train", f"out_dir={out_dir}", *TRAIN_STAGE, *overrides]) == 0
    [run] = (out_dir / "train").iterdir()
    return run


def _export(out_dir, run, fmt: str):
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "export", f"out_dir={out_dir}", f"export.run={run}", f"export.format={fmt}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    folder = out_dir / "export" / fmt / run.name
    assert done.stdout.strip() == f"export {run.name}: {folder}"
    return folder


def _raw(store, name: str) -> torch.Tensor:
    return read_checked(store, name, 0, 256).float()


def test_a_trained_topk_sae_exports_to_saelens_and_sparsify_with_its_reconstruction_unchanged(store, tmp_path):
    (tmp_path / "store.zarr").symlink_to(store.path)
    _check_sae(store, _train(tmp_path, "coder.kind=topk", "coder.k=4"), tmp_path)


@torch.no_grad()
def _check_sae(store, run, tmp_path):
    from sae_lens import SAE
    from sparsify import SparseCoder

    coder, x = load(run / "coder").eval(), _raw(store, "resid_post.0")
    scale = (store.d_model("resid_post.0") / store.attrs["norm_stats"]["resid_post.0"]["mean_sq_norm"]) ** 0.5
    ours = coder.decode(coder.encode(x * scale)) / scale
    sae = SAE.load_from_disk(_export(tmp_path, run, "saelens"))
    torch.testing.assert_close(sae(x), ours, atol=1e-4, rtol=1e-4)
    sparse = SparseCoder.load_from_disk(_export(tmp_path, run, "sparsify"))
    acts, index, _ = sparse.encode(x)
    torch.testing.assert_close(sparse.decode(acts, index), ours, atol=1e-4, rtol=1e-4)


def test_a_trained_transcoder_exports_to_circuit_tracer_and_saelens_with_its_prediction_unchanged(
    paired_store, tmp_path
):
    (tmp_path / "store.zarr").symlink_to(paired_store.path)
    run = _train(tmp_path, "coder=transcoder", "train.hook=mlp_in.0", "train.target_hook=mlp_out.0")
    _check_transcoder(paired_store, run, tmp_path)


@torch.no_grad()
def _check_transcoder(paired_store, run, tmp_path):
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    from sae_lens import SAE

    coder, x = load(run / "coder").eval(), _raw(paired_store, "mlp_in.0")
    stats = paired_store.attrs["norm_stats"]
    s_in, s_out = ((16 / stats[name]["mean_sq_norm"]) ** 0.5 for name in ("mlp_in.0", "mlp_out.0"))
    ours = coder(x * s_in) / s_out
    sae = SAE.load_from_disk(_export(tmp_path, run, "saelens"))
    torch.testing.assert_close(sae(x), ours, atol=1e-4, rtol=1e-4)
    folder = _export(tmp_path, run, "circuit-tracer")
    transcoders = load_transcoder_set(
        {0: str(folder / "layer_0.safetensors")}, "synthetic", "mlp.hook_in", "mlp.hook_out", device=torch.device("cpu")
    )
    layer = transcoders.transcoders[0]
    torch.testing.assert_close(layer.decode(layer.encode(x), x), ours, atol=1e-4, rtol=1e-4)
