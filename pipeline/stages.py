"""Each subcommand as a function of the configuration: validate everything first, then do the work."""

from dataclasses import replace
from pathlib import Path

from pipeline.activations.loading import open_activation_data
from pipeline.coders.registry import own_config
from pipeline.config import PipelineConfig
from pipeline.distributed.process_group import process_group
from pipeline.distributed.ray_train import run_as_launched
from pipeline.errors import ConfigError
from pipeline.export.stage import run_export
from pipeline.fit.metric_laws import check_metric_names
from pipeline.fit.stage import read_results, run_fit, summary_table
from pipeline.harvest import stage as harvest_stage
from pipeline.layout import OutDir
from pipeline.models.loading import pick_device
from pipeline.progress import Progress
from pipeline.store.activation_store import open_store
from pipeline.store.schema import check_trainable, harvest_command
from pipeline.store.verify import corrupt_shards, tokens_damage
from pipeline.sweep import stage as sweep_stage
from pipeline.sweep.arm import make_scorer, make_splicer
from pipeline.sweep.launch import check_launcher
from pipeline.sweep.plan import format_table
from pipeline.sweep.results import METRIC_COLUMNS
from pipeline.trace.stage import run_trace
from pipeline.track.wandb_run import open_tracker, resolve_mode
from pipeline.train.centre import check_center
from pipeline.train.parallel import check_kind
from pipeline.train.trace_prompts import check_trace_prompts, check_traceable
from pipeline.train.trainer import train_run


def harvest(cfg: PipelineConfig) -> None:
    harvest_stage.run_harvest(cfg)


def train(cfg: PipelineConfig) -> None:
    out = OutDir(cfg.out_dir)
    store = open_store(out.store)
    hook = cfg.train.hook or store.hooks[0]
    check_trainable(store.attrs, cfg.model.name, hook, str(store.path))
    check_kind(cfg.coder.kind, cfg.train.parallel)
    check_center(cfg.coder.kind, cfg.train.center, store.attrs, hook)
    check_trace_prompts(cfg)
    check_traceable(cfg, hook, f"the {cfg.coder.kind}")
    run = out.train_run(own_config(cfg.coder), replace(cfg.train, hook=hook))
    if run.finished():
        print(f"train {run.id}: finished in {run.folder}; nothing to do")
        return
    run.record()
    run_as_launched(train_on_rank, (cfg,), cfg, name=f"train-{cfg.coder.kind}-N{cfg.coder.n_features}")


def train_on_rank(cfg: PipelineConfig) -> None:
    """The train stage's body in this process: alone, or as one rank of torchrun or Ray Train.

    Every rank runs it with the same config (`train.parallel` says how they split the work); rank 0
    writes the run folder and reports.
    """
    out = OutDir(cfg.out_dir)
    store = open_store(out.store)
    hook = cfg.train.hook or store.hooks[0]
    run = out.train_run(own_config(cfg.coder), replace(cfg.train, hook=hook))
    run_id, run_dir = run.id, run.folder
    device = pick_device(cfg.train.device)
    with process_group(device) as world:
        data = open_activation_data(store, hook, cfg.train, device)
        splicer = make_splicer(store, cfg.train, device) if world.main else None
        scorer = make_scorer(store, cfg, device) if world.main else None
        metrics = train_run(cfg.coder, cfg.train, data, run_dir, cfg.tracking, run_id, "train", splicer, scorer)
    if world.main:
        print(
            f"train {run_id}: loss {metrics['loss']:.4g}, fvu {metrics['fvu']:.3f}, l0 {metrics['l0']:.1f}, "
            f"dead {metrics['dead_fraction']:.1%}; weights and metrics.json in {run_dir}"
        )


def verify(cfg: PipelineConfig) -> None:
    """Every byte of every complete shard, and the tokens, against their checksums; ConfigError if any differs."""
    store = open_store(OutDir(cfg.out_dir).store, harvested=False)
    complete = store.complete_shards()
    corrupt = corrupt_shards(store, "full", Progress("verify", len(complete), "shards"))
    tokens = tokens_damage(store)
    for shard, why in corrupt.items():
        print(f"verify: shard {shard} is corrupt ({why})")
    if tokens:
        print(f"verify: the {tokens}")
    if corrupt or tokens:
        raise ConfigError(
            f"out_dir: {len(corrupt)} of {len(complete)} complete shards{' and the tokens' if tokens else ''} of "
            f"{store.path} are corrupt; repair with: {harvest_command(store.attrs, store.path.parent)}"
        )
    print(f"verify: the {len(complete)} complete shards of {store.path} and its tokens match their checksums")


def sweep(cfg: PipelineConfig) -> None:
    sweep_stage.run_sweep(cfg)


def fit_paths(cfg: PipelineConfig) -> list[Path]:
    return [Path(p) for p in cfg.fit.results] or [OutDir(cfg.out_dir).sweep.results]


def fit(cfg: PipelineConfig) -> dict:
    table = read_results(fit_paths(cfg))
    out = OutDir(cfg.out_dir).fit
    result = run_fit(table, out, cfg.fit)
    track_fit(cfg, table, result, out)
    print(summary_table(result))
    print(f"fit: report in {out / 'report.md'}, numbers in {out / 'fit.json'}")
    return result


def track_fit(cfg: PipelineConfig, table, result: dict, out: Path) -> None:
    """One W&B run for the sweep as a whole: its results table, the fitted laws and the plots."""
    laws = {k: result[k] for k in ("n_opt", "tokens_opt", "lr_opt") if result.get(k)}
    tracker = open_tracker(
        cfg.tracking,
        name=f"fit-{Path(cfg.sweep.name).stem}",
        group=Path(cfg.sweep.name).stem,
        config={"fit": laws},
        folder=out,
        job_type="fit",
    )
    if tracker is None:
        return
    tracker.log_table("results", table)
    tracker.log_images([out / name for name in result.get("plots", [])])
    tracker.summary({f"{law}/{part}": laws[law][part] for law in laws for part in ("coefficient", "exponent")})
    tracker.finish()


def export(cfg: PipelineConfig) -> None:
    run_export(cfg)


def trace(cfg: PipelineConfig) -> None:
    run_trace(cfg)


def run(cfg: PipelineConfig) -> None:
    """All stages in order; the sweep is planned against the store the harvest will write, before any work."""
    if cfg.fit.results:
        raise ConfigError("fit.results: `pipeline run` fits its own sweep; use `pipeline fit` for other tables")
    check_metric_names(list(cfg.fit.metrics), (*METRIC_COLUMNS, "tokens", "flops"), "a sweep's results table")
    attrs = harvest_stage.validate(cfg)
    spec, _, arms = sweep_stage.validate(cfg, attrs)
    if cfg.dry_run:
        print(format_table(arms))
        print(f"run {spec.name}: {len(arms)} arms planned; dry run, nothing harvested or launched")
        return
    harvest(cfg)
    sweep(cfg)
    fit(cfg)


STAGES = {
    "harvest": harvest, "train": train, "sweep": sweep, "fit": fit, "run": run, "verify": verify, "export": export,
    "trace": trace,
}  # fmt: skip


def run_stage(name: str, cfg: PipelineConfig) -> None:
    resolve_mode(cfg.tracking)
    check_launcher(cfg)
    STAGES[name](cfg)
