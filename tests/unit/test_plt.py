"""Per-layer transcoders (`coder.kind=plt`): the sum of one transcoder per layer, stacked and swept beside CLTs,
exported as a circuit-tracer transcoder set."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.activations.arrays import Columns, coder_arrays
from pipeline.cli import main
from pipeline.coders.registry import AnyCoderConfig, build, load, training_flops
from pipeline.errors import ConfigError
from pipeline.evaluate.metrics import evaluate
from pipeline.evaluate.splice import Splicer
from pipeline.export.folding import fold
from pipeline.export.formats import FORMATS
from pipeline.export.runs import Run
from pipeline.sweep.arm import run_arms
from pipeline.sweep.configs import arm_config
from pipeline.sweep.plan import plan
from pipeline.sweep.spec import find_sweep, load_spec
from pipeline.sweep.stage import validate
from pipeline.train.arm_run import ArmRun, ArmSpec
from pipeline.train.stack import build_stacks
from pipeline.train.trainer import train_grid, train_run

from conftest import compose, tiny_overrides
from unit import test_transcoders
from unit.test_export_attribution import _attributed_layers
from unit.test_export_formats import _perturbed, _raw, _source, _written
from unit.test_transcoders import CLT, CPU, DISABLED, LAYERS, _data, _exact, _train_cfg

relu_store = test_transcoders.relu_store  # the same module-scoped store of every layer's MLP input and output

pytestmark = pytest.mark.usefixtures("one_thread")


FIELDS = {"skip_connection": True, "preact_coefficient": 0.3, "l1_coefficient": 2.0, "init_threshold": 0.05}


def _plt(n_layers=3, per_layer=4, d=8, **fields):
    torch.manual_seed(0)
    return build(AnyCoderConfig(kind="plt", n_features=n_layers * per_layer, **fields), d, n_layers)


def _transcoders(plt, **fields) -> list:
    """One `transcoder` per layer of `plt`, each holding that layer's weights."""
    state, out = plt.state_dict(), []
    for s in range(plt.n_layers):
        t = build(AnyCoderConfig(kind="transcoder", n_features=plt.per_layer, **fields), plt.d_in).to(plt.w_enc.dtype)
        t.load_state_dict({k: plt.w_dec[s] if k == "w_dec.0" else state[k][s : s + 1] for k in t.state_dict()})
        out.append(t)
    return out


@torch.no_grad()
def _skewed(coder):
    """Random skip weights (zero at init) and thresholds, so every term of the loss is exercised."""
    coder.w_skip.normal_(std=0.3)
    coder.log_threshold.copy_(torch.log(0.02 + 0.2 * torch.rand(coder.log_threshold.shape)))
    return coder


# --- the coder ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("penalty", ["tanh", "l0"])
def test_the_loss_is_a_plain_autograd_computation_of_each_layers_transcoder(penalty):
    plt = _skewed(_plt(**FIELDS, jumprelu_penalty=penalty))
    x, y = torch.randn(9, 3, 8), torch.randn(9, 3, 8)
    parts, f = plt.loss(x, sparsity_scale=0.5, target=y)
    recon = sparsity = preact = 0.0
    for s in range(3):
        w_enc, b_enc, theta = plt.w_enc[s], plt.b_enc[s], plt.threshold[s]
        w_dec, b_dec, w_skip = plt.w_dec[s][0], plt.b_dec[s], plt.w_skip[s]
        pre = x[:, s] @ w_enc.T + b_enc
        f_s = pre * (pre > theta)
        torch.testing.assert_close(f.view(9, 3, 4)[:, s], f_s)
        y_hat = f_s @ w_dec.T + b_dec + x[:, s] @ w_skip.T
        recon = recon + (y[:, s] - y_hat).pow(2).sum(1).mean()
        norm = w_dec.norm(dim=0)  # its one column: no other layer's decoder enters
        sparsity = sparsity + ((pre > theta).float() if penalty == "l0" else torch.tanh(4.0 * f_s * norm)).sum(1).mean()
        preact = preact + (torch.relu(theta - pre) * norm).sum(1).mean()
    torch.testing.assert_close(parts["reconstruction"], recon)
    torch.testing.assert_close(parts["sparsity"], sparsity)
    torch.testing.assert_close(parts["preact"], preact)
    torch.testing.assert_close(parts["loss"], recon + 0.5 * 2.0 * sparsity + 0.3 * preact)


