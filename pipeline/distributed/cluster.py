"""Joining a Ray cluster, or starting a local instance when none is configured."""

import logging

from pipeline.config import RayConfig


def connect(cfg: RayConfig) -> None:
    """Idempotent: a process that is already connected (a test session, a Ray job) keeps its connection."""
    import ray

    if ray.is_initialized():
        return
    ray.init(
        address=cfg.address or None,
        num_cpus=(cfg.num_cpus or None) if not cfg.address else None,
        include_dashboard=False,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
