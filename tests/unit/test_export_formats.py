"""Every kind in every format that holds it: written, loaded with the library's own loader, and encoding and
decoding raw activations as the pipeline's coder does on the same activations (the scales folded in)."""

from pathlib import Path

import pytest
import torch

from pipeline.coders.folding import fold
from pipeline.coders.registry import AnyCoderConfig, build
from pipeline.errors import ConfigError
from pipeline.export.formats import FORMATS
from pipeline.export.runs import Run

D, N = 8, 24
SAE_KINDS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")


def _source(inputs: list[str], targets: list[str], n_layers: int = 3) -> dict:
    scales = {name: 0.5 + 0.7 * i for i, name in enumerate(dict.fromkeys(inputs + targets))}  # distinct, not 1
    return {
        "model": {
            "name": "tiny", "revision": "main", "dtype": "float32", "n_layers": n_layers, "d_model": D,
            "has_lm_head": True,
        },
        "dataset": {"source": "stdlib", "name": "python-stdlib-docs", "split": "train", "seed": 0},
        "context_len": 16, "prepend_bos": True, "bos_dropped": True, "store": "store.zarr",
        "inputs": inputs, "targets": targets, "layers": [int(n.rpartition(".")[2]) for n in inputs], "scales": scales,
    }  # fmt: skip


@torch.no_grad()
def _perturbed(coder):
    """Random weights everywhere (biases, thresholds and skip weights included), so every term is checked."""
    gen = torch.Generator().manual_seed(1)
    for name, p in coder.named_parameters():
        if "log_threshold" in name:
            p.copy_(torch.log(0.05 + 0.3 * torch.rand(p.shape, generator=gen)))
        else:
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    if coder.kind in ("batchtopk", "matryoshka"):
        coder.threshold.fill_(0.2)  # its learned threshold, a buffer
    return coder.eval()


def sae_run(kind: str, hook: str = "resid_post.1") -> Run:
    torch.manual_seed(0)
    cfg = AnyCoderConfig(kind=kind, n_features=N, k=4)
    return Run(_folder(kind), _perturbed(build(cfg, D)), _source([hook], [hook]), {"loss": 1.0}, None)


def transcoder_run(skip: bool, layer: int = 1) -> Run:
    torch.manual_seed(0)
    coder = build(AnyCoderConfig(kind="transcoder", n_features=N, skip_connection=skip), D)
    return Run(_folder("transcoder"), _perturbed(coder), _source([f"mlp_in.{layer}"], [f"mlp_out.{layer}"]), {}, None)


def clt_run(layers: list[int], skip: bool = False) -> Run:
    torch.manual_seed(0)
    coder = build(AnyCoderConfig(kind="clt", n_features=N * len(layers), skip_connection=skip), D, len(layers))
    source = _source([f"mlp_in.{i}" for i in layers], [f"mlp_out.{i}" for i in layers])
    return Run(_folder("clt"), _perturbed(coder), source, {}, None)


def _folder(name: str) -> Path:
    return Path(f"runs/{name}_N{N}")


def _raw(run: Run, rows: int = 64) -> list[torch.Tensor]:
    """Raw activations of each input array, large enough that the scales matter."""
    gen = torch.Generator().manual_seed(2)
    return [3 * torch.randn(rows, D, generator=gen) for _ in run.source["inputs"]]


