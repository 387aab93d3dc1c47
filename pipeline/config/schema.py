"""Every stage's configuration, as dataclasses registered with Hydra's ConfigStore.

The YAML groups in `conf/` only change values; the fields live here, each with its type, its meaning
(the comment beside it, or above it where the line would be too long; `pipeline STAGE --help` shows
it), its range or choices (`checked`), and the rules tying fields together (each class's `validate`).
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore

from pipeline.config.checks import checked
from pipeline.errors import ConfigError

MODEL_DTYPES = ("float32", "float16", "bfloat16")
SOURCES = ("stdlib", "hf", "files")
STDLIB_SPLITS = ("train", "validation")
FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")  # of data.paths: plain text, JSON lines, Parquet
STORE_DTYPES = ("float32", "float16", "bfloat16")
CODECS = ("none", "zstd", "blosc-zstd")
VERIFY_MODES = ("fast", "full", "none")  # of harvest.verify; pipeline/store/verify.py says what each checks
PRECISIONS = ("auto", "bfloat16", "float32")
CACHE_MODES = ("auto", "device", "host", "none")
PARALLEL_MODES = ("none", "ddp", "features")
LAUNCHERS = ("local", "ray", "slurm")
TRACKING_MODES = ("disabled", "offline", "online", "auto")
EXPORT_FORMATS = ("saelens", "circuit-tracer", "sparsify")  # of export.format; pipeline/export/formats.py writes each
EXPORT_SELECTIONS = ("best", "all")
OFFLOADS = ("none", "cpu", "disk")  # of trace.offload
DEVICE = r"auto|cpu|mps|cuda(:\d+)?"  # the torch devices a run may name


@dataclass
class ModelConfig:
    # HF model id or local folder with a config and safetensors weights
    name: str = "sentence-transformers/all-MiniLM-L6-v2"
    revision: str = "main"  # HF revision (branch, tag or commit) when loading from the hub
    dtype: str = checked("float32", choices=MODEL_DTYPES)  # torch dtype of the forward pass
    # torch device of the forward pass; auto = cuda when present, else cpu
    device: str = checked("auto", pattern=DEVICE)
    trust_remote_code: bool = False  # allow model code shipped with the weights (off unless needed)


@dataclass
class DataConfig:
    # stdlib (Python's own docs, embedded), hf (a Hub data set, streamed) or files
    source: str = checked("stdlib", choices=SOURCES)
    name: str = "python-stdlib-docs"  # HF data set id (source=hf); a label otherwise
    subset: str = ""  # HF data set configuration name, empty for none
    paths: list[str] = field(default_factory=list)  # local .txt, .jsonl/.json or .parquet files (source=files)
    text_field: str = "text"  # column holding the text (hf, jsonl, parquet)
    split: str = "train"  # data split: train or validation for stdlib; any split name for hf
    seed: int = 0  # seed of the context order: context k is a pure function of (data set, split, seed, k)
    context_len: int = 128  # tokens per context, BOS included
    shuffle_buffer: int = checked(10_000, min=1)  # documents in the streaming shuffle buffer (source=hf)

    def validate(self, at: str) -> None:
        if self.source == "stdlib" and self.split not in STDLIB_SPLITS:
            raise ConfigError(f"{at}split: the stdlib corpus has splits {', '.join(STDLIB_SPLITS)}, got {self.split!r}")
        if self.source != "files":
            return
        if not self.paths:
            raise ConfigError(f"{at}paths: source=files needs at least one .txt, .jsonl or .parquet file")
        for name in self.paths:
            if not name.endswith(FILE_SUFFIXES):
                raise ConfigError(f"{at}paths: {name} should end in {', '.join(FILE_SUFFIXES)}")


@dataclass
class HarvestConfig:
    n_tokens: int = checked(200_000, min=1)  # activation rows to harvest per hook (rounded up to whole shards)
    hooks: list[str] = field(default_factory=lambda: ["resid_post.3"])  # hook points: resid_post.L, mlp_in.L, mlp_out.L
    drop_bos: bool = True  # drop each context's first (BOS) position, whose activations are outliers
    batch_contexts: int = checked(16, min=1)  # contexts per forward pass
    contexts_per_shard: int = checked(64, min=1)  # contexts in one store shard, the unit of leasing and completion
    replicas: int = checked(2, min=1)  # Ray actors, each holding one model replica
    cpus_per_replica: float = checked(1.0, min=0)  # CPUs reserved for each replica (its placement-group bundle)
    # GPUs reserved for each replica; above 1 the model is split across them
    gpus_per_replica: float = checked(0.0, min=0)
    max_actor_restarts: int = checked(3, min=0)  # times a dead actor is replaced before the harvest fails
    # check of the complete shards before leasing: fast (file sizes, one random shard in full), full (every byte), none
    verify: str = checked("fast", choices=VERIFY_MODES)
    # seconds a replica's placement group may wait for its CPUs and GPUs before the harvest fails
    place_timeout_s: float = checked(300.0, gt=0)

    def validate(self, at: str) -> None:
        if self.gpus_per_replica > 1 and self.gpus_per_replica != int(self.gpus_per_replica):
            raise ConfigError(f"{at}gpus_per_replica: above 1 it must be whole GPUs, got {self.gpus_per_replica}")
        if len(set(self.hooks)) != len(self.hooks) or not self.hooks:
            raise ConfigError(f"{at}hooks: expected distinct hook names, got {list(self.hooks)}")


@dataclass
class StoreConfig:
    dtype: str = checked("float16", choices=STORE_DTYPES)  # on-disk activation dtype (bfloat16 kept as uint16 bits)
    codec: str = checked("none", choices=CODECS)  # compressor of the activation chunks
    # contexts in one Zarr chunk (the unit of compression and partial reads)
    contexts_per_chunk: int = checked(16, min=1)


@dataclass
class CoderConfig:
    """What every kind's configuration holds; each kind adds its own fields in pipeline/coders/<kind>.py."""

    kind: str = "relu"  # coder architecture: a kind listed in pipeline.coders.registry (`coder=KIND` selects it too)
    n_features: int = 1536  # dictionary size N (all layers' features together for a clt)

    def __post_init__(self):
        if self.n_features <= 0:
            raise ConfigError(f"coder.n_features: expected a positive width, got {self.n_features}")


