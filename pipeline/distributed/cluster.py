"""Joining a Ray cluster, or starting a local instance when none is configured."""

import logging
import os
import sys

from pipeline.config import RayConfig
from pipeline.distributed.reaper import watch
from pipeline.errors import ConfigError

# How `local_resources` counts each resource, for the messages that name it.
_COUNTED = {"CPU": "ray.num_cpus, else this machine's CPUs", "GPU": "the GPUs torch sees"}
PROBE_TIMEOUT_S = 5.0  # how long a ray.address host:port may take to accept a connection


def connect(cfg: RayConfig) -> None:
    """Idempotent: a process that is already connected (a test session, a Ray job) keeps its connection."""
    import ray

    if ray.is_initialized():
        return
    check_address(cfg)
    try:
        ray.init(
            address=cfg.address or None,
            num_cpus=(cfg.num_cpus or None) if not cfg.address else None,
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=True,
        )
    except ConnectionError as err:
        raise ConfigError(f"ray.address: no Ray cluster found at {cfg.address!r}: {str(err).splitlines()[0]}") from err
    if not cfg.address:
        # Ray's own clean-up after a killed driver leaves some of the local instance's processes running.
        watch(ray._private.worker._global_node.get_session_dir_path())


def check_address(cfg: RayConfig) -> None:
    """ConfigError within seconds when a host:port address is no Ray cluster that answers (ray.init retries for
    minutes)."""
    target = cfg.address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return  # empty, "auto" or a bare host: ray.init finds the cluster or fails quickly
    why = _no_client_server(target) if cfg.address.startswith("ray://") else _no_gcs(target)
    if why:
        raise ConfigError(
            f"ray.address: {cfg.address} is no Ray cluster that answers in {PROBE_TIMEOUT_S:g} s ({why}); "
            "expected the address of a running cluster's head, or empty for a local instance"
        )


def _no_gcs(target: str) -> str | None:
    """Why no Ray GCS answers at host:port, or None when one does (refusing an unauthenticated call is answering)."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")(b"", timeout=PROBE_TIMEOUT_S)
        except grpc.RpcError as err:
            failed = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED)
            return f"{err.code().name.lower()}: {err.details()}" if err.code() in failed else None
    return None


def _no_client_server(target: str) -> str | None:
    """Why nothing accepts a gRPC connection at a Ray Client host:port, or None."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=PROBE_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            return "no connection"
    return None


def local_resources(cfg: RayConfig) -> dict[str, float] | None:
    """The CPUs and GPUs of the local instance `connect` would start here, on its one node; None when it would
    join a cluster instead (`ray.address`, `RAY_ADDRESS`, or a connection this process already holds).

    A joined cluster may grow (an autoscaler adds nodes), so only the placement timeout can tell what it cannot
    hold. The count is an upper bound of Ray's own (which also heeds container limits): nothing it could hold
    is refused.
    """
    ray = sys.modules.get("ray")  # not imported yet: not connected either
    if cfg.address or os.environ.get("RAY_ADDRESS") or (ray is not None and ray.is_initialized()):
        return None
    import torch

    return {"CPU": cfg.num_cpus or os.cpu_count() or 1, "GPU": torch.cuda.device_count()}


def check_fits(cfg: RayConfig, asked: dict[str, float], fields: dict[str, str], what: str) -> None:
    """ConfigError before any work when the local instance could never hold `asked` (resource -> amount, on one
    node) at once; `fields` names the field behind each resource, `what` what asks for them."""
    have = local_resources(cfg)
    for resource, amount in asked.items():
        if have is not None and amount > have[resource]:
            raise ConfigError(
                f"{fields[resource]}: {resource} {amount:g} asked for {what} at once; the local Ray instance "
                f"started here has {resource} {have[resource]:g} ({_COUNTED[resource]}), so it could never place it"
            )
