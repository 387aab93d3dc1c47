import json

import pytest
import torch

from pipeline.activations.arrays import Columns, coder_arrays
from pipeline.activations.loading import ActivationData
from pipeline.coders.registry import AnyCoderConfig, build, load, training_flops
from pipeline.config import TrackingConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.evaluate.metrics import evaluate
from pipeline.evaluate.splice import Splicer
from pipeline.store.activation_store import ActivationStore
from pipeline.sweep.arm import run_arms
from pipeline.sweep.configs import arm_config
from pipeline.sweep.plan import plan
from pipeline.sweep.spec import SweepSpec, load_spec
from pipeline.train.arm_run import ArmRun, ArmSpec
from pipeline.train.stack import build_stacks
from pipeline.train.trainer import train_grid, train_run

from conftest import compose, harvest_in_process, tiny_overrides

CPU = torch.device("cpu")
LAYERS = [0, 1, 2]
HOOKS = [f"{site}.{layer}" for layer in LAYERS for site in ("mlp_in", "mlp_out")]
DISABLED = TrackingConfig(mode="disabled")
TRANSCODER = {"hook": "mlp_in.1", "target_hook": "mlp_out.1"}
CLT = {"layers": LAYERS}


pytestmark = pytest.mark.usefixtures("one_thread")


def _clt(n_layers=3, per_layer=4, d=8, seed=0, **fields):
    torch.manual_seed(seed)
    return build(AnyCoderConfig(kind="clt", n_features=n_layers * per_layer, **fields), d, n_layers)


def _transcoder(n=16, d=8, seed=0, **fields):
    torch.manual_seed(seed)
    return build(AnyCoderConfig(kind="transcoder", n_features=n, **fields), d)


# --- the coders -------------------------------------------------------------------------------


def test_flops_per_token_is_the_hand_count():
    d, n = 384, 1536
    # Transcoder: encoder 2dN + decoder 2dN forward, backward twice the forward; the skip adds 2d^2 forward.
    assert _transcoder(n, d).flops_per_token() == 3 * (2 * d * n + 2 * d * n) == 12 * d * n
    assert _transcoder(n, d, skip_connection=True).flops_per_token() == 12 * d * n + 3 * 2 * d * d
    # CLT over 3 layers of 4 features, d = 8: encoders 2*8*12 = 192; decoders from layer 0 to 3 layers,
    # from 1 to 2, from 2 to 1: 2*8*4*(3+2+1) = 384; skips 3 * 2*8*8 = 384; times 3 for the backward.
    assert _clt().flops_per_token() == 3 * (192 + 384)
    assert _clt(skip_connection=True).flops_per_token() == 3 * (192 + 384 + 384)
    # Every matrix weight is one multiply-add (2 FLOPs) per token forward.
    coder = _clt(n_layers=4, per_layer=5, d=6, skip_connection=True)
    weights = coder.w_enc.numel() + sum(w.numel() for w in coder.w_dec) + coder.w_skip.numel()
    assert coder.flops_per_token() == 3 * 2 * weights
    assert (
        training_flops(AnyCoderConfig(kind="clt", n_features=20, skip_connection=True), 6, n_layers=4)
        == coder.flops_per_token()
    )
    clt, jumprelu = (AnyCoderConfig(kind=kind, n_features=n) for kind in ("clt", "jumprelu"))
    assert training_flops(clt, d, n_layers=1) == training_flops(jumprelu, d)


