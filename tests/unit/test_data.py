import json

import numpy as np
import pytest

from pipeline.config import DataConfig, ModelConfig
from pipeline.errors import ConfigError
from pipeline.models.loading import load_tokenizer
from pipeline.text.contexts import build_contexts, special_tokens
from pipeline.text.corpus import documents


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelConfig())


def test_context_k_does_not_depend_on_how_many_are_asked_for(tokenizer):
    cfg = DataConfig(seed=3)
    few = build_contexts(tokenizer, documents(cfg), 5, 32, "stdlib")
    many = build_contexts(tokenizer, documents(cfg), 40, 32, "stdlib")
    assert few.shape == (5, 32) and few.dtype == np.int32
    assert np.array_equal(few, many[:5])
    assert (many[:, 0] == special_tokens(tokenizer)[0]).all()


def test_the_seed_changes_the_order_and_splits_are_disjoint():
    first = lambda cfg: [d for _, d in zip(range(30), documents(cfg))]  # noqa: E731
    train, other_seed = first(DataConfig(seed=0)), first(DataConfig(seed=1))
    assert train != other_seed
    validation = set(first(DataConfig(split="validation")))
    assert validation and not validation & set(train)


def test_local_text_jsonl_and_parquet_files_are_read(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("the first line of plain text\nthe second line\n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"body": f"json document {i}"}) for i in range(3)))
    import pandas as pd

    pd.DataFrame({"body": ["parquet document one", "parquet document two"]}).to_parquet(tmp_path / "c.parquet")
    text_docs = list(documents(DataConfig(source="files", paths=[str(tmp_path / "a.txt")])))
    assert sorted(text_docs) == ["the first line of plain text", "the second line"]
    cfg = DataConfig(source="files", paths=[str(tmp_path / "b.jsonl"), str(tmp_path / "c.parquet")], text_field="body")
    docs = list(documents(cfg))
    assert sorted(docs) == sorted(
        [f"json document {i}" for i in range(3)] + ["parquet document one", "parquet document two"]
    )
    contexts = build_contexts(tokenizer, documents(cfg), 2, 6, "files")
    assert contexts.shape == (2, 6)


def test_bad_file_inputs_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="data.paths: .*missing.txt does not exist"):
        documents(DataConfig(source="files", paths=[str(tmp_path / "missing.txt")]))
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "x"}))
    with pytest.raises(ConfigError, match="data.text_field"):
        documents(DataConfig(source="files", paths=[str(tmp_path / "d.jsonl")]))


def test_a_corpus_too_small_for_the_harvest_is_refused(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("only a few words\n")
    with pytest.raises(ConfigError, match="harvest.n_tokens: data set tiny holds only 0 contexts"):
        build_contexts(tokenizer, documents(DataConfig(source="files", paths=[str(tmp_path / "a.txt")])), 3, 64, "tiny")
