"""One launched job of a sweep: the Hydra task function that trains one pack of arms.

A job is told only `out_dir` and its arms (`sweep.arms`); the plan written before launching
(`<out_dir>/sweep/plan.json`) gives each arm's shape, the hook and the group, and `arms.json` beside
it each arm's configuration.
"""

import json
from pathlib import Path

from omegaconf import DictConfig

from pipeline.distributed.ray_train import needs_workers, run_as_launched
from pipeline.layout import OutDir, SweepDir
from pipeline.sweep.arm import run_arms, run_arms_on_rank
from pipeline.sweep.configs import read_arm_configs
from pipeline.sweep.overrides import format_value
from pipeline.sweep.plan import Arm


def planned_arms(sweep_dir: Path, run_ids: list[str]) -> tuple[dict, list[Arm]]:
    """The plan and the arms of it named by `run_ids`, in that order."""
    plan_file = SweepDir(sweep_dir).plan
    plan = json.loads(plan_file.read_text())
    by_id = {a["run_id"]: Arm(**a) for a in plan["arms"]}
    missing = [r for r in run_ids if r not in by_id]
    if missing:
        raise KeyError(f"sweep.arms: {missing[0]} is not an arm of the plan in {plan_file}")
    return plan, [by_id[r] for r in run_ids]


def job_overrides(out_dir: Path, run_ids: list[str]) -> list[str]:
    """All a job is told: where the sweep is, and which of its arms to train."""
    return [f"out_dir={format_value(str(out_dir))}", f"sweep.arms={format_value(run_ids)}"]


def train_pack(job_cfg: DictConfig) -> list[dict]:
    """Trains the arms of `sweep.arms` fused in this process (or on several workers) and returns their result rows."""
    sweep_dir = OutDir(job_cfg.out_dir).sweep.path
    plan, arms = planned_arms(sweep_dir, list(job_cfg.sweep.arms))
    configs = read_arm_configs(sweep_dir, [a.run_id for a in arms])
    pack, cfg = (arms, configs, plan["hook"], sweep_dir, plan["sweep"]), configs[0]
    # With several GPUs for the pack, each Ray Train worker trains it and rank 0 writes the rows.
    body = run_arms_on_rank if needs_workers(cfg.launcher) else run_arms
    rows = run_as_launched(body, pack, cfg, name=f"pack-{arms[0].run_id}")
    done = sum(r["status"] == "done" for r in rows)
    print(f"sweep: pack {arms[0].run_id} (+{len(arms) - 1}): {done} done, {len(rows) - done} failed", flush=True)
    return rows
