"""The sweep stage: plan every arm, write the plan, run the arms not yet done, gather the results table."""

from pathlib import Path

from pipeline.atomic import write_json_atomic
from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError
from pipeline.layout import OutDir
from pipeline.store.activation_store import open_store
from pipeline.store.schema import check_trainable, training_rows
from pipeline.sweep.configs import arm_config, write_arm_configs
from pipeline.sweep.launch import check_launcher, launch
from pipeline.sweep.plan import Arm, format_table, plan
from pipeline.sweep.results import gather, read_row
from pipeline.sweep.spec import SweepSpec, kind_sparsities, load_spec
from pipeline.track.wandb_run import open_tracker
from pipeline.train.centre import check_center
from pipeline.train.parallel import check_kind
from pipeline.train.trace_prompts import check_trace_prompts, check_traceable


def plan_arms(cfg: PipelineConfig, spec: SweepSpec, store_attrs: dict) -> tuple[str, list[Arm]]:
    """(hook, arms) for a store with these attributes (a real store, or the one a harvest will write)."""
    hook = cfg.train.hook or store_attrs["hooks"][0]
    check_trainable(store_attrs, cfg.model.name, hook, str(OutDir(cfg.out_dir).store))
    layout = store_attrs["layout"]
    n_rows = layout["n_contexts"] * layout["rows_per_context"]
    return hook, plan(spec, store_attrs["model"]["d_model"], training_rows(n_rows, cfg.train.eval_tokens))


def validate(cfg: PipelineConfig, store_attrs: dict) -> tuple[SweepSpec, str, list[Arm]]:
    spec = load_spec(cfg.sweep.name)
    for kind in kind_sparsities(spec):
        check_kind(kind, cfg.train.parallel)
    hook, arms = plan_arms(cfg, spec, store_attrs)
    for kind in kind_sparsities(spec):
        check_center(kind, cfg.train.center, store_attrs, hook)
    check_trace_prompts(cfg)
    for arm in arms:
        check_traceable(arm_config(cfg, arm), hook, f"arm {arm.run_id}")
    unknown = set(cfg.sweep.arms) - {a.run_id for a in arms}
    if unknown:
        raise ConfigError(f"sweep.arms: {min(unknown)} is not an arm of sweep {spec.name}")
    return spec, hook, arms


def chosen(arms: list[Arm], run_ids: list[str]) -> list[Arm]:
    """The arms `sweep.arms` names, or all of them when it names none."""
    return [a for a in arms if a.run_id in run_ids] if run_ids else arms


def pending_arms(arms: list[Arm], folder: Path, max_retries: int) -> list[Arm]:
    """Arms without a `done` row, less those that failed more than `max_retries` times after the first try."""
    todo = []
    for arm in arms:
        row = read_row(folder, arm.run_id)
        if row is None or (row["status"] != "done" and row["attempts"] <= max_retries):
            todo.append(arm)
    return todo


def run_sweep(cfg: PipelineConfig):
    check_launcher(cfg)
    out = OutDir(cfg.out_dir)
    store = open_store(out.store)
    spec, hook, arms = validate(cfg, store.attrs)
    folder = out.sweep.path
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out.sweep.plan,
        {"sweep": spec.name, "hook": hook, "store": str(store.path), "arms": [a.as_dict() for a in arms]},
    )
    write_arm_configs(folder, cfg, arms)
    if cfg.dry_run:
        print(format_table(arms))
        print(
            f"sweep {spec.name}: {len(arms)} arms planned in {out.sweep.plan}, their configurations in "
            f"{out.sweep.arms}; dry run, nothing launched"
        )
        return None
    picked = chosen(arms, cfg.sweep.arms)
    todo = pending_arms(picked, folder, cfg.sweep.max_retries)
    print(
        f"sweep {spec.name}: {len(arms)} arms, {len(picked) - len(todo)} already finished, {len(todo)} to run "
        f"(launcher={cfg.launcher.name})",
        flush=True,
    )
    launch(cfg, todo, hook, folder, group=spec.name)
    table = gather(folder)
    failed = table[table.status != "done"]
    print(f"sweep {spec.name}: {len(table) - len(failed)} done, {len(failed)} failed; table in {out.sweep.results}")
    track_results(cfg, spec.name, table, folder)
    return table


def track_results(cfg: PipelineConfig, name: str, table, folder: Path) -> None:
    """One W&B run for the sweep as a whole, grouped with its arms' runs: the results table, once all arms ended."""
    config = {
        "sweep": name,
        "launcher": cfg.launcher.name,
        "pack": cfg.sweep.pack,
        "max_retries": cfg.sweep.max_retries,
    }
    tracker = open_tracker(
        cfg.tracking, name=f"sweep-{name}", group=name, config=config, folder=folder, job_type="sweep"
    )
    if tracker is None:
        return
    done = int((table.status == "done").sum())
    tracker.log_table("results", table)
    tracker.summary({"arms": len(table), "done": done, "failed": len(table) - done})
    tracker.finish()
