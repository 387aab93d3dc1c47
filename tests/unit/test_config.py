import dataclasses
from dataclasses import dataclass, field

import pytest

from pipeline.cli import main
from pipeline.config import PipelineConfig, compose, schema
from pipeline.config.checks import check, checked
from pipeline.config.docs import field_docs
from pipeline.errors import ConfigError

# (stage, overrides, the start of the one error line after "error: ")
BAD = [
    ("harvest", ["model.dtype=float8"], "model.dtype: expected one of float32, float16, bfloat16, got 'float8'"),
    ("harvest", ["data.source=web"], "data.source: expected one of stdlib, hf, files, got 'web'"),
    ("harvest", ["data.split=test"], "data.split: the stdlib corpus has splits train, validation, got 'test'"),
    ("harvest", ["data.source=files"], "data.paths: source=files needs at least one"),
    ("harvest", ["data=files", "data.paths=[a.txt,b.csv]"], "data.paths: b.csv should end in .txt, .jsonl, .json"),
    ("harvest", ["data.shuffle_buffer=0"], "data.shuffle_buffer: expected at least 1, got 0"),
    ("harvest", ["data.context_len=2"], "data.context_len: expected at least 3, got 2"),
    ("harvest", ["harvest.n_tokens=0"], "harvest.n_tokens: expected at least 1, got 0"),
    ("harvest", ["harvest.batch_contexts=-1"], "harvest.batch_contexts: expected at least 1, got -1"),
    ("harvest", ["harvest.contexts_per_shard=0"], "harvest.contexts_per_shard: expected at least 1, got 0"),
    ("harvest", ["harvest.replicas=0"], "harvest.replicas: expected at least 1, got 0"),
    ("harvest", ["harvest.cpus_per_replica=-1"], "harvest.cpus_per_replica: expected at least 0, got -1.0"),
    ("harvest", ["harvest.gpus_per_replica=1.5"], "harvest.gpus_per_replica: above 1 it must be whole GPUs"),
    ("harvest", ["harvest.max_actor_restarts=-1"], "harvest.max_actor_restarts: expected at least 0, got -1"),
    ("harvest", ["harvest.place_timeout_s=0"], "harvest.place_timeout_s: expected more than 0, got 0.0"),
    ("harvest", ["harvest.hooks=[resid_post.1,resid_post.1]"], "harvest.hooks: expected distinct hook names"),
    ("harvest", ["harvest.hooks=[]"], "harvest.hooks: expected distinct hook names, got []"),
    ("harvest", ["store.dtype=int8"], "store.dtype: expected one of float32, float16, bfloat16, got 'int8'"),
    ("harvest", ["store.codec=lz4"], "store.codec: expected one of none, zstd, blosc-zstd, got 'lz4'"),
    ("harvest", ["store.contexts_per_chunk=0"], "store.contexts_per_chunk: expected at least 1, got 0"),
    ("harvest", ["store.contexts_per_chunk=24"], "store.contexts_per_chunk: 24 must divide harvest.contexts_per_shard"),
    ("harvest", ["ray.num_cpus=-2"], "ray.num_cpus: expected at least 0, got -2"),
    ("harvest", ["model.device=gpu"], "model.device: expected a match of auto|cpu|mps|cuda(:\\d+)?, got 'gpu'"),
    ("train", ["train.device=cuda:x"], "train.device: expected a match of auto|cpu|mps|cuda(:\\d+)?, got 'cuda:x'"),
    ("train", ["train.parallel=x"], "train.parallel: expected one of none, ddp, features, got 'x'"),
    ("train", ["train.cache=disk"], "train.cache: expected one of auto, device, host, none, got 'disk'"),
    ("train", ["train.precision=fp8"], "train.precision: expected one of auto, bfloat16, float32, got 'fp8'"),
    ("train", ["train.tokens=0"], "train.tokens: expected at least 1, got 0"),
    ("train", ["train.batch_size=0"], "train.batch_size: expected at least 1, got 0"),
    ("train", ["train.lr=0"], "train.lr: expected more than 0, got 0.0"),
    ("train", ["train.lr=-1e-3"], "train.lr: expected more than 0, got -0.001"),
    ("train", ["train.lr=nan"], "train.lr: expected more than 0, got nan"),
    ("train", ["train.lambda_warmup_frac=1.5"], "train.lambda_warmup_frac: expected at least 0 and at most 1, got 1.5"),
    ("train", ["train.lr_decay_frac=-0.1"], "train.lr_decay_frac: expected at least 0 and at most 1, got -0.1"),
    ("train", ["train.grad_clip=0"], "train.grad_clip: expected more than 0, got 0.0"),
    ("train", ["train.eval_tokens=0"], "train.eval_tokens: expected at least 1, got 0"),
    ("train", ["train.dead_window_tokens=0"], "train.dead_window_tokens: expected at least 1, got 0"),
    ("train", ["train.splice_contexts=-1"], "train.splice_contexts: expected at least 0, got -1"),
    ("train", ["train.log_every=0"], "train.log_every: expected at least 1, got 0"),
    ("train", ["train.checkpoint_every=-5"], "train.checkpoint_every: expected at least 0, got -5"),
    ("train", ["train.shuffle_chunks=0"], "train.shuffle_chunks: expected at least 1, got 0"),
    ("train", ["train.prefetch_chunks=0"], "train.prefetch_chunks: expected at least 1, got 0"),
    ("train", ["train.layers=[-1,0]"], "train.layers: expected at least 0, got [-1, 0]"),
    ("train", ["train.layers=[2,1]"], "train.layers: expected distinct layer numbers in increasing order"),
    ("train", ["train.layers=[1]", "train.target_hook=mlp_out.1"], "train.target_hook: a clt predicts mlp_out.L"),
    ("train", ["train.batch_size=abc"], "train.batch_size: Value 'abc' of type 'str' could not be converted"),
    ("train", ["train.batch_sise=8"], "train.batch_sise: Key 'batch_sise' not in 'TrainConfig'"),
    ("train", ["launcher=ray", "launcher.gpus_per_arm=2"], "train.parallel: launcher.gpus_per_arm=2 gives an arm"),
    ("train", ["launcher=ray", "launcher.gpus_per_arm=1.5", "train.parallel=ddp"], "launcher.gpus_per_arm: above 1"),
    ("train", ["coder.kind=dense"], "coder.kind: expected one of relu, topk, batchtopk, jumprelu"),
    ("train", ["coder.n_features=0"], "coder.n_features: expected a positive width, got 0"),
    ("train", ["coder.l1_coefficient=-1"], "coder.l1_coefficient: expected a penalty coefficient >= 0, got -1.0"),
    ("train", ["coder=topk", "coder.k=0"], "coder.k: expected between 1 and n_features=1536, got 0"),
    ("train", ["coder=jumprelu", "coder.jumprelu_penalty=l2"], "coder.jumprelu_penalty: expected one of l0, tanh"),
    ("sweep", ["launcher.name=k8s"], "launcher.name: expected one of local, ray, slurm, got 'k8s'"),
    ("sweep", ["launcher=slurm", "launcher.gpus_per_arm=0.5"], "launcher.gpus_per_arm: Slurm jobs take whole GPUs"),
    ("sweep", ["launcher.gpus_per_arm=-1"], "launcher.gpus_per_arm: expected at least 0, got -1.0"),
    ("sweep", ["launcher.time_min=0"], "launcher.time_min: expected at least 1, got 0"),
    ("sweep", ["launcher.mem_gb=-1"], "launcher.mem_gb: expected at least 0, got -1"),
    ("sweep", ["launcher.array_parallelism=0"], "launcher.array_parallelism: expected at least 1, got 0"),
    ("sweep", ["sweep.pack=0"], "sweep.pack: expected at least 1, got 0"),
    ("sweep", ["sweep.max_retries=-1"], "sweep.max_retries: expected at least 0, got -1"),
    ("sweep", ["dry_run=maybe"], "dry_run: Value 'maybe' is not a valid bool"),
    ("fit", ["fit.n_bootstrap=-1"], "fit.n_bootstrap: expected at least 0, got -1"),
    ("fit", ["tracking.mode=loud"], "tracking.mode: expected one of disabled, offline, online, auto, got 'loud'"),
]


