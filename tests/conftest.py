"""Shared fixtures: one local Ray instance per test session, tiny models built in-process."""

import json
import os
from pathlib import Path

import pytest
import torch

from pipeline.activations.loading import ActivationData
from pipeline.config import TrainConfig
from pipeline.store.activation_store import ActivationStore
from pipeline.store.schema import base_attrs

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run on CPU tensors, in its interpreter

FAMILIES = ("gpt2", "neox", "llama", "bert")
SYNTHETIC_D = 16


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    from pipeline.config import ModelConfig
    from pipeline.models.loading import resolve_path

    return AutoTokenizer.from_pretrained(resolve_path(ModelConfig()))


def _tiny(family: str, vocab: int) -> torch.nn.Module:
    import transformers as tf

    shape = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    if family == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=3, n_head=2, n_positions=64))
    if family == "neox":
        return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**shape, max_position_embeddings=64))
    if family == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**shape, num_key_value_heads=2, max_position_embeddings=64))
    return tf.BertModel(tf.BertConfig(**shape, max_position_embeddings=64))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A folder per family with random weights (safetensors) and the MiniLM tokenizer."""
    tokenizer = _minilm_tokenizer()
    root = tmp_path_factory.mktemp("models")
    folders = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        folder = root / family
        _tiny(family, tokenizer.vocab_size).save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        folders[family] = folder
    return folders


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def compose(*overrides: str):
    from pipeline.coders.registry import register_schema
    from pipeline.config import compose as cli_compose

    register_schema()
    return cli_compose(list(overrides))


def tiny_overrides(model_dir: Path, out_dir: Path, **extra) -> list[str]:
    """A harvest small enough for a test: 2 shards of 4 contexts of 16 tokens from the tiny model."""
    base = {
        "out_dir": str(out_dir),
        "model.name": str(model_dir),
        "harvest.hooks": "[resid_post.1]",
        "harvest.n_tokens": 120,
        "harvest.contexts_per_shard": 4,
        "harvest.batch_contexts": 2,
        "harvest.replicas": 1,
        "store.contexts_per_chunk": 2,
        "data.context_len": 16,
        "tracking.mode": "disabled",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _synthetic_source() -> dict:
    """The `model` and `dataset` attributes of a store of synthetic rows of d=SYNTHETIC_D, 9 tokens a context."""
    model = {"name": "synthetic", "revision": "", "dtype": "float32", "n_layers": 1, "d_model": SYNTHETIC_D}
    dataset = {"source": "synthetic", "name": "", "subset": "", "split": "train", "seed": 0, "context_len": 9}
    return {"model": model | {"has_lm_head": False}, "dataset": dataset | {"paths": []}}


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory):
    """A store of sparse synthetic activations: each row a sum of a few of 64 fixed directions."""
    attrs = base_attrs(
        **_synthetic_source(),
        hooks=["resid_post.0"],
        layout={
            "n_contexts": 512,
            "context_len": 9,
            "rows_per_context": 8,
            "contexts_per_shard": 128,
            "drop_bos": True,
        },
        codec={"dtype": "float32", "codec": "none", "contexts_per_chunk": 64},
    )
    store = ActivationStore.create(tmp_path_factory.mktemp("store") / "s.zarr", attrs, SYNTHETIC_D)
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(64, SYNTHETIC_D, generator=gen)
    for shard in range(store.layout.n_shards):
        codes = torch.rand(store.layout.rows_per_shard, 64, generator=gen) * (
            torch.rand(store.layout.rows_per_shard, 64, generator=gen) < 0.05
        )
        noise = 0.01 * torch.randn(store.layout.rows_per_shard, SYNTHETIC_D, generator=gen)
        store.write_shard(shard, {"resid_post.0": 3 * codes @ directions + noise})
    store.finalize()
    return store


@pytest.fixture(scope="session")
def store(synthetic_store) -> ActivationStore:
    """The synthetic store, by the name the training and streaming tests give it: 4096 rows of d=16, chunks of 512."""
    return synthetic_store


@pytest.fixture(scope="module")
def data(synthetic_store) -> ActivationData:
    """The synthetic store's rows as the stacking tests train on them, in memory, 512 of them held out."""
    return ActivationData(synthetic_store, "resid_post.0", TrainConfig(eval_tokens=512), torch.device("cpu"))


