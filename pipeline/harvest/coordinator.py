"""Leasing shards to Ray actors: one writer per shard, and a dead actor's shard goes to a new actor."""

import os
from collections import deque

from pipeline.config import PipelineConfig
from pipeline.harvest.worker import HarvestWorker
from pipeline.progress import Progress

# Tests set this to make the first actor exit mid-way through the named shard.
FAULT_ENV = "PIPELINE_TEST_KILL_ACTOR_AT_SHARD"


class HarvestError(RuntimeError):
    pass


def run_actors(store_path: str, pending: list[int], cfg: PipelineConfig, n_layers: int, rows_per_shard: int) -> None:
    """Harvests every shard in `pending`; returns when each has its completion record."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    h = cfg.harvest
    remote_worker = ray.remote(num_cpus=h.worker_cpus, num_gpus=h.worker_gpus, max_restarts=0)(HarvestWorker)

    def new_actor(fault_shard: int = -1):
        return remote_worker.remote(store_path, cfg.model, n_layers, h.batch_contexts, h.drop_bos, fault_shard)

    fault_shard = int(os.environ.get(FAULT_ENV, "-1"))
    actors = [new_actor(fault_shard if i == 0 else -1) for i in range(min(h.n_workers, len(pending)))]
    queue = deque(pending)
    leases: dict = {}  # object ref -> (actor, shard)
    progress = Progress("harvest", len(pending), "shards")
    restarts = 0

    def lease(actor) -> None:
        if queue:
            shard = queue.popleft()
            leases[actor.harvest.remote(shard)] = (actor, shard)

    for actor in actors:
        lease(actor)
    while leases:
        [ref], _ = ray.wait(list(leases), num_returns=1)
        actor, shard = leases.pop(ref)
        try:
            ray.get(ref)
        except RayActorError as err:
            restarts += 1
            if restarts > h.max_actor_restarts:
                raise HarvestError(f"harvest: actors died {restarts} times, last on shard {shard}: {err}") from err
            print(f"harvest: the actor on shard {shard} died; leasing it to a new actor", flush=True)
            queue.appendleft(shard)
            lease(new_actor())
            continue
        except RayTaskError as err:
            raise HarvestError(f"harvest: shard {shard} failed: {err.cause}") from err
        progress.update(1, extra=f"{progress.done * rows_per_shard + rows_per_shard:,} tokens")
        lease(actor)
