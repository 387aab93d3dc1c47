import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.activations.loading import ActivationData
from pipeline.coders.registry import AnyCoderConfig
from pipeline.config import TrackingConfig, TrainConfig
from pipeline.train.trainer import train_run


def test_an_offline_run_records_the_arm_and_its_curve(synthetic_store, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    data = ActivationData(synthetic_store, "resid_post.0", TrainConfig(eval_tokens=512), torch.device("cpu"))
    cfg = TrainConfig(tokens=2560, batch_size=256, log_every=2)
    metrics = train_run(
        AnyCoderConfig(n_features=32), cfg, data, tmp_path, TrackingConfig(mode="offline"), "arm-1", "grp"
    )
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and metrics["wandb_run_id"] and runs[0].name.endswith(metrics["wandb_run_id"])
    assert list(runs[0].glob("*.wandb"))  # the run's log of metrics and config


@pytest.mark.cluster
def test_disabled_tracking_never_imports_wandb(synthetic_store, tmp_path):
    script = (
        "import sys, torch\n"
        "from pipeline.coders.registry import AnyCoderConfig\n"
        "from pipeline.config import TrackingConfig, TrainConfig\n"
        "from pipeline.store.activation_store import ActivationStore\n"
        "from pipeline.activations.loading import ActivationData\n"
        "from pipeline.train.trainer import train_run\n"
        f"store = ActivationStore({str(synthetic_store.path)!r})\n"
        "data = ActivationData(store, 'resid_post.0', TrainConfig(eval_tokens=512), torch.device('cpu'))\n"
        "train_run(AnyCoderConfig(n_features=8), TrainConfig(tokens=512, batch_size=256), data, "
        f"__import__('pathlib').Path({str(tmp_path)!r}), TrackingConfig(mode='disabled'), 'a', 'g')\n"
        "print('wandb' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_the_fit_is_logged_as_one_offline_run_with_table_and_plots(tmp_path, monkeypatch):
    from pipeline.cli import main

    from unit.test_fit import synthetic_sweep

    monkeypatch.setenv("WANDB_MODE", "offline")
    results = tmp_path / "results.parquet"
    synthetic_sweep(n_widths=5, n_lrs=3).to_parquet(results)
    assert (
        main(["fit", f"out_dir={tmp_path}", f"fit.results=[{results}]", "fit.n_bootstrap=50", "tracking.mode=offline"])
        == 0
    )
    runs = list((tmp_path / "fit" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    media = {p.name.split("_")[0] for p in runs[0].glob("files/media/images/*.png")}
    assert {"isoflop", "frontier", "optima"} <= media


def wandb_records(run_folder: Path) -> list:
    """The records of an offline run's `.wandb` log (LevelDB's log format: 32 KiB blocks of CRC, length, type, data)."""
    from wandb.proto import wandb_internal_pb2

    [log] = run_folder.glob("*.wandb")
    data, block = log.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []  # after the file header: magic, a 2-byte key, the version
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if pos + 7 + length > len(data):  # a record still being written
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def run_record(run_folder: Path, wait_s: float = 60.0):
    """The run record of an offline run. W&B's service process writes the log and may still be flushing it when
    `finish` returns on a loaded machine, so the record is waited for, up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while not (runs := [r.run for r in wandb_records(run_folder) if r.WhichOneof("record_type") == "run"]):
        assert time.monotonic() < deadline, f"{run_folder}: no run record in its log after {wait_s} s"
        time.sleep(0.5)
    return runs[0]


def test_a_sweep_logs_its_results_table_in_one_sweep_run_grouped_with_its_arms(synthetic_store, tmp_path, monkeypatch):
    from pipeline.sweep.results import COLUMNS
    from pipeline.sweep.stage import run_sweep

    from conftest import compose

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "store.zarr").symlink_to(synthetic_store.path)
    sweep = tmp_path / "tracked.yaml"
    sweep.write_text(json.dumps({"budgets": [2e7], "n_features": [32], "lrs": [1e-3], "batch_size": 256}))
    cfg = compose(
        f"out_dir={tmp_path}", f"sweep={sweep}", "model.name=synthetic", "train.eval_tokens=512", "tracking.mode=auto"
    )
    table = run_sweep(cfg)

    [sweep_run] = (tmp_path / "sweep" / "wandb").glob("offline-run-*")
    record = run_record(sweep_run)
    assert (record.run_group, record.job_type, record.display_name) == ("tracked", "sweep", "sweep-tracked")
    [logged] = sweep_run.glob("files/media/table/results_*.table.json")
    logged = json.loads(logged.read_text())
    assert logged["columns"] == list(COLUMNS) and len(logged["data"]) == len(table) == 1
    row = dict(zip(logged["columns"], logged["data"][0]))
    assert row["run_id"] == table.run_id[0] and row["status"] == "done" and row["wandb_run_id"]

    [arm_run] = (tmp_path / "sweep" / "runs" / row["run_id"] / "wandb").glob("offline-run-*")
    assert arm_run.name.endswith(row["wandb_run_id"]) and run_record(arm_run).run_group == "tracked"