def test_a_plt_is_its_layers_transcoders_forward_loss_and_gradients():
    plt = _skewed(_plt(**FIELDS)).double()
    alone = _transcoders(plt, **FIELDS)
    x, y = torch.randn(11, 3, 8, dtype=torch.float64), torch.randn(11, 3, 8, dtype=torch.float64)
    parts, f = plt.loss(x, 0.5, target=y)
    parts["loss"].backward()
    each = [t.loss(x[:, s], 0.5, target=y[:, s]) for s, t in enumerate(alone)]
    for name, value in parts.items():
        torch.testing.assert_close(value, sum(p[name] for p, _ in each))
    torch.testing.assert_close(f, torch.cat([f_s for _, f_s in each], dim=1))
    out = plt(x)
    for s, (t, (p, _)) in enumerate(zip(alone, each)):
        torch.testing.assert_close(out[:, s], t(x[:, s]))
        p["loss"].backward()
        grads = dict(plt.named_parameters())
        for name, param in t.named_parameters():
            expected = grads[f"w_dec.{s}"].grad if name == "w_dec.0" else grads[name].grad[s : s + 1]
            torch.testing.assert_close(param.grad, expected)


def test_a_layers_features_write_to_its_own_output_only_and_decode_layer_splices_the_same():
    plt = _skewed(_plt(n_layers=4, per_layer=3, d=5, skip_connection=True, init_threshold=0.001))
    assert [tuple(w.shape) for w in plt.w_dec] == [(1, 5, 3)] * 4
    x = torch.randn(32, 4, 5)
    base = plt(x)
    for s in range(4):
        moved = x.clone()
        moved[:, s] += torch.randn(32, 5)
        changed = [not torch.allclose(plt(moved)[:, t], base[:, t]) for t in range(4)]
        assert changed == [t == s for t in range(4)]
    features = {s: plt.encode_layer(s, x[:, s]) for s in range(4)}
    torch.testing.assert_close(torch.cat(list(features.values()), 1), plt.encode(x))
    for t in range(4):
        torch.testing.assert_close(plt.decode_layer(t, features, x[:, t]), base[:, t])


def test_flops_are_12_d_n_plus_the_skips_6_l_d_squared_the_sum_of_its_transcoders():
    d, n, L = 384, 3 * 512, 3
    assert _plt(L, 512, d).flops_per_token() == 12 * d * n
    assert _plt(L, 512, d, skip_connection=True).flops_per_token() == 12 * d * n + 6 * L * d**2
    plt = _plt(4, 5, 6, skip_connection=True)
    weights = plt.w_enc.numel() + sum(w.numel() for w in plt.w_dec) + plt.w_skip.numel()
    assert plt.flops_per_token() == 3 * 2 * weights == sum(t.flops_per_token() for t in _transcoders(plt, **FIELDS))
    cfg = AnyCoderConfig(kind="plt", n_features=20, skip_connection=True)
    assert training_flops(cfg, 6, n_layers=4) == plt.flops_per_token()
    clt = AnyCoderConfig(kind="clt", n_features=n)
    assert training_flops(clt, d, L) == 3 * (L + 3) * d * n  # unchanged: the CLT's decoders reach later layers