@dataclass
class TrainConfig:
    hook: str = ""  # store array to train on; empty = the store's first hook
    target_hook: str = ""  # store array a transcoder predicts from `hook` (e.g. mlp_out.3); empty for SAEs
    # clt: layers whose mlp_in.L it reads and mlp_out.L it predicts; empty otherwise
    layers: list[int] = checked(default_factory=list, min=0)
    tokens: int = checked(100_000, min=1)  # training tokens (a sweep sets this from the budget)
    batch_size: int = checked(1024, min=1)  # activation rows per optimiser step
    lr: float = checked(1e-3, gt=0)  # peak Adam learning rate
    # fraction of steps over which the sparsity coefficient ramps up from 0
    lambda_warmup_frac: float = checked(0.05, min=0, max=1)
    # final fraction of steps over which the learning rate decays linearly to 0
    lr_decay_frac: float = checked(0.2, min=0, max=1)
    grad_clip: float = checked(1.0, gt=0)  # maximum global gradient norm
    eval_tokens: int = checked(8192, min=1)  # rows at the end of the store held out for final metrics, never trained on
    # a feature is dead if it never fired in this many most recent tokens
    dead_window_tokens: int = checked(10_000_000, min=1)
    # held-out contexts for the spliced next-token loss and KL (models with an LM head); 0 = off
    splice_contexts: int = checked(32, min=0)
    # prompts whose attribution graphs score each transcoder or CLT arm's circuits (the `trace` node's options);
    # empty = off
    trace_prompts: list[str] = checked(default_factory=list, pattern=r"(?s).*\S.*")
    seed: int = 0  # seed of initialisation and data order
    # SAEs: train on inputs less the store's mean of the hook; the saved coder has it folded into its biases
    center: bool = False
    device: str = checked("auto", pattern=DEVICE)  # torch device; auto = cuda when present, else cpu
    # matrix products in bfloat16 or float32; auto = bfloat16 on CUDA, float32 on CPU
    precision: str = checked("auto", choices=PRECISIONS)
    # a fused grid trains arms of one shape, differing only in lr or penalty, as one batched coder
    stack_arms: bool = True
    log_every: int = checked(50, min=1)  # steps between progress lines and tracked metrics
    checkpoint_every: int = checked(1000, min=0)  # steps between checkpoints a killed run resumes from; 0 = none
    # where the training rows live: device, host, none (streamed from the store) or auto (the first that fits)
    cache: str = checked("auto", choices=CACHE_MODES)
    shuffle_chunks: int = checked(64, min=1)  # store chunks mixed in the streaming shuffle buffer (cache=none)
    prefetch_chunks: int = checked(8, min=1)  # store chunks read ahead by the streaming loader's background thread
    # split over the launched ranks: none (one process), ddp (rows of each batch) or features (slices of the dictionary)
    parallel: str = checked("none", choices=PARALLEL_MODES)

    def validate(self, at: str) -> None:
        if self.layers and self.target_hook:
            raise ConfigError(
                f"{at}target_hook: a clt predicts mlp_out.L of {at}layers; expected it empty, got {self.target_hook!r}"
            )
        if list(self.layers) != sorted(set(self.layers)):
            raise ConfigError(f"{at}layers: expected distinct layer numbers in increasing order, got {self.layers}")


