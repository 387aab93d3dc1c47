"""Training coders on one hook's activations: a single run, or a fused grid of arms sharing each batch.

Every arm of a grid sees the batches it would see alone (the order is a pure function of the seed
and the step) and is initialised from its own seed, so each arm's result equals the arm trained
alone: to the bit, or for arms trained as one stack (`stack`) up to the rounding of batched
products. Reading the store and building each batch happens once for all of them.
"""

from pathlib import Path

from pipeline.activations.loading import ActivationData
from pipeline.config import CoderConfig, TrackingConfig, TrainConfig
from pipeline.progress import Progress
from pipeline.train.arm_run import ArmRun, ArmSpec
from pipeline.train.host_memory import keep_freed_blocks
from pipeline.train.stack import build_stacks


def train_grid(
    specs: list[ArmSpec], data: ActivationData, tracking: TrackingConfig, splicer=None, scorer=None
) -> list[dict | Exception]:
    """Trains every arm on one pass over the data; each arm's metrics, or the exception that stopped it.

    Arms must share the batch size and the seed, which fix the batches they see. Arms of one shape
    that differ only in rate or penalty train as one stack (`stack`, `train.stack_arms`). With a
    `Splicer`, each arm's metrics also hold the spliced next-token loss change and KL; with a `CircuitScorer`,
    each transcoding arm's hold its circuit scores.
    """
    if len({(s.train.batch_size, s.train.seed) for s in specs}) != 1:
        raise ValueError("a fused grid needs one batch size and one seed for all its arms")
    keep_freed_blocks()  # a CPU's steps then reuse each other's large blocks
    outcomes: list[dict | Exception | None] = [None] * len(specs)
    stacks = build_stacks(_start_arms(specs, data, tracking, outcomes))
    if stacks:
        cfg = specs[0].train
        first, last = min(s.start_step for s in stacks), max(s.n_steps for s in stacks)
        label = specs[0].run_id if len(specs) == 1 else f"grid of {len(specs)} arms"
        progress = Progress(f"train {label}", last - first, "steps", every_s=5.0)
        for step, x in enumerate(data.batches(cfg.batch_size, last, cfg.seed, first), start=first):
            for stack in stacks:
                if stack.active(step):
                    for i, err in stack.step(x, step).items():  # arms that failed: they stop, the rest go on
                        outcomes[i] = err
                    if step + 1 == stack.n_steps:
                        for i, arm in stack.arms.items():
                            outcomes[i] = _finish(arm, data, splicer, scorer)
                        stack.arms.clear()
            stacks = [stack for stack in stacks if stack.arms]
            if not stacks:  # every arm has finished or failed: the rest of the data is not needed
                break
            progress.extra = "  ".join(f"loss {a.loss:.4g}" for a in [a for s in stacks for a in s.arms.values()][:4])
            progress.update(1)
        for stack in stacks:  # arms resumed at or past their last step
            for i, arm in stack.arms.items():
                outcomes[i] = _finish(arm, data, splicer, scorer)
    return outcomes


def _start_arms(
    specs: list[ArmSpec], data: ActivationData, tracking: TrackingConfig, outcomes: list
) -> dict[int, ArmRun]:
    """Each spec's run by grid position; a spec that cannot start gets its exception in `outcomes` instead."""
    arms = {}
    for i, spec in enumerate(specs):
        try:
            arms[i] = ArmRun(spec, data, tracking)
        except Exception as err:  # noqa: BLE001 - one bad arm must not stop the grid
            outcomes[i] = err
    return arms


def _finish(arm: ArmRun, data: ActivationData, splicer, scorer) -> dict | Exception:
    try:
        return arm.finish(data, splicer, scorer)
    except Exception as err:  # noqa: BLE001 - one arm's failure must not stop the grid
        arm.abandon()
        return err


def train_run(
    coder_cfg: CoderConfig,
    cfg: TrainConfig,
    data: ActivationData,
    run_dir: Path,
    tracking: TrackingConfig,
    run_id: str,
    group: str,
    splicer=None,
    scorer=None,
) -> dict:
    """Trains one coder (resuming from `run_dir`'s checkpoint if there is one); raises what stops it."""
    [outcome] = train_grid([ArmSpec(coder_cfg, cfg, run_dir, run_id, group)], data, tracking, splicer, scorer)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
