"""One launched job of a sweep: the Hydra task function that trains one pack of arms.

The launcher composes the job's configuration from overrides; `sweep.arms` names the pack, and the
plan written before launching (`<out_dir>/sweep/plan.json`) gives each arm's shape, the hook and the group.
"""

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.config import PipelineConfig
from pipeline.layout import OutDir, SweepDir
from pipeline.sweep.arm import run_arms
from pipeline.sweep.plan import Arm
from pipeline.distributed.ray_train import needs_workers, run_pack_on_workers


def planned_arms(sweep_dir: Path, run_ids: list[str]) -> tuple[dict, list[Arm]]:
    """The plan and the arms of it named by `run_ids`, in that order."""
    plan_file = SweepDir(sweep_dir).plan
    plan = json.loads(plan_file.read_text())
    by_id = {a["run_id"]: Arm(**a) for a in plan["arms"]}
    missing = [r for r in run_ids if r not in by_id]
    if missing:
        raise KeyError(f"sweep.arms: {missing[0]} is not an arm of the plan in {plan_file}")
    return plan, [by_id[r] for r in run_ids]


def train_pack(job_cfg: DictConfig) -> list[dict]:
    """Trains the arms of `sweep.arms` fused in this process and returns their result rows."""
    cfg: PipelineConfig = OmegaConf.to_object(job_cfg)
    sweep_dir = OutDir(cfg.out_dir).sweep.path
    plan, arms = planned_arms(sweep_dir, list(cfg.sweep.arms))
    train = run_pack_on_workers if needs_workers(cfg.launcher) else run_arms
    rows = train(cfg, arms, plan["hook"], sweep_dir, group=plan["sweep"])
    done = sum(r["status"] == "done" for r in rows)
    print(f"sweep: pack {arms[0].run_id} (+{len(arms) - 1}): {done} done, {len(rows) - done} failed", flush=True)
    return rows
