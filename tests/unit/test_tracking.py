"""The tracking mode a run resolves to (the runs that log are in tests/integration/test_tracking.py)."""

from pipeline.config import TrackingConfig
from pipeline.track.wandb_run import resolve_mode


def test_auto_mode_is_offline_without_an_api_key_and_online_with_one(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode(TrackingConfig(mode="auto")) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(TrackingConfig(mode="auto")) == "online"