@pytest.mark.parametrize(("stage", "overrides", "message"), BAD, ids=[" ".join(o) for _, o, _ in BAD])
def test_a_bad_value_is_refused_with_exit_2_and_one_line_naming_the_field(tmp_path, capsys, stage, overrides, message):
    assert main([stage, f"out_dir={tmp_path / 'out'}", *overrides]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {message}") and captured.err.count("\n") == 1
    assert captured.out == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("below", ["", "run"])
def test_an_out_dir_that_is_a_file_or_lies_under_one_is_refused(tmp_path, capsys, below):
    (tmp_path / "a-file").write_text("kept\n")
    out_dir = tmp_path / "a-file" / below if below else tmp_path / "a-file"
    assert main(["harvest", f"out_dir={out_dir}"]) == 2
    assert (
        capsys.readouterr().err
        == f"error: out_dir: {tmp_path / 'a-file'} is a file; expected a folder (or a path to create one at)\n"
    )
    assert (tmp_path / "a-file").read_text() == "kept\n"


def test_the_defaults_and_the_conf_groups_pass_the_checks():
    for overrides in ([], ["model=gpt2"], ["data=hf"], ["launcher=ray"], ["launcher=slurm"], ["launcher=local"]):
        assert isinstance(compose(overrides), PipelineConfig)


@dataclass
class Inner:
    mode: str = checked("a", choices=("a", "b"))  # a mode
    name: str = checked("x1", pattern=r"x\d")  # a name
    fraction: float = checked(0.5, gt=0, lt=1)  # a fraction
    widths: list[int] = checked(default_factory=lambda: [1, 2], min=1)  # widths, each at least 1


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    low: int = checked(0, min=0, max=10)  # a field wrapped over lines, its comment at the end
    # a comment block above a declaration,
    # over two lines
    high: int = 5

    def validate(self, at: str) -> None:
        if self.low > self.high:
            raise ConfigError(f"{at}low: expected at most {at}high ({self.high}), got {self.low}")


@pytest.mark.parametrize(
    ("inner", "outer", "message"),
    [
        ({"mode": "c"}, {}, "x.inner.mode: expected one of a, b, got 'c'"),
        ({"name": "x12"}, {}, "x.inner.name: expected a match of x\\d, got 'x12'"),
        ({"fraction": 1.0}, {}, "x.inner.fraction: expected more than 0 and less than 1, got 1.0"),
        ({"fraction": 0}, {}, "x.inner.fraction: expected more than 0 and less than 1, got 0"),
        ({"widths": [1, 0]}, {}, "x.inner.widths: expected at least 1, got [1, 0]"),
        ({}, {"low": 11, "high": 20}, "x.low: expected at least 0 and at most 10, got 11"),
        ({}, {"low": 6}, "x.low: expected at most x.high (5), got 6"),
    ],
)
def test_the_checker_holds_any_dataclass_to_its_declared_rules(inner, outer, message):
    check(Outer(Inner()), "x.")
    with pytest.raises(ConfigError) as err:
        check(Outer(Inner(**inner), **outer), "x.")
    assert str(err.value) == message


def test_an_unknown_rule_is_a_programming_error():
    with pytest.raises(TypeError, match="unknown rule"):
        checked(1, minimum=0)


def test_field_docs_are_the_comments_beside_the_declarations():
    assert field_docs(Outer) == {
        "low": "a field wrapped over lines, its comment at the end",
        "high": "a comment block above a declaration, over two lines",
    }
    assert field_docs(schema.TrainConfig)["lr"] == "peak Adam learning rate"


def test_every_field_of_every_group_is_documented():
    for group in dataclasses.fields(PipelineConfig):
        cls = group.default_factory if dataclasses.is_dataclass(group.type) else PipelineConfig
        names = [f.name for f in dataclasses.fields(cls)] if cls is not PipelineConfig else [group.name]
        missing = [name for name in names if name not in field_docs(cls)]
        assert not missing, f"{cls.__name__}: no comment beside {missing}"


def test_the_choices_are_those_the_code_implements():
    from pipeline.models.loading import _DTYPES
    from pipeline.store import codecs
    from pipeline.sweep.launch import HYDRA_LAUNCHERS
    from pipeline.text.corpus import _FILE_BUILDERS

    assert set(schema.MODEL_DTYPES) == set(_DTYPES)
    assert set(schema.STORE_DTYPES) == set(codecs.DTYPES)
    assert set(schema.LAUNCHERS) == set(HYDRA_LAUNCHERS)
    assert set(schema.FILE_SUFFIXES) == set(_FILE_BUILDERS)
