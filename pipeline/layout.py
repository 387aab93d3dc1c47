"""Where every stage keeps its artifacts under one out_dir, and what names a `pipeline train` run.

<out_dir>/store.zarr               the activation store (harvest)
<out_dir>/train/<run id>/          one train run: config.json, coder/, metrics.json, its checkpoint
<out_dir>/sweep/plan.json          the sweep's arms, written before any is launched
<out_dir>/sweep/arms.json          each arm's resolved configuration, which a launched job reads
<out_dir>/sweep/runs/<run id>/     one arm: result.json, coder/, metrics.json, its checkpoint
<out_dir>/sweep/results.parquet    every arm's row
<out_dir>/sweep/jobs/, submitit/   the launcher's job folders
<out_dir>/fit/                     fit.json, report.md, plots
<out_dir>/trace/                   graph files, report.md, scores.json of the traced prompts (trace)
<out_dir>/ray_train/               Ray Train's own records of runs on several workers
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.atomic import write_json_atomic
from pipeline.errors import ConfigError

METRICS = "metrics.json"  # a run folder's final metrics, written last: its presence means the run finished
RUN_CONFIG = "config.json"  # a train run folder's identity: the settings its result depends on

# Train settings that say where or how often a run computes, not what it computes: left out of its identity.
NOT_IN_IDENTITY = ("device", "stack_arms", "parallel", "log_every", "checkpoint_every", "prefetch_chunks")


class SweepDir:
    """A sweep's folder: its plan, its arms' run folders, its results table and its launcher's jobs."""

    def __init__(self, path: Path):
        self.path = Path(path)

    plan = property(lambda self: self.path / "plan.json")
    results = property(lambda self: self.path / "results.parquet")
    runs = property(lambda self: self.path / "runs")
    jobs = property(lambda self: self.path / "jobs")
    submitit = property(lambda self: self.path / "submitit")
    arms = property(lambda self: self.path / "arms.json")  # run id -> that arm's resolved configuration

    def run(self, run_id: str) -> Path:
        return self.runs / run_id


class OutDir:
    """The folders and files of one out_dir (see the module's docstring)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    store = property(lambda self: self.root / "store.zarr")
    sweep = property(lambda self: SweepDir(self.root / "sweep"))
    fit = property(lambda self: self.root / "fit")
    trace = property(lambda self: self.root / "trace")
    ray_train = property(lambda self: self.root / "ray_train")

    def train_run(self, coder, train) -> "TrainRun":
        """The run of these coder and train configs (resolved dataclasses; the coder's of its kind alone): its id
        and folder."""
        identity = train_identity(coder, train)
        return TrainRun(self.root / "train" / train_run_id(identity), identity)


def train_identity(coder, train) -> dict:
    """Every setting that changes a train run's result."""
    train = {k: v for k, v in asdict(train).items() if k not in NOT_IN_IDENTITY}
    return {"coder": asdict(coder), "train": train}


def train_run_id(identity: dict) -> str:
    """`<kind>_N<n_features>_lr<lr>_s<seed>_<hash>`: readable, and distinct for runs of distinct identities."""
    coder, train = identity["coder"], identity["train"]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{coder['kind']}_N{coder['n_features']}_lr{train['lr']:g}_s{train['seed']}_{digest}"


@dataclass(frozen=True)
class TrainRun:
    """One `pipeline train` run: its folder (named by its id) and the settings that make its result."""

    folder: Path
    identity: dict

    @property
    def id(self) -> str:
        return self.folder.name

    def finished(self) -> bool:
        """Whether the folder holds this run's finished result; ConfigError when it holds another configuration's."""
        if not (self.folder / METRICS).exists():
            return False
        path = self.folder / RUN_CONFIG
        recorded = json.loads(path.read_text()) if path.exists() else None
        if recorded is None:
            raise ConfigError(f"{self.folder}: holds a finished run of an unrecorded configuration; {_AWAY}")
        if recorded != self.identity:
            theirs, ours = _differences(recorded, self.identity)
            raise ConfigError(
                f"{self.folder}: holds a finished run of another configuration ({theirs}), not of this one "
                f"({ours}); {_AWAY}"
            )
        return True

    def record(self) -> None:
        """Writes the run's identity into its folder, before it trains there."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / RUN_CONFIG, self.identity)


_AWAY = "remove the folder or use another out_dir"


def _differences(recorded: dict, identity: dict) -> tuple[str, str]:
    """The settings on which two identities differ, as `group.field=value` lists: (recorded's, identity's)."""
    keys = sorted(
        (group, name)
        for group in identity.keys() | recorded.keys()
        for name in identity.get(group, {}).keys() | recorded.get(group, {}).keys()
        if identity.get(group, {}).get(name) != recorded.get(group, {}).get(name)
    )

    def listed(config: dict) -> str:
        return ", ".join(f"{group}.{name}={config.get(group, {}).get(name)!r}" for group, name in keys)

    return listed(recorded), listed(identity)
