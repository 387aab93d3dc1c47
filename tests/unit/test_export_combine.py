"""`export.combine`: single-layer transcoder runs, one per layer, exported through the command as ONE circuit-tracer
transcoder set that loads into a ReplacementModel (a tiny GPT-2 built in-process), each layer's weights its own
run's folded weights; and the runs that cannot make one set refused (exit 2, one line, nothing written)."""

import json

import pytest
import torch

from pipeline.cli import main
from pipeline.coders.folding import fold
from pipeline.coders.registry import AnyCoderConfig, build
from pipeline.export.runs import load_run

from unit.test_export_attribution import D, N, _attributed_layers
from unit.test_export_formats import _perturbed, _source

COMBINE = ["export.format=circuit-tracer", "export.combine=true"]


def _transcoder_folder(folder, layer: int, *, target: int | None = None, n: int = N, skip: bool = False,
                       revision: str = "main", kind: str = "transcoder", reads: str = "mlp_in"):  # fmt: skip
    """A finished run folder of a transcoder from `reads`.layer to mlp_out.target (target = layer by default)."""
    torch.manual_seed(layer)
    coder = _perturbed(build(AnyCoderConfig(kind=kind, n_features=n, skip_connection=skip, k=4), D))
    target = layer if target is None else target
    source = _source([f"{reads}.{layer}"], [f"mlp_out.{target}"] if kind == "transcoder" else [f"{reads}.{layer}"])
    source["model"] |= {"d_model": D, "revision": revision}
    coder.save(folder / "coder", source)
    (folder / "metrics.json").write_text(json.dumps({"loss": 0.5 + layer, "fvu": 0.25, "l0": 4.0}))
    return folder


def _clt_folder(folder, layers: list[int]):
    torch.manual_seed(0)
    coder = _perturbed(build(AnyCoderConfig(kind="clt", n_features=N * len(layers)), D, len(layers)))
    coder.save(folder / "coder", _source([f"mlp_in.{i}" for i in layers], [f"mlp_out.{i}" for i in layers]))
    (folder / "metrics.json").write_text(json.dumps({"loss": 1.0}))
    return folder


def test_two_transcoders_of_different_layers_make_one_set_each_layer_its_runs_weights(tmp_path, capsys):
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    a = _transcoder_folder(tmp_path / "a", 0)
    b = _transcoder_folder(tmp_path / "b", 2, skip=True)  # the first layer has none: a zero skip is written there
    out = tmp_path / "out"
    assert main(["export", f"out_dir={out}", *COMBINE, f"export.runs=[{b},{a}]"]) == 0
    [folder] = (out / "export" / "circuit-tracer").iterdir()
    assert folder.name.startswith("transcoders_L0+2_") and len(folder.name) == len("transcoders_L0+2_") + 8
    assert capsys.readouterr().out.strip() == f"export {folder.name}: {folder}"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.yaml", "layer_0.safetensors", "layer_1.safetensors", "layer_2.safetensors",
    ]  # fmt: skip

    paths = {i: str(folder / f"layer_{i}.safetensors") for i in range(3)}
    transcoders = load_transcoder_set(paths, "tiny", "mlp.hook_in", "mlp.hook_out", device=torch.device("cpu"),
                                      lazy_encoder=False, lazy_decoder=False)  # fmt: skip
    folds = {layer: fold(run.coder, run.source) for layer, run in ((0, load_run(a, "a")), (2, load_run(b, "b")))}
    for layer, folded in folds.items():
        loaded = transcoders[layer]
        torch.testing.assert_close(loaded.W_enc, folded.w_enc[0], rtol=0, atol=0)
        torch.testing.assert_close(loaded.W_dec, folded.w_dec[0][0].T, rtol=0, atol=0)
        torch.testing.assert_close(loaded.b_enc, folded.b_enc[0], rtol=0, atol=0)
        torch.testing.assert_close(loaded.b_dec, folded.b_dec[0], rtol=0, atol=0)
        torch.testing.assert_close(loaded.activation_function.threshold, folded.threshold[0], rtol=0, atol=0)
    torch.testing.assert_close(transcoders[2].W_skip, folds[2].w_skip[0], rtol=0, atol=0)
    assert not transcoders[0].W_skip.any() and not any(p.any() for p in transcoders[1].parameters())
    assert transcoders.skip_connection and transcoders.d_transcoder == N
    assert _attributed_layers(transcoders) == {0, 2}  # layer 1, which no run covers, has no active feature

    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: circuit-tracer\n") and "covers layers 0, 2 of 3" in card
    assert "| 0 | a | transcoder | 16 | mlp_in.0 | mlp_out.0 |" in card and "| 2 | b |" in card
    assert "| 0.5 | 0.25 | 4 |" in card and "| 2.5 | 0.25 | 4 |" in card and "hf upload" in card

    assert main(["export", f"out_dir={out}", *COMBINE, f"export.runs=[{a},{b}]"]) == 0  # the same set, named alike
    assert capsys.readouterr().out.strip() == f"export {folder.name}: {folder} exists; nothing to do"