@torch.no_grad()
def reference(run: Run, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline coder's (features, prediction without its skip share) on raw input `x`, in raw units."""
    scales = run.source["scales"]
    s_in, s_out = scales[run.source["inputs"][0]], scales[run.source["targets"][0]]
    f = run.coder.encode(x * s_in)
    return f, run.coder.decode(f) / s_out


def _written(run: Run, fmt: str, tmp_path):
    folder = tmp_path / fmt
    folder.mkdir()
    FORMATS[fmt].check(run)
    FORMATS[fmt].write(run, fold(run.coder, run.source), folder)
    return folder


@pytest.mark.parametrize("kind", SAE_KINDS)
def test_saelens_loads_every_sae_kind_and_encodes_and_decodes_raw_activations_as_the_pipeline(kind, tmp_path):
    from sae_lens import SAE

    run = sae_run(kind)
    sae = SAE.load_from_disk(_written(run, "saelens", tmp_path))
    [x] = _raw(run)
    f, x_hat = reference(run, x)
    assert sae.cfg.architecture() == {"relu": "standard", "topk": "topk"}.get(kind, "jumprelu")
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post" and sae.cfg.metadata.model_name == "tiny"
    assert 0 < (f > 0).float().mean() < 1  # some features fire and some do not
    torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(f), x_hat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x), x_hat, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("skip", [False, True])
def test_saelens_loads_a_transcoder_with_or_without_its_skip_connection(skip, tmp_path):
    from sae_lens import SAE

    run = transcoder_run(skip)
    sae = SAE.load_from_disk(_written(run, "saelens", tmp_path))
    [x] = _raw(run)
    f, y_hat = reference(run, x)
    assert sae.cfg.architecture() == ("jumprelu_skip_transcoder" if skip else "jumprelu_transcoder")
    assert sae.cfg.metadata.hook_name == "blocks.1.mlp.hook_in"
    assert sae.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"
    torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(f), y_hat, atol=1e-5, rtol=1e-5)
    whole = run.coder(x * run.source["scales"]["mlp_in.1"]) / run.source["scales"]["mlp_out.1"]
    torch.testing.assert_close(sae(x), whole, atol=1e-5, rtol=1e-5)


def test_an_encoders_block_output_is_its_normalised_residual_in_transformer_lens(tmp_path):
    from sae_lens import SAE

    run = sae_run("relu")
    run.source["model"]["has_lm_head"] = False  # a BERT-style encoder: post-LN blocks
    assert SAE.load_from_disk(_written(run, "saelens", tmp_path)).cfg.metadata.hook_name == (
        "blocks.1.hook_normalized_resid_post"
    )


def test_sparsify_loads_a_topk_sae_and_encodes_and_decodes_raw_activations_as_the_pipeline(tmp_path):
    from sparsify import SparseCoder

    run = sae_run("topk")
    sae = SparseCoder.load_from_disk(_written(run, "sparsify", tmp_path))
    [x] = _raw(run)
    f, x_hat = reference(run, x)
    acts, index, _ = sae.encode(x)
    dense = torch.zeros_like(f).scatter_(-1, index, acts)
    torch.testing.assert_close(dense, f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(acts, index), x_hat, atol=1e-5, rtol=1e-5)
    assert (sae.cfg.k, sae.num_latents, sae.d_in) == (4, N, D)


