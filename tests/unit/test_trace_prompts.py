"""`train.trace_prompts` refused before any work: a model without an LM head, a prompt longer than its context."""

import pytest

from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.train.trace_prompts import check_trace_prompts

from conftest import compose


def test_a_model_without_an_lm_head_is_refused_with_one_line_and_nothing_written(tmp_path, capsys):
    assert main(["run", f"out_dir={tmp_path / 'out'}", "train.trace_prompts=[The cat sat]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.trace_prompts: ") and "has no language-model head" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_a_prompt_longer_than_the_context_is_refused(tiny_models):
    # The tiny GPT-2 takes 64 positions; with its BOS token this prompt needs more.
    long = " ".join(["word"] * 70)
    with pytest.raises(ConfigError, match=r"train.trace_prompts: 'word word.*' is \d+ tokens with BOS; .* at most 64"):
        check_trace_prompts(compose(f"model.name={tiny_models['gpt2']}", f"train.trace_prompts=[{long}]"))
    check_trace_prompts(compose(f"model.name={tiny_models['gpt2']}", "train.trace_prompts=[The cat sat on the]"))


def test_a_blank_prompt_is_refused():
    with pytest.raises(ConfigError, match="train.trace_prompts: expected a match of"):
        compose("train.trace_prompts=[' ']")