@pytest.fixture(scope="module")
def paired_store(tmp_path_factory) -> ActivationStore:
    """A synthetic MLP's input and output: 2048 rows of d=16 in chunks of 256, the output a fixed ReLU map of
    the input."""
    attrs = base_attrs(
        **_synthetic_source(),
        hooks=["mlp_in.0", "mlp_out.0"],
        layout={
            "n_contexts": 256,
            "context_len": 9,
            "rows_per_context": 8,
            "contexts_per_shard": 128,
            "drop_bos": True,
        },
        codec={"dtype": "float32", "codec": "none", "contexts_per_chunk": 32},
    )
    store = ActivationStore.create(tmp_path_factory.mktemp("paired") / "s.zarr", attrs, 16)
    gen = torch.Generator().manual_seed(0)
    w_in, w_out = torch.randn(64, 16, generator=gen), torch.randn(16, 64, generator=gen)
    for shard in range(store.layout.n_shards):
        x = torch.randn(store.layout.rows_per_shard, 16, generator=gen)
        store.write_shard(shard, {"mlp_in.0": x, "mlp_out.0": 5 * torch.relu(x @ w_in.t()) @ w_out.t()})
    store.finalize()
    return store


@pytest.fixture(scope="session")
def relu_gpt2(tmp_path_factory) -> Path:
    """A tiny GPT-2 whose MLPs use ReLU, so a JumpReLU transcoder can equal an MLP exactly."""
    import transformers as tf

    tokenizer = _minilm_tokenizer()
    torch.manual_seed(0)
    config = tf.GPT2Config(
        vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=3, n_head=2, n_positions=64, activation_function="relu"
    )
    folder = tmp_path_factory.mktemp("models") / "gpt2-relu"
    tf.GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def harvest_in_process(model_dir: Path, out_dir: Path, hooks: list[str], **extra) -> ActivationStore:
    """The model's activations at `hooks` (the shape of `tiny_overrides`), harvested in this process without Ray."""
    from pipeline.harvest.stage import validate
    from pipeline.harvest.worker import HarvestWorker
    from pipeline.models.loading import load_tokenizer
    from pipeline.text.contexts import build_contexts
    from pipeline.text.corpus import documents

    cfg = compose(*tiny_overrides(model_dir, out_dir, **{"harvest.hooks": f"[{','.join(hooks)}]", **extra}))
    attrs = validate(cfg)
    store = ActivationStore.create(out_dir / "store.zarr", attrs, attrs["model"]["d_model"])
    contexts = build_contexts(
        load_tokenizer(cfg.model), documents(cfg.data), store.layout.n_contexts, cfg.data.context_len, "t"
    )
    store.write_tokens(contexts)
    worker = HarvestWorker(
        str(store.path), cfg.model, attrs["model"]["n_layers"], cfg.harvest.batch_contexts, cfg.harvest.drop_bos
    )
    for shard in range(store.layout.n_shards):
        worker.harvest(shard)
    store.finalize()
    return store


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models: one intra-op thread is several times faster than two on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_RECORDED_BY_WHOM_AND_WHEN = ("writer", "time")


def store_state(store_path: Path) -> dict:
    """Every file of a store, its completion records without their writer and time: what two harvests of one
    configuration that both finished leave the same."""
    state = {}
    for path in sorted(Path(store_path).rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.parent.name == "completion":
                data = {k: v for k, v in json.loads(data).items() if k not in _RECORDED_BY_WHOM_AND_WHEN}
            state[str(path.relative_to(store_path))] = data
    return state