@pytest.mark.parametrize("skip", [False, True])
def test_circuit_tracer_loads_a_transcoder_as_a_set_over_every_model_layer(skip, tmp_path):
    import yaml
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    run = transcoder_run(skip, layer=1)
    folder = _written(run, "circuit-tracer", tmp_path)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert (config["model_kind"], config["feature_input_hook"], config["feature_output_hook"]) == (
        "transcoder_set", "mlp.hook_in", "mlp.hook_out",
    )  # fmt: skip
    paths = {i: str(folder / f"layer_{i}.safetensors") for i in range(3)}
    transcoders = load_transcoder_set(paths, "tiny", config["feature_input_hook"], config["feature_output_hook"],
                                      device=torch.device("cpu"), lazy_encoder=False, lazy_decoder=False)  # fmt: skip
    [x] = _raw(run)
    f, y_hat = reference(run, x)
    layer = transcoders.transcoders[1]
    torch.testing.assert_close(layer.encode(x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.decode(f, x), y_hat + (layer.compute_skip(x) if skip else 0), atol=1e-5,
                               rtol=1e-5)  # fmt: skip
    if skip:
        s_in, s_out = run.source["scales"]["mlp_in.1"], run.source["scales"]["mlp_out.1"]
        torch.testing.assert_close(layer.decode(f, x), run.coder(x * s_in) / s_out, atol=1e-5, rtol=1e-5)
    for other in (0, 2):  # the layers the run does not cover: nothing fires, nothing is written
        assert not transcoders.transcoders[other].encode(x).any()
        assert not transcoders.transcoders[other].decode(torch.zeros(64, N), x).any()


def test_circuit_tracer_loads_a_clt_with_its_layers_placed_among_the_models(tmp_path):
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    run = clt_run([0, 2])  # of a 3-layer model: layer 1 is not covered
    folder = _written(run, "circuit-tracer", tmp_path)
    clt = load_clt(str(folder), "mlp.hook_in", "mlp.hook_out", device=torch.device("cpu"), dtype=torch.float32,
                   lazy_decoder=False)  # fmt: skip
    xs = _raw(run)
    scales = run.source["scales"]
    x_scaled = torch.stack([x * scales[name] for x, name in zip(xs, run.source["inputs"])], 1)
    with torch.no_grad():
        f = run.coder.encode(x_scaled).view(64, 2, N)
        y = run.coder(x_scaled)
    model_inputs = [xs[0], torch.zeros(64, D), xs[1]]
    ours = {0: f[:, 0], 1: torch.zeros(64, N), 2: f[:, 1]}
    for layer in range(3):
        torch.testing.assert_close(clt.encode_layer(model_inputs[layer], layer), ours[layer], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        for t, target in ((0, "mlp_out.0"), (2, "mlp_out.2")):
            pred = clt.b_dec[t] + sum(ours[s] @ clt.W_dec[s][:, t - s] for s in range(t + 1))
            torch.testing.assert_close(pred, y[:, [0, 2].index(t)] / scales[target], atol=1e-5, rtol=1e-5)
        assert not clt.b_dec[1].any() and not clt.W_dec[0][:, 1].any()


@pytest.mark.parametrize(
    "fmt, run, says",
    [
        ("saelens", lambda: clt_run([0, 1]), "SAELens holds one layer's SAE or transcoder, not a clt"),
        ("sparsify", lambda: sae_run("relu"), "sparsify holds top-k SAEs only, not a relu"),
        ("sparsify", lambda: sae_run("batchtopk"), "sparsify holds top-k SAEs only, not a batchtopk"),
        ("sparsify", lambda: sae_run("matryoshka"), "sparsify holds top-k SAEs only, not a matryoshka"),
        ("sparsify", lambda: transcoder_run(False), "sparsify holds top-k SAEs only, not a transcoder"),
        ("circuit-tracer", lambda: sae_run("topk"), "circuit-tracer replaces MLPs with transcoders, not with a topk"),
        ("circuit-tracer", lambda: clt_run([0, 1], skip=True), "reads no skip connection of a cross-layer"),
    ],
)
def test_a_kind_a_format_cannot_hold_is_refused_with_one_line(fmt, run, says):
    with pytest.raises(ConfigError, match=says) as err:
        FORMATS[fmt].check(run())
    assert str(err.value).startswith("export.format: ") and "\n" not in str(err.value)


def test_circuit_tracer_refuses_a_transcoder_that_does_not_replace_an_mlp():
    run = transcoder_run(False)
    run.source |= {"inputs": ["resid_post.1"], "scales": {"resid_post.1": 1.0, "mlp_out.1": 1.0}}
    with pytest.raises(ConfigError, match="predicts mlp_out.L from mlp_in.L; .* predicts mlp_out.1 from resid_post.1"):
        FORMATS["circuit-tracer"].check(run)


def test_the_formats_are_the_configs_choices():
    from pipeline.config.schema import EXPORT_FORMATS

    assert tuple(FORMATS) == EXPORT_FORMATS
