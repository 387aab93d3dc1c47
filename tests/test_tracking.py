import subprocess
import sys

import pytest
import torch

from pipeline.config import CoderConfig, TrackingConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.track.wandb_run import resolve_mode
from pipeline.train.data import ActivationData
from pipeline.train.trainer import train_run


def test_auto_mode_is_offline_without_an_api_key_and_online_with_one(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode(TrackingConfig(mode="auto")) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(TrackingConfig(mode="auto")) == "online"
    with pytest.raises(ConfigError, match="tracking.mode"):
        resolve_mode(TrackingConfig(mode="loud"))


def test_an_offline_run_records_the_arm_and_its_curve(synthetic_store, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    data = ActivationData(synthetic_store, "resid_post.0", TrainConfig(eval_tokens=512), torch.device("cpu"))
    cfg = TrainConfig(tokens=2560, batch_size=256, log_every=2)
    metrics = train_run(CoderConfig(n_features=32), cfg, data, tmp_path, TrackingConfig(mode="offline"), "arm-1", "grp")
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and metrics["wandb_run_id"] and runs[0].name.endswith(metrics["wandb_run_id"])
    assert list(runs[0].glob("*.wandb"))  # the run's log of metrics and config


def test_disabled_tracking_never_imports_wandb(synthetic_store, tmp_path):
    script = (
        "import sys, torch\n"
        "from pipeline.config import CoderConfig, TrackingConfig, TrainConfig\n"
        "from pipeline.store.activation_store import ActivationStore\n"
        "from pipeline.train.data import ActivationData\n"
        "from pipeline.train.trainer import train_run\n"
        f"store = ActivationStore({str(synthetic_store.path)!r})\n"
        "data = ActivationData(store, 'resid_post.0', TrainConfig(eval_tokens=512), torch.device('cpu'))\n"
        f"train_run(CoderConfig(n_features=8), TrainConfig(tokens=512, batch_size=256), data, __import__('pathlib').Path({str(tmp_path)!r}), TrackingConfig(mode='disabled'), 'a', 'g')\n"
        "print('wandb' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_the_fit_is_logged_as_one_offline_run_with_table_and_plots(tmp_path, monkeypatch):
    from pipeline.cli import main
    from test_fit import synthetic_sweep

    monkeypatch.setenv("WANDB_MODE", "offline")
    results = tmp_path / "results.parquet"
    synthetic_sweep(n_widths=5, n_lrs=3).to_parquet(results)
    assert main(["fit", f"out_dir={tmp_path}", f"fit.results=[{results}]", "fit.n_bootstrap=50", "tracking.mode=offline"]) == 0
    runs = list((tmp_path / "fit" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    media = {p.name.split("_")[0] for p in runs[0].glob("files/media/images/*.png")}
    assert {"isoflop", "frontier", "optima"} <= media