@dataclass
class LauncherConfig:
    # Hydra launcher of the sweep's packs: local (this process), ray (Ray tasks) or slurm (submitit jobs)
    name: str = checked("local", choices=LAUNCHERS)
    # GPUs each pack of arms reserves (ray: fractions share a GPU; slurm: whole GPUs per job)
    gpus_per_arm: float = checked(0.0, min=0)
    cpus_per_arm: float = checked(1.0, min=0)  # CPUs each pack of arms reserves (ray: per task; slurm: per job)
    partition: str = ""  # slurm: partition the jobs run in; empty = the site's default
    account: str = ""  # slurm: account the jobs are charged to; empty = the user's default
    qos: str = ""  # slurm: quality of service; empty = the default
    constraint: str = ""  # slurm: node features the jobs need (e.g. a GPU model); empty = any node
    time_min: int = checked(240, min=1)  # slurm: wall-clock limit of one job (one pack of arms), in minutes
    mem_gb: int = checked(0, min=0)  # slurm: memory of one job, in GB; 0 = the partition's default
    array_parallelism: int = checked(64, min=1)  # slurm: most jobs of the sweep's job array running at once
    setup: list[str] = field(default_factory=list)  # slurm: shell lines each job runs first (e.g. module load cuda)
    # slurm: where submitit keeps scripts, pickles and logs; empty = <out_dir>/sweep/submitit/%j
    submitit_folder: str = ""


@dataclass
class SweepConfig:
    name: str = "quickstart"  # sweep definition: a name in sweeps/ or a path to a YAML file (`sweep=NAME` sets it)
    # most arms per process, trained fused on one pass over the data (same batch size and seed)
    pack: int = checked(8, min=1)
    max_retries: int = checked(1, min=0)  # times a failed arm is retried when the sweep runs again
    # run ids to train, the rest left alone; empty = all (a job gets its pack)
    arms: list[str] = field(default_factory=list)


@dataclass
class RayConfig:
    address: str = ""  # Ray cluster to join ("auto" or host:port); empty = start a local instance
    num_cpus: int = checked(0, min=0)  # CPUs of a local instance; 0 = all of this machine's


@dataclass
class TrackingConfig:
    # W&B: disabled, offline, online, or auto (online with WANDB_API_KEY set, else offline)
    mode: str = checked("auto", choices=TRACKING_MODES)
    project: str = "sparse-dictionary-scaling"  # W&B project
    entity: str = ""  # W&B entity (team or user); empty = the account's default


@dataclass
class FitConfig:
    results: list[str] = field(default_factory=list)  # results tables to fit; empty = <out_dir>/sweep/results.parquet
    n_bootstrap: int = checked(1000, min=0)  # bootstrap resamples behind each confidence interval
    seed: int = 0  # seed of the bootstrap
    # results-table columns to fit against compute at each budget's lowest-loss run, e.g. [explained_variance]
    metrics: list[str] = field(default_factory=list)


@dataclass
class ExportConfig:
    # the peer library whose folder format each dictionary is written in
    format: str = checked("saelens", choices=EXPORT_FORMATS)
    run: str = ""  # one run folder to export (holding coder/ and metrics.json); empty = arms of <out_dir>/sweep
    runs: list[str] = checked(default_factory=list, pattern=".+")  # run folders to export, as export.run each
    arms: list[str] = field(default_factory=list)  # run ids of <out_dir>/sweep/runs to export; empty = export.select
    # without run or arms: best (the lowest-loss finished arm of each budget) or all (every finished arm)
    select: str = checked("best", choices=EXPORT_SELECTIONS)
    dir: str = ""  # folder receiving one <run id>/ folder per dictionary; empty = <out_dir>/export/<format>
    # circuit-tracer: the selected single-layer transcoders (one per layer) as one transcoder set, not one set each
    combine: bool = False

    def validate(self, at: str) -> None:
        if self.run and self.arms:
            raise ConfigError(f"{at}arms: export.run names one run folder already; expected no arms, got {self.arms}")
        if self.runs and (self.run or self.arms):
            raise ConfigError(
                f"{at}runs: names the run folders to export; expected no export.run or export.arms beside it"
            )
        if self.combine and self.format != "circuit-tracer":
            raise ConfigError(
                f"{at}combine: combines transcoders into one circuit-tracer transcoder set; "
                f"expected export.format=circuit-tracer, got {self.format}"
            )