def test_sweep_arms_combine_into_a_set_named_by_their_layers(tmp_path, capsys):
    for run_id, layer in (("x", 1), ("y", 0), ("z", 2)):
        _transcoder_folder(tmp_path / "sweep" / "runs" / run_id, layer)
    assert main(["export", f"out_dir={tmp_path}", *COMBINE, "export.arms=[x,y,z]"]) == 0
    [folder] = (tmp_path / "export" / "circuit-tracer").iterdir()
    assert folder.name.startswith("transcoders_L0-2_")
    card = (folder / "README.md").read_text()
    assert card.index("| 0 | y |") < card.index("| 1 | x |") < card.index("| 2 | z |")


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["export.combine=true", "export.runs=[{a},{b}]"], "export.combine: combines transcoders into one circuit-tra"
         "cer transcoder set; expected export.format=circuit-tracer, got saelens"),
        ([*COMBINE, "export.runs=[{a},{clt}]"], "export.combine: a transcoder set takes single-layer transcoders, "
         "one per layer; clt spans layers [0, 1]: export it alone"),
        ([*COMBINE, "export.runs=[{a},{sae}]"], "export.format: circuit-tracer replaces MLPs with transcoders, not "
         "with a topk SAE (sae reads and predicts"),
        ([*COMBINE, "export.runs=[{a},{revised}]"], "export.combine: a transcoder set is of one model; a has tiny "
         "(revision main), revised tiny (revision v2)"),
        ([*COMBINE, "export.runs=[{a},{wide}]"], "export.combine: a transcoder set is of one width; a has 16 "
         "features, wide 32 features"),
        ([*COMBINE, "export.runs=[{a},{b},{b2}]"], "export.combine: a transcoder set holds one transcoder per layer; "
         "b and b2 are both of layer 2"),
        ([*COMBINE, "export.runs=[{a},{crossed}]"], "export.format: circuit-tracer's transcoder of layer L predicts "
         "mlp_out.L from mlp_in.L; crossed predicts mlp_out.2 from mlp_in.1"),
        ([*COMBINE, "export.runs=[{a},{resid}]"], "export.format: circuit-tracer's transcoder of layer L predicts "
         "mlp_out.L from mlp_in.L; resid predicts"),
        ([*COMBINE, "export.runs=[{a}]", "export.run={b}"], "export.runs: names the run folders to export; expected "
         "no export.run or export.arms beside it"),
    ],
)  # fmt: skip
def test_runs_that_cannot_make_one_set_are_refused_with_one_line_and_nothing_written(tmp_path, capsys, overrides,
                                                                                     says):  # fmt: skip
    folders = {
        "a": _transcoder_folder(tmp_path / "a", 0),
        "b": _transcoder_folder(tmp_path / "b", 2),
        "b2": _transcoder_folder(tmp_path / "b2", 2),
        "clt": _clt_folder(tmp_path / "clt", [0, 1]),
        "sae": _transcoder_folder(tmp_path / "sae", 1, kind="topk"),
        "revised": _transcoder_folder(tmp_path / "revised", 1, revision="v2"),
        "wide": _transcoder_folder(tmp_path / "wide", 1, n=2 * N),
        "crossed": _transcoder_folder(tmp_path / "crossed", 1, target=2),
        "resid": _transcoder_folder(tmp_path / "resid", 1, reads="resid_post"),
    }
    overrides = [o.format(**folders) for o in overrides]
    assert main(["export", f"out_dir={tmp_path / 'out'}", *overrides]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