def test_save_and_load_round_trip(tmp_path):
    plt = _skewed(_plt(**FIELDS))
    plt.save(tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert (config["kind"], config["n_layers"], config["skip_connection"]) == ("plt", 3, True)
    loaded = load(tmp_path / "c")
    assert type(loaded) is type(plt) and loaded.config() == plt.config()
    assert all(torch.equal(a, b) for a, b in zip(plt.state_dict().values(), loaded.state_dict().values()))
    x = torch.randn(5, 3, 8)
    assert torch.equal(loaded(x), plt(x))


def test_a_plt_needs_layers_and_an_even_split():
    with pytest.raises(ConfigError, match="train.layers: a plt needs the layers it spans"):
        coder_arrays("plt", "mlp_in.1", _train_cfg({}))
    with pytest.raises(ConfigError, match="coder.n_features: a plt over 3 layers .* multiple of 3, got 10"):
        build(AnyCoderConfig(kind="plt", n_features=10), 8, n_layers=3)


# --- on a real store ---------------------------------------------------------------------------------------


def test_exact_per_layer_transcoders_splice_in_with_no_change(relu_store):
    splicer = Splicer(relu_store, n_contexts=4, device=CPU)
    cfg = _train_cfg(CLT)
    data, arrays = _data(relu_store, cfg), coder_arrays("plt", cfg.hook, cfg)
    plt = _exact(build(AnyCoderConfig(kind="plt", n_features=3 * 128), 32, 3).eval(), splicer, data.scales, LAYERS)
    assert evaluate(plt, data.eval_batches(64), split=Columns(arrays, data.arrays, data.d))["fvu"] < 1e-6
    exact = splicer(plt, arrays, data.scales)
    assert exact["delta_loss"] == pytest.approx(0.0, abs=1e-5) and exact["kl"] == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        plt.w_dec[1].normal_()
    assert splicer(plt, arrays, data.scales)["kl"] > 1e-4


def test_stacked_plt_arms_each_equal_the_arm_trained_alone(relu_store, tmp_path):
    # The CLT's stacked arms (tests/unit/test_transcoders.py) as per-layer transcoders.
    plt = AnyCoderConfig(kind="plt", n_features=48, jumprelu_penalty="l0", preact_coefficient=0.1, l1_coefficient=0.1)
    train = _train_cfg(CLT, tokens=25 * 64, lambda_warmup_frac=0.2, log_every=4)
    arms = [(plt, train), (replace(plt, l1_coefficient=0.03), replace(train, lr=3e-3))]
    grid_data = _data(relu_store, train)
    specs = [ArmSpec(c, t, tmp_path / f"grid{i}", f"a{i}", "g") for i, (c, t) in enumerate(arms)]
    runs = {i: ArmRun(spec, grid_data, DISABLED) for i, spec in enumerate(specs)}
    assert [sorted(s.arms) for s in build_stacks(runs) if s.coder is not None] == [[0, 1]]
    fused = train_grid(specs, grid_data, DISABLED)
    for i, (coder_cfg, train_cfg) in enumerate(arms):
        alone = train_run(coder_cfg, train_cfg, _data(relu_store, train_cfg), tmp_path / f"alone{i}", DISABLED, f"a{i}",
                          "g")  # fmt: skip
        assert fused[i]["steps"] == alone["steps"] == 25 and 0 < alone["l0"] < 48 and len(alone["layers"]) == 3
        assert fused[i]["loss"] == pytest.approx(alone["loss"], rel=1e-4)
        assert fused[i]["fvu"] == pytest.approx(alone["fvu"], rel=1e-4)
        a, b = load(tmp_path / f"grid{i}" / "coder").state_dict(), load(tmp_path / f"alone{i}" / "coder").state_dict()
        for name, tensor in a.items():
            torch.testing.assert_close(tensor, b[name], rtol=1e-4, atol=1e-5)


def test_the_circuits_sweep_in_small_trains_clt_and_plt_arms_side_by_side(relu_store, relu_gpt2, tmp_path, capsys):
    packaged = load_spec("circuits")
    assert packaged.kinds == ["clt", "plt"] and packaged.layers == list(range(12)) and not packaged.target_l0
    small = {"layers": LAYERS, "budgets": [3e8], "expansion": [1], "lrs": [1e-2], "batch_size": 64}
    path = tmp_path / "circuits.yaml"
    small["sparsity_by_kind"] = {"clt": 0.1, "plt": 0.1}
    path.write_text(yaml.safe_dump(yaml.safe_load(find_sweep("circuits").read_text()) | small))
    out_dir = relu_store.path.parent
    overrides = tiny_overrides(relu_gpt2, out_dir, **{"train.eval_tokens": 256, "train.splice_contexts": 2})
    cfg = compose(*overrides, f"sweep.name={path}")
    with pytest.raises(ConfigError, match="^train.center: a clt predicts another array"):
        validate(compose(*overrides, f"sweep.name={path}", "train.center=true"), relu_store.attrs)
    _, hook, arms = validate(cfg, relu_store.attrs)
    assert [a.kind for a in arms] == ["clt", "plt"] and {a.n_features for a in arms} == {96}
    # At one budget and width the PLT (12 d N FLOPs per token) sees (L + 3) / 4 = 1.5 times the CLT's tokens.
    assert arms[1].steps == int(3e8 // (12 * 32 * 96)) // 64 and arms[0].steps == int(3e8 // (18 * 32 * 96)) // 64
    rows = run_arms(arms, [arm_config(cfg, a) for a in arms], hook, out_dir / "circuits", "g")
    assert [(r["kind"], r["status"]) for r in rows] == [("clt", "done"), ("plt", "done")], rows
    assert all(r["fvu"] < 0.6 and r["kl"] > 0 and r["flops"] <= 3e8 for r in rows)
    config = load(out_dir / "circuits" / "runs" / arms[1].run_id / "coder").config()
    assert (config["kind"], config["n_layers"], config["l1_coefficient"]) == ("plt", 3, 0.1)
    _exports_as_a_set_and_not_to_saelens(out_dir / "circuits" / "runs" / arms[1].run_id, tmp_path, capsys)


def _exports_as_a_set_and_not_to_saelens(run, tmp_path, capsys):
    """The export stage writes a trained PLT run as circuit-tracer's transcoder set, every layer's features in it."""
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    assert main(["export", f"out_dir={tmp_path}", f"export.run={run}", "export.format=saelens"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "export").exists()
    assert main(["export", f"out_dir={tmp_path}", f"export.run={run}", "export.format=circuit-tracer"]) == 0
    folder = tmp_path / "export" / "circuit-tracer" / run.name
    paths = {i: str(folder / f"layer_{i}.safetensors") for i in range(3)}
    transcoders = load_transcoder_set(paths, "tiny", "mlp.hook_in", "mlp.hook_out", device=torch.device("cpu"),
                                      lazy_encoder=False, lazy_decoder=False)  # fmt: skip
    coder = load(run / "coder")
    for layer, ours in enumerate(transcoders.transcoders):
        assert ours.W_dec.abs().sum() > 0 and torch.equal(ours.b_enc, coder.b_enc[layer])


def test_a_kinds_sweep_of_penalty_kinds_needs_no_target_l0_but_one_with_k_does(tmp_path):
    path = tmp_path / "s.yaml"
    fields = {"budgets": [1e10], "n_features": [96], "lrs": [1e-3], "layers": LAYERS, "kinds": ["clt", "plt"]}
    path.write_text(json.dumps(fields | {"sparsity_by_kind": {"clt": 1.0}}))
    with pytest.raises(ConfigError, match=r"sparsity_by_kind.plt should be the l1_coefficient \(>= 0\) of its arms"):
        load_spec(str(path))
    path.write_text(json.dumps(fields | {"sparsity_by_kind": {"clt": 1.0, "plt": 2.0}}))
    assert {a.kind: a.sparsity for a in plan(load_spec(str(path)), 32, 10**6)} == {"clt": 1.0, "plt": 2.0}
    path.write_text(json.dumps(fields | {"kinds": ["relu", "topk"], "layers": [], "sparsity_by_kind": {"relu": 1.0}}))
    with pytest.raises(ConfigError, match="target_l0 should be the positive L0"):
        load_spec(str(path))
    assert load_spec("plt").kind == "plt" and load_spec("plt").layers == load_spec("clt").layers


# --- export ------------------------------------------------------------------------------------------------


def _plt_run(layers: list[int], d: int = 8, per_layer: int = 16) -> Run:
    torch.manual_seed(0)
    coder = build(AnyCoderConfig(kind="plt", n_features=per_layer * len(layers), skip_connection=True), d, len(layers))
    source = _source([f"mlp_in.{i}" for i in layers], [f"mlp_out.{i}" for i in layers])
    return Run(Path("runs/plt"), _perturbed(coder), source, {}, None)


def test_circuit_tracer_loads_a_plt_as_a_transcoder_set_of_its_layers(tmp_path):
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    run = _plt_run([0, 2])  # of a 3-layer model: layer 1 is not covered
    folder = _written(run, "circuit-tracer", tmp_path)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model_kind"] == "transcoder_set"
    assert sorted(p.name for p in folder.glob("*.safetensors")) == [f"layer_{i}.safetensors" for i in range(3)]
    paths = {i: str(folder / f"layer_{i}.safetensors") for i in range(3)}
    transcoders = load_transcoder_set(paths, "tiny", config["feature_input_hook"], config["feature_output_hook"],
                                      device=torch.device("cpu"), lazy_encoder=False, lazy_decoder=False)  # fmt: skip
    xs, scales = _raw(run), run.source["scales"]
    x_scaled = torch.stack([x * scales[name] for x, name in zip(xs, run.source["inputs"])], 1)
    with torch.no_grad():
        f, y = run.coder.encode(x_scaled).view(64, 2, 16), run.coder(x_scaled)
    for i, layer in enumerate([0, 2]):
        ours = transcoders.transcoders[layer]
        torch.testing.assert_close(ours.encode(xs[i]), f[:, i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode(f[:, i], xs[i]), y[:, i] / scales[f"mlp_out.{layer}"], atol=1e-5,
                                   rtol=1e-5)  # fmt: skip
    assert not transcoders.transcoders[1].encode(xs[0]).any()


def test_an_exported_plt_attributes_in_a_replacement_model_and_saelens_refuses_it(tmp_path):
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    run = _plt_run([0, 2], d=32)
    folder = _written(run, "circuit-tracer", tmp_path)
    paths = {i: str(folder / f"layer_{i}.safetensors") for i in range(3)}
    transcoders = load_transcoder_set(paths, "tiny", "mlp.hook_in", "mlp.hook_out", device=torch.device("cpu"))
    assert _attributed_layers(transcoders) == {0, 2}
    with pytest.raises(ConfigError, match=r"^export.format: SAELens holds one layer's SAE or transcoder, not a plt"):
        FORMATS["saelens"].check(run)
    assert fold(run.coder, run.source).layer(1).w_dec[0].shape == (1, 32, 16)