@dataclass
class TraceConfig:
    run: str = ""  # the run folder of the CLT or transcoder to trace; empty = trace.runs, trace.arms or trace.select
    # run folders of single-layer transcoders, one per layer, traced together as one transcoder set
    runs: list[str] = checked(default_factory=list, pattern=".+")
    arms: list[str] = field(default_factory=list)  # run ids of <out_dir>/sweep/runs (several: one set, as runs)
    # without run, runs or arms: the lowest-loss finished arm of the sweep's largest budget (best only)
    select: str = checked("best", choices=("best",))
    prompts: list[str] = field(default_factory=list)  # prompts to trace, each one graph
    prompts_file: str = ""  # a text file of more prompts to trace, one a line (empty lines skipped)
    dir: str = ""  # folder of the graph files, report.md and scores.json; empty = <out_dir>/trace
    node_threshold: float = checked(0.8, min=0, max=1)  # pruning keeps the nodes holding this share of influence
    edge_threshold: float = checked(0.98, min=0, max=1)  # pruning keeps the edges holding this share of influence
    batch_size: int = checked(256, min=1)  # source nodes per backward pass of the attribution (memory against time)
    max_feature_nodes: int = checked(0, min=0)  # most feature nodes of a graph, the most influential; 0 = all
    offload: str = checked("none", choices=OFFLOADS)  # where model parts wait while attribution does not need them
    max_n_logits: int = checked(10, min=1)  # most logit nodes of a graph
    # logit nodes are added, most probable first, until their probabilities sum to this
    desired_logit_prob: float = checked(0.95, gt=0, max=1)
    serve: bool = False  # after tracing, serve the graphs to circuit-tracer's frontend on loopback
    port: int = checked(8032, min=1, max=65535)  # loopback port of the graph server (serve=true)
    n_examples: int = checked(10, min=1)  # top-activating contexts on each feature's card

    def validate(self, at: str) -> None:
        named = [name for name in ("run", "runs", "arms") if getattr(self, name)]
        if len(named) > 1:
            raise ConfigError(f"{at}{named[1]}: trace.{named[0]} names the dictionary already; expected one of them")


@dataclass
class PipelineConfig:
    out_dir: str = "runs/quickstart"  # folder holding store.zarr, sweep/ and fit/
    sweep: SweepConfig = field(default_factory=SweepConfig)
    dry_run: bool = False  # sweep: print the plan and stop before launching anything
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    coder: CoderConfig = field(default_factory=CoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)

    def validate(self, at: str) -> None:
        """The rules that tie fields of several groups together."""
        shortest = 2 + int(self.harvest.drop_bos)
        if self.data.context_len < shortest:
            raise ConfigError(f"{at}data.context_len: expected at least {shortest}, got {self.data.context_len}")
        per_shard, per_chunk = self.harvest.contexts_per_shard, self.store.contexts_per_chunk
        if per_chunk < per_shard and per_shard % per_chunk:  # a chunk larger than a shard shrinks to the shard
            raise ConfigError(
                f"{at}store.contexts_per_chunk: {per_chunk} must divide harvest.contexts_per_shard ({per_shard})"
            )
        self._validate_gpus(at)
        self._validate_out_dir(at)

    def _validate_out_dir(self, at: str) -> None:
        """The out_dir, or the nearest of its parents that exists, must be a folder this user can write in."""
        path = Path(self.out_dir)
        existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
        if not existing.is_dir():
            raise ConfigError(f"{at}out_dir: {existing} is a file; expected a folder (or a path to create one at)")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"{at}out_dir: {existing} is not writable; expected a folder this user can write in")

    def _validate_gpus(self, at: str) -> None:
        gpus, name = self.launcher.gpus_per_arm, self.launcher.name
        if name == "slurm" and gpus != int(gpus):
            raise ConfigError(f"{at}launcher.gpus_per_arm: Slurm jobs take whole GPUs, got {gpus}")
        if name != "ray" or gpus <= 1:
            return
        # Above one GPU a Ray arm trains on one Ray Train worker per GPU; train.parallel splits the work over them.
        if gpus != int(gpus):
            raise ConfigError(f"{at}launcher.gpus_per_arm: above 1 an arm takes whole GPUs, one per worker; got {gpus}")
        if self.train.parallel == "none":
            raise ConfigError(
                f"{at}train.parallel: launcher.gpus_per_arm={gpus:g} gives an arm several GPUs; "
                f"expected ddp or features, got {self.train.parallel!r}"
            )


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=PipelineConfig)