@pytest.mark.parametrize("kind", ["transcoder", "clt"])
def test_save_and_load_round_trip_through_safetensors(tmp_path, kind):
    coder = _clt(skip_connection=True, preact_coefficient=0.5) if kind == "clt" else _transcoder(skip_connection=True)
    with torch.no_grad():
        coder.w_skip.normal_()  # zero at init: make it count
    coder.save(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["coder.safetensors", "config.json"]
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["kind"] == kind and config["skip_connection"] is True
    assert config.get("n_layers") == (3 if kind == "clt" else None)  # a transcoder always has one layer
    loaded = load(tmp_path / "c")
    assert type(loaded) is type(coder) and loaded.config() == coder.config()
    assert all(torch.equal(a, b) for a, b in zip(coder.state_dict().values(), loaded.state_dict().values()))
    x = torch.randn(5, 3, 8) if kind == "clt" else torch.randn(5, 8)
    assert torch.equal(loaded(x), coder(x))


def test_a_clt_decoder_from_layer_l_writes_only_to_layers_at_or_after_l():
    # A threshold below the initial pre-activations, so the features fire and their decoders show.
    coder = _clt(n_layers=4, per_layer=3, d=5, skip_connection=True, init_threshold=0.001)
    with torch.no_grad():
        coder.w_skip.normal_()
    # Structurally: the decoder of layer s has one block per target layer s..L-1 and nothing else.
    assert [tuple(w.shape) for w in coder.w_dec] == [(4 - s, 5, 3) for s in range(4)]
    assert coder.n_features == sum(w.shape[-1] for w in coder.w_dec) == 12
    # Functionally: changing layer s's input moves the outputs of layers >= s only.
    x = torch.randn(64, 4, 5)
    base = coder(x)
    for s in range(4):
        moved = x.clone()
        moved[:, s] += torch.randn(64, 5)
        out = coder(moved)
        assert torch.equal(out[:, :s], base[:, :s])
        assert all(not torch.allclose(out[:, t], base[:, t]) for t in range(s, 4))


def test_the_tanh_penalty_uses_the_norm_of_the_concatenated_decoder_vectors():
    coder = _clt(n_layers=3, per_layer=4, d=8, tanh_scale=2.0, l1_coefficient=0.5, init_threshold=0.01)
    x, y = torch.randn(10, 3, 8), torch.randn(10, 3, 8)
    parts, f = coder.loss(x, 1.0, target=y)
    f = f.view(10, 3, 4)
    concatenated = torch.stack(
        [torch.cat([coder.w_dec[s][t - s] for t in range(s, 3)], dim=0).norm(dim=0) for s in range(3)]
    )  # [layer, feature]: the norm of the feature's decoder vectors to every later layer, stacked end to end
    expected = torch.tanh(2.0 * f * concatenated).sum((1, 2)).mean()
    torch.testing.assert_close(parts["sparsity"], expected)
    own_block_only = torch.stack([coder.w_dec[s][0].norm(dim=0) for s in range(3)])
    assert not torch.allclose(parts["sparsity"], torch.tanh(2.0 * f * own_block_only).sum((1, 2)).mean())
    y_hat = coder(x)
    torch.testing.assert_close(parts["reconstruction"], (y - y_hat).pow(2).sum((1, 2)).mean())
    torch.testing.assert_close(parts["loss"], parts["reconstruction"] + 0.5 * expected)


def test_transcoder_loss_parts_match_a_hand_computation():
    coder = _transcoder(n=16, d=8, skip_connection=True, preact_coefficient=0.3, l1_coefficient=2.0)
    with torch.no_grad():
        coder.w_skip.normal_()
    x, y = torch.randn(6, 8), torch.randn(6, 8)
    parts, f = coder.loss(x, sparsity_scale=0.5, target=y)
    w_enc, b_enc, theta = coder.w_enc[0], coder.b_enc[0], coder.threshold[0]
    w_dec, b_dec, w_skip = coder.w_dec[0][0], coder.b_dec[0], coder.w_skip[0]
    pre = x @ w_enc.t() + b_enc
    f_ref = pre * (pre > theta)
    y_hat = f_ref @ w_dec.t() + b_dec + x @ w_skip.t()
    norm = w_dec.norm(dim=0)
    torch.testing.assert_close(f, f_ref)
    torch.testing.assert_close(parts["reconstruction"], (y - y_hat).pow(2).sum(1).mean())
    sparsity = torch.tanh(4.0 * f_ref * norm).sum(1).mean()
    preact = (torch.relu(theta - pre) * norm).sum(1).mean()
    torch.testing.assert_close(parts["sparsity"], sparsity)
    torch.testing.assert_close(parts["preact"], preact)
    torch.testing.assert_close(parts["loss"], parts["reconstruction"] + 0.5 * 2.0 * sparsity + 0.3 * preact)


class _LossOf(torch.nn.Module):
    """The coder's training loss as a module's forward, to call it with other parameter values."""

    def __init__(self, coder):
        super().__init__()
        self.coder = coder

    def forward(self, x, y):
        return self.coder.loss(x, target=y)[0]["loss"]


def test_gradients_are_those_of_the_loss_and_thresholds_learn_straight_through():
    coder = _clt(n_layers=2, per_layer=3, d=4, skip_connection=True, preact_coefficient=0.2).double()
    x, y = torch.randn(7, 2, 4, dtype=torch.float64), torch.randn(7, 2, 4, dtype=torch.float64)
    names = ["w_enc", "b_enc", "w_dec.0", "w_dec.1", "b_dec", "w_skip"]
    params = dict(coder.named_parameters())
    wrapped = _LossOf(coder)

    def loss(*tensors):
        return torch.func.functional_call(wrapped, {f"coder.{n}": t for n, t in zip(names, tensors)}, (x, y))

    # Away from the thresholds JumpReLU is linear in its input: the weights get the exact gradient of the loss.
    assert torch.autograd.gradcheck(loss, tuple(params[n].detach().clone().requires_grad_() for n in names))

    # The thresholds learn through the rectangle kernel only: a nonzero gradient exactly where some
    # pre-activation lies within half a bandwidth of the threshold (no pre-activation loss here,
    # which would reach every threshold directly).
    coder = _clt(n_layers=2, per_layer=3, d=4, jumprelu_bandwidth=0.05, init_threshold=0.001).double()
    coder.loss(x, target=y)[0]["loss"].backward()
    pre = torch.einsum("bld,lnd->bln", x, coder.w_enc) + coder.b_enc
    near = ((pre - coder.threshold).abs() < 0.025).any(0)
    grad = coder.log_threshold.grad
    assert near.any() and (~near).any()
    assert (grad[~near] == 0).all() and (grad[near] != 0).all()


def test_the_l0_penalty_holds_each_concatenated_decoder_vector_at_its_initial_norm():
    coder = _clt(jumprelu_penalty="l0", init_decoder_norm=0.3)
    torch.testing.assert_close(coder.decoder_norms(), torch.full((3, 4), 0.3))
    with torch.no_grad():
        for w in coder.w_dec:
            w.mul_(torch.rand(w.shape[-1]) + 0.5)
    coder.after_step()
    torch.testing.assert_close(coder.decoder_norms(), torch.full((3, 4), 0.3))


def test_kinds_and_the_arrays_they_read_must_agree():
    with pytest.raises(ConfigError, match="train.target_hook: a transcoder needs the array it predicts"):
        coder_arrays("transcoder", "mlp_in.1", TrainConfig())
    with pytest.raises(ConfigError, match="train.layers: a clt needs the layers it spans"):
        coder_arrays("clt", "mlp_in.1", TrainConfig())
    with pytest.raises(ConfigError, match="train.target_hook: a relu coder does not use it"):
        coder_arrays("relu", "mlp_in.1", TrainConfig(**TRANSCODER))
    with pytest.raises(ConfigError, match="train.layers: expected distinct layer numbers"):
        coder_arrays("clt", "", TrainConfig(layers=[2, 1]))
    arrays = coder_arrays("clt", "", TrainConfig(layers=[1, 2]))
    assert (arrays.inputs, arrays.targets, arrays.layered) == (
        ("mlp_in.1", "mlp_in.2"),
        ("mlp_out.1", "mlp_out.2"),
        True,
    )
    with pytest.raises(
        ConfigError, match=r"train.target_hook: the training data holds \['mlp_in.1'\], not 'mlp_out.1'"
    ):
        Columns(coder_arrays("transcoder", "mlp_in.1", TrainConfig(**TRANSCODER)), ("mlp_in.1",), 32)
    with pytest.raises(ConfigError, match="coder.n_features: a clt over 3 layers .* multiple of 3, got 10"):
        build(AnyCoderConfig(kind="clt", n_features=10), 8, n_layers=3)
    with pytest.raises(ConfigError, match="train.layers: only a clt or a plt spans several layers"):
        build(AnyCoderConfig(kind="transcoder", n_features=10), 8, n_layers=3)


def test_sweep_files_name_what_a_transcoder_or_clt_reads(tmp_path):
    def spec_file(**fields):
        path = tmp_path / "s.yaml"
        path.write_text(json.dumps({"budgets": [1e9], "n_features": [96], "lrs": [1e-3], **fields}))
        return str(path)

    with pytest.raises(ConfigError, match="target_hook should say what a transcoder predicts"):
        load_spec(spec_file(kind="transcoder", hook="mlp_in.1"))
    with pytest.raises(ConfigError, match="layers should say what a clt predicts"):
        load_spec(spec_file(kind="clt"))
    with pytest.raises(ConfigError, match="layers is not used by kind relu"):
        load_spec(spec_file(kind="relu", layers=[0]))
    with pytest.raises(ConfigError, match="skip_connection is only for kinds transcoder, clt"):
        load_spec(spec_file(kind="topk", sparsity=[8], skip_connection=True))
    for name in ("transcoder", "clt"):  # the packaged examples
        assert load_spec(name).kind == name


def test_clt_arms_are_planned_with_their_layers():
    spec = SweepSpec(
        kind="clt", budgets=[1e10], expansion=[1, 2], lrs=[1e-3], layers=[0, 1, 2], batch_size=100, skip_connection=True
    )
    arms = plan(spec, d_in=64, train_rows=10**6)
    assert [a.n_features for a in arms] == [3 * 64, 3 * 128]  # expansion is per layer
    for arm in arms:
        fpt = 3 * (3 + 3) * 64 * arm.n_features + 6 * 3 * 64**2
        assert arm.steps == int(1e10 // fpt) // 100 and arm.flops == arm.tokens * fpt
        assert (arm.layers, arm.skip_connection, arm.target_hook) == ((0, 1, 2), True, "")
    with pytest.raises(ConfigError, match="100 features do not split evenly over 3 layers"):
        plan(SweepSpec(kind="clt", budgets=[1e10], n_features=[100], lrs=[1e-3], layers=[0, 1, 2]), 64, 10**6)


# --- on a real store --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relu_store(relu_gpt2, tmp_path_factory) -> ActivationStore:
    """Every layer's MLP input and output of a tiny ReLU GPT-2, harvested in this process."""
    out = tmp_path_factory.mktemp("transcoders")
    return harvest_in_process(relu_gpt2, out, HOOKS, **{"harvest.n_tokens": 2400, "harvest.contexts_per_shard": 40})


def _train_cfg(arrays: dict, **fields) -> TrainConfig:
    return TrainConfig(**{"tokens": 100 * 64, "batch_size": 64, "lr": 1e-2, "eval_tokens": 256, **arrays, **fields})


def _data(store, cfg: TrainConfig) -> ActivationData:
    return ActivationData(store, cfg.hook, cfg, CPU)


@pytest.mark.parametrize("kind, arrays, n", [("transcoder", TRANSCODER, 64), ("clt", CLT, 96)])
def test_each_kind_trains_end_to_end_from_a_harvested_store(relu_store, tmp_path, kind, arrays, n):
    cfg = _train_cfg(arrays)
    data = _data(relu_store, cfg)
    splicer = Splicer(relu_store, n_contexts=4, device=CPU)
    coder_cfg = AnyCoderConfig(kind=kind, n_features=n, l1_coefficient=0.1)
    metrics = train_run(coder_cfg, cfg, data, tmp_path / "run", DISABLED, "r", "g", splicer)
    assert metrics["fvu"] < 0.4 and 0 < metrics["l0"] < n
    n_layers = len(arrays.get("layers", [1]))
    assert metrics["flops"] == 6400 * 3 * (n_layers + 3) * 32 * n  # 12 d N for the transcoder
    assert metrics["kl"] > 0 and metrics["spliced_loss"] == pytest.approx(metrics["clean_loss"] + metrics["delta_loss"])
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["fvu"] == metrics["fvu"]
    if kind == "clt":
        layers = metrics["layers"]
        assert len(layers) == 3 and sum(layer["l0"] for layer in layers) == pytest.approx(metrics["l0"])
        assert all(0 <= layer["fvu"] < 0.6 and 0 <= layer["dead_fraction"] <= 1 for layer in layers)
        assert (
            sum(layer["density_histogram"]["never_fired"] for layer in layers)
            == metrics["density_histogram"]["never_fired"]
        )
    else:
        assert "layers" not in metrics
    columns = Columns(coder_arrays(kind, cfg.hook, cfg), data.arrays, data.d)
    loaded = load(tmp_path / "run" / "coder").eval()
    assert evaluate(loaded, [data.eval], split=columns)["fvu"] == pytest.approx(metrics["fvu"])
    x, target = columns(data.eval)
    assert x.shape == target["target"].shape == ((256, 3, 32) if kind == "clt" else (256, 32))


def _mlp_weights(model, layer: int) -> tuple[torch.Tensor, ...]:
    mlp = model.transformer.h[layer].mlp  # GPT-2's Conv1D: y = x @ weight + bias
    return mlp.c_fc.weight.t(), mlp.c_fc.bias, mlp.c_proj.weight.t(), mlp.c_proj.bias


@torch.no_grad()
def _exact(coder, splicer: Splicer, scales: dict, layers: list[int]):
    """Sets `coder` to the model's own MLPs: encoder = c_fc, decoder = c_proj, no cross-layer writes, a ~0 threshold."""
    coder.log_threshold.fill_(-80.0)
    for w in coder.w_dec:
        w.zero_()
    for i, layer in enumerate(layers):
        w_fc, b_fc, w_proj, b_proj = _mlp_weights(splicer.model, layer)
        s_in, s_out = scales[f"mlp_in.{layer}"], scales[f"mlp_out.{layer}"]
        coder.w_enc[i] = w_fc / s_in
        coder.b_enc[i] = b_fc
        coder.w_dec[i][0] = s_out * w_proj
        coder.b_dec[i] = s_out * b_proj
    return coder


def test_exact_transcoders_and_clts_splice_in_with_no_change_and_inexact_ones_do_not(relu_store):
    splicer = Splicer(relu_store, n_contexts=4, device=CPU)
    for kind, arrays_cfg, layers in (("transcoder", TRANSCODER, [1]), ("clt", CLT, LAYERS)):
        cfg = _train_cfg(arrays_cfg)
        data, arrays = _data(relu_store, cfg), coder_arrays(kind, cfg.hook, cfg)
        coder = build(AnyCoderConfig(kind=kind, n_features=128 * len(layers)), 32, len(arrays.inputs)).eval()
        _exact(coder, splicer, data.scales, layers)
        # Against the store's float16 rows: only their rounding (relative 2^-11) remains.
        assert evaluate(coder, data.eval_batches(64), split=Columns(arrays, data.arrays, data.d))["fvu"] < 1e-6
        exact = splicer(coder, arrays, data.scales)
        assert exact["delta_loss"] == pytest.approx(0.0, abs=1e-5) and exact["kl"] == pytest.approx(0.0, abs=1e-7)
        with torch.no_grad():
            coder.w_dec[0][-1].normal_()  # the transcoder's decoder; the clt's layer 0 -> layer 2 block
        assert splicer(coder, arrays, data.scales)["kl"] > 1e-4


def test_a_fused_grid_mixing_kinds_equals_each_arm_trained_alone(relu_store, tmp_path):
    arms = [
        (
            AnyCoderConfig(kind="transcoder", n_features=64, skip_connection=True),
            _train_cfg(TRANSCODER, tokens=30 * 64),
        ),
        (AnyCoderConfig(n_features=48), _train_cfg({"hook": "mlp_in.1"}, tokens=20 * 64, lr=3e-3)),
        (AnyCoderConfig(kind="clt", n_features=48), _train_cfg(CLT, tokens=25 * 64)),
    ]
    grid_data = _data(relu_store, _train_cfg(CLT))  # holds every layer's MLP input and output
    specs = [ArmSpec(c, t, tmp_path / f"grid{i}", f"a{i}", "g") for i, (c, t) in enumerate(arms)]
    fused = train_grid(specs, grid_data, DISABLED)
    for i, (coder_cfg, train_cfg) in enumerate(arms):
        alone = train_run(
            coder_cfg, train_cfg, _data(relu_store, train_cfg), tmp_path / f"alone{i}", DISABLED, f"a{i}", "g"
        )
        assert (
            fused[i]["loss"] == alone["loss"]
            and fused[i]["fvu"] == alone["fvu"]
            and fused[i]["steps"] == alone["steps"]
        )
        a, b = load(tmp_path / f"grid{i}" / "coder"), load(tmp_path / f"alone{i}" / "coder")
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_stacked_transcoder_and_clt_arms_each_equal_the_arm_trained_alone(relu_store, tmp_path):
    from dataclasses import replace

    transcoder = AnyCoderConfig(kind="transcoder", n_features=64, skip_connection=True, l1_coefficient=0.1)
    clt = AnyCoderConfig(kind="clt", n_features=48, jumprelu_penalty="l0", preact_coefficient=0.1, l1_coefficient=0.1)
    train = _train_cfg(CLT, tokens=25 * 64, lambda_warmup_frac=0.2, log_every=4)
    arms = [
        (transcoder, replace(train, **TRANSCODER, layers=[])),
        (replace(transcoder, l1_coefficient=0.3), replace(train, **TRANSCODER, layers=[], lr=3e-3)),
        (clt, train),
        (replace(clt, l1_coefficient=0.03), replace(train, lr=3e-3)),
    ]
    grid_data = _data(relu_store, train)
    specs = [ArmSpec(c, t, tmp_path / f"grid{i}", f"a{i}", "g") for i, (c, t) in enumerate(arms)]
    runs = {i: ArmRun(spec, grid_data, DISABLED) for i, spec in enumerate(specs)}
    assert sorted(sorted(s.arms) for s in build_stacks(runs) if s.coder is not None) == [[0, 1], [2, 3]]
    fused = train_grid(specs, grid_data, DISABLED)
    for i, (coder_cfg, train_cfg) in enumerate(arms):
        alone = train_run(
            coder_cfg, train_cfg, _data(relu_store, train_cfg), tmp_path / f"alone{i}", DISABLED, f"a{i}", "g"
        )
        assert fused[i]["steps"] == alone["steps"] == 25
        assert fused[i]["loss"] == pytest.approx(alone["loss"], rel=1e-4) and fused[i]["fvu"] == pytest.approx(
            alone["fvu"], rel=1e-4
        )
        a, b = load(tmp_path / f"grid{i}" / "coder").state_dict(), load(tmp_path / f"alone{i}" / "coder").state_dict()
        for name, tensor in a.items():
            torch.testing.assert_close(tensor, b[name], rtol=1e-4, atol=1e-5)


def test_a_transcoder_sweep_pack_trains_and_records_its_arms(relu_store, relu_gpt2):
    out_dir = relu_store.path.parent
    cfg = compose(*tiny_overrides(relu_gpt2, out_dir, **{"train.eval_tokens": 256, "train.splice_contexts": 2}))
    spec = SweepSpec(
        kind="transcoder", budgets=[2e8], n_features=[32, 64], lrs=[1e-2], sparsity=[0.1], batch_size=64, **TRANSCODER
    )
    arms = plan(spec, d_in=32, train_rows=2400 - 256)
    configs = [arm_config(cfg, a) for a in arms]
    rows = run_arms(
        arms, configs, "mlp_in.0", out_dir / "sweep", "g"
    )  # the stage's default hook is overridden by the spec's
    assert [r["status"] for r in rows] == ["done", "done"], rows[0]["error"]
    assert all(r["fvu"] < 0.6 and r["kl"] > 0 and r["flops"] <= 2e8 for r in rows)
    config = load(out_dir / "sweep" / "runs" / arms[0].run_id / "coder").config()
    assert config["kind"] == "transcoder" and config["l1_coefficient"] == 0.1
