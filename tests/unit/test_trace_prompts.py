"""`train.trace_prompts` refused before any work: a model without an LM head, a prompt longer than its context."""

import pytest

from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.train.trace_prompts import check_trace_prompts, check_traceable

from conftest import compose


def test_a_model_without_an_lm_head_is_refused_with_one_line_and_nothing_written(tmp_path, capsys):
    assert main(["run", f"out_dir={tmp_path / 'out'}", "train.trace_prompts=[The cat sat]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.trace_prompts: ") and "has no language-model head" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_a_prompt_longer_than_the_context_is_refused(tiny_models):
    # The tiny GPT-2 takes 64 positions; with its BOS token this prompt needs more.
    long = " ".join(["word"] * 70)
    with pytest.raises(
        ConfigError, match=r"train.trace_prompts: prompt 0 \('word word.*\) is \d+ tokens with its BOS; .* at most 64"
    ):
        check_trace_prompts(compose(f"model.name={tiny_models['gpt2']}", f"train.trace_prompts=[{long}]"))
    check_trace_prompts(compose(f"model.name={tiny_models['gpt2']}", "train.trace_prompts=[The cat sat on the]"))


def test_a_blank_prompt_is_refused():
    with pytest.raises(ConfigError, match="train.trace_prompts: expected a match of"):
        compose("train.trace_prompts=[' ']")


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["coder=clt", "train.layers=[0,1]", "coder.skip_connection=true"],
         "no skip connection of a cross-layer transcoder from disk, and the clt has one"),
        (["coder=transcoder", "train.hook=resid_post.0", "train.target_hook=mlp_out.0"],
         "predicts mlp_out.0 from resid_post.0"),
        (["coder=transcoder", "train.hook=mlp_in.0", "train.target_hook=mlp_out.1"],
         "predicts mlp_out.1 from mlp_in.0"),
    ],
)  # fmt: skip
def test_a_coder_circuit_tracer_cannot_read_is_refused(overrides, says):
    cfg = compose(*overrides, "train.trace_prompts=[The cat]")
    with pytest.raises(ConfigError, match=f"train.trace_prompts: .*{says}"):
        check_traceable(cfg, "mlp_in.0", f"the {cfg.coder.kind}")
    check_traceable(compose(*overrides), "mlp_in.0", "without prompts")  # nothing is traced, so nothing is checked


@pytest.mark.parametrize(
    "overrides",
    [
        ["coder=clt", "train.layers=[0,1]"],
        ["coder=plt", "train.layers=[0,1]", "coder.skip_connection=true"],  # a set of transcoders: skips are read
        ["coder=transcoder", "train.hook=mlp_in.2", "train.target_hook=mlp_out.2"],
        ["coder=relu", "train.hook=resid_post.1"],  # an SAE gets no scores
    ],
)
def test_traceable_coders_and_saes_pass(overrides):
    check_traceable(compose(*overrides, "train.trace_prompts=[The cat]"), "mlp_in.0", "the arm")
