"""Every stage's configuration, as dataclasses registered with Hydra's ConfigStore.

The YAML groups in `conf/` only change values; the fields, their types and their meaning live here.
"""

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from pipeline.errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "sentence-transformers/all-MiniLM-L6-v2"  # HF model id or local folder with a config and safetensors weights
    revision: str = "main"  # HF revision (branch, tag or commit) when loading from the hub
    dtype: str = "float32"  # torch dtype of the forward pass: float32, float16 or bfloat16
    device: str = "auto"  # torch device of the forward pass; auto = cuda when present, else cpu
    trust_remote_code: bool = False  # allow model code shipped with the weights (off unless needed)


@dataclass
class DataConfig:
    source: str = "stdlib"  # stdlib (Python's own docs, embedded), hf (a Hub data set, streamed) or files
    name: str = "python-stdlib-docs"  # HF data set id (source=hf); a label otherwise
    subset: str = ""  # HF data set configuration name, empty for none
    paths: list[str] = field(default_factory=list)  # local .txt, .jsonl/.json or .parquet files (source=files)
    text_field: str = "text"  # column holding the text (hf, jsonl, parquet)
    split: str = "train"  # data split: train or validation for stdlib; any split name for hf
    seed: int = 0  # seed of the context order: context k is a pure function of (data set, split, seed, k)
    context_len: int = 128  # tokens per context, BOS included
    shuffle_buffer: int = 10_000  # documents in the streaming shuffle buffer (source=hf)


@dataclass
class HarvestConfig:
    n_tokens: int = 200_000  # activation rows to harvest per hook (rounded up to whole shards)
    hooks: list[str] = field(default_factory=lambda: ["resid_post.3"])  # hook points: resid_post.L, mlp_in.L, mlp_out.L
    drop_bos: bool = True  # drop each context's first (BOS) position, whose activations are outliers
    batch_contexts: int = 16  # contexts per forward pass
    contexts_per_shard: int = 64  # contexts in one store shard, the unit of leasing and completion
    replicas: int = 2  # Ray actors, each holding one model replica
    cpus_per_replica: float = 1.0  # CPUs reserved for each replica (its placement-group bundle)
    gpus_per_replica: float = 0.0  # GPUs reserved for each replica; above 1 the model is split across them
    max_actor_restarts: int = 3  # times a dead actor is replaced before the harvest fails


@dataclass
class StoreConfig:
    dtype: str = "float16"  # on-disk activation dtype: float16, float32 or bfloat16 (kept as uint16 bits)
    codec: str = "none"  # compressor of the activation chunks: none, zstd or blosc-zstd
    contexts_per_chunk: int = 16  # contexts in one Zarr chunk (the unit of compression and partial reads)


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
    layers: list[int] = field(default_factory=list)  # clt: layers whose mlp_in.L it reads and mlp_out.L it predicts; empty otherwise
    tokens: int = 100_000  # training tokens (a sweep sets this from the budget)
    batch_size: int = 1024  # activation rows per optimiser step
    lr: float = 1e-3  # peak Adam learning rate
    lambda_warmup_frac: float = 0.05  # fraction of steps over which the sparsity coefficient ramps up from 0
    lr_decay_frac: float = 0.2  # final fraction of steps over which the learning rate decays linearly to 0
    grad_clip: float = 1.0  # maximum global gradient norm
    eval_tokens: int = 8192  # rows at the end of the store held out for final metrics, never trained on
    dead_window_tokens: int = 10_000_000  # a feature is dead if it never fired in this many most recent tokens
    splice_contexts: int = 32  # held-out contexts for the spliced next-token loss and KL (models with an LM head); 0 = off
    seed: int = 0  # seed of initialisation and data order
    device: str = "auto"  # torch device; auto = cuda when present, else cpu
    precision: str = "auto"  # matrix products in bfloat16 or float32; auto = bfloat16 on CUDA, float32 on CPU
    stack_arms: bool = True  # a fused grid trains arms of one shape, differing only in lr or penalty, as one batched coder
    log_every: int = 50  # steps between progress lines and tracked metrics
    checkpoint_every: int = 1000  # steps between checkpoints a killed run resumes from; 0 = none
    cache: str = "auto"  # where the training rows live: device, host, none (streamed from the store) or auto (the first that fits)
    shuffle_chunks: int = 64  # store chunks mixed in the streaming shuffle buffer (cache=none)
    prefetch_chunks: int = 8  # store chunks read ahead by the streaming loader's background thread
    parallel: str = "none"  # split over the launched ranks: none (one process), ddp (rows of each batch) or features (slices of the dictionary)


@dataclass
class LauncherConfig:
    name: str = "local"  # Hydra launcher of the sweep's packs: local (this process), ray (Ray tasks) or slurm (submitit jobs)
    gpus_per_arm: float = 0.0  # GPUs each pack of arms reserves (ray: fractions share a GPU; slurm: whole GPUs per job)
    cpus_per_arm: float = 1.0  # CPUs each pack of arms reserves (ray: per task; slurm: per job)
    partition: str = ""  # slurm: partition the jobs run in; empty = the site's default
    account: str = ""  # slurm: account the jobs are charged to; empty = the user's default
    qos: str = ""  # slurm: quality of service; empty = the default
    constraint: str = ""  # slurm: node features the jobs need (e.g. a GPU model); empty = any node
    time_min: int = 240  # slurm: wall-clock limit of one job (one pack of arms), in minutes
    mem_gb: int = 0  # slurm: memory of one job, in GB; 0 = the partition's default
    array_parallelism: int = 64  # slurm: most jobs of the sweep's job array running at once
    setup: list[str] = field(default_factory=list)  # slurm: shell lines each job runs first (e.g. module load cuda)
    submitit_folder: str = ""  # slurm: where submitit keeps scripts, pickles and logs; empty = <out_dir>/sweep/submitit/%j


@dataclass
class SweepConfig:
    name: str = "quickstart"  # sweep definition: a name in sweeps/ or a path to a YAML file (`sweep=NAME` sets it)
    pack: int = 8  # most arms per process, trained fused on one pass over the data (same batch size and seed)
    max_retries: int = 1  # times a failed arm is retried when the sweep runs again
    arms: list[str] = field(default_factory=list)  # run ids to train, the rest left alone; empty = all (a job gets its pack)


@dataclass
class RayConfig:
    address: str = ""  # Ray cluster to join ("auto" or host:port); empty = start a local instance
    num_cpus: int = 0  # CPUs of a local instance; 0 = all of this machine's


@dataclass
class TrackingConfig:
    mode: str = "auto"  # W&B: disabled, offline, online, or auto (online with WANDB_API_KEY set, else offline)
    project: str = "sparse-dictionary-scaling"  # W&B project
    entity: str = ""  # W&B entity (team or user); empty = the account's default


@dataclass
class FitConfig:
    results: list[str] = field(default_factory=list)  # results tables to fit; empty = <out_dir>/sweep/results.parquet
    n_bootstrap: int = 1000  # bootstrap resamples behind each confidence interval
    seed: int = 0  # seed of the bootstrap


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


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=PipelineConfig)
