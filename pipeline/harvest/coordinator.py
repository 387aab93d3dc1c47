"""Leasing shards to Ray actors: one writer per shard, and a dead actor's shards go to a new actor.

Each actor holds `CONCURRENT` leases, so it writes one shard while its model runs the next.
"""

from collections import deque

from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError
from pipeline.harvest.worker import CONCURRENT, HarvestWorker
from pipeline.progress import Progress


class HarvestError(RuntimeError):
    pass


class PlacementError(ConfigError):
    """The cluster cannot hold a replica as configured: bad input, refused with one line like any other."""


def unplaced(bundle: dict, timeout_s: float) -> str:
    """What a replica's bundle asked for against what the cluster has: in all, free, and on its largest node."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]

    def amounts(resources: dict) -> str:
        return ", ".join(f"{key} {resources.get(key, 0):g}" for key in bundle)

    largest = max(nodes, key=lambda r: tuple(r.get(key, 0) for key in bundle), default={})
    return (
        f"harvest.place_timeout_s: a replica asking for {amounts(bundle)} (harvest.cpus_per_replica, "
        f"harvest.gpus_per_replica) was not placed in {timeout_s:g} s; the cluster has {amounts(total)} in all, "
        f"{amounts(free)} free, {amounts(largest)} on its largest node"
    )


class ShardLeases:
    """Hands each pending shard to one actor at a time and takes it back if that actor dies."""

    def __init__(self, store_path: str, pending: list[int], cfg: PipelineConfig, n_layers: int):
        import ray

        h = cfg.harvest
        self.bundle = {"CPU": h.cpus_per_replica} | ({"GPU": h.gpus_per_replica} if h.gpus_per_replica else {})
        self.remote_worker = ray.remote(
            num_cpus=h.cpus_per_replica, num_gpus=h.gpus_per_replica, max_restarts=0, max_concurrency=CONCURRENT
        )(HarvestWorker)
        self.worker_args = (store_path, cfg.model, n_layers, h.batch_contexts, h.drop_bos)
        self.max_restarts = h.max_actor_restarts
        self.queue = deque(pending)
        self.leases: dict = {}  # object ref -> (actor, shard)
        self.actors: list = []
        self.dead: set = set()  # actors known to have died, whose other leases fail too
        self.groups: dict = {}  # actor -> its placement group
        self.place_timeout_s = h.place_timeout_s
        self.replicas = min(h.replicas, len(pending))

    def new_actor(self):
        """A replica in a placement group of its own, so its CPUs and GPUs are reserved together on one node."""
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = placement_group([self.bundle], strategy="STRICT_PACK")
        ready, _ = ray.wait([group.ready()], timeout=self.place_timeout_s)
        if not ready:
            remove_placement_group(group)
            raise PlacementError(unplaced(self.bundle, self.place_timeout_s))
        strategy = PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=0)
        actor = self.remote_worker.options(scheduling_strategy=strategy).remote(*self.worker_args)
        self.actors.append(actor)
        self.groups[actor] = group
        return actor

    def replace(self, actor):
        """A new actor in place of a dead one, whose CPUs and GPUs it needs on a cluster with none to spare."""
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.groups.pop(actor))
        return self.new_actor()

    def lease(self, actor, n: int = 1) -> None:
        for _ in range(min(n, len(self.queue))):
            shard = self.queue.popleft()
            self.leases[actor.harvest.remote(shard)] = (actor, shard)

    def run(self, progress: Progress, rows_per_shard: int) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        for _ in range(self.replicas):
            self.lease(self.new_actor(), CONCURRENT)
        restarts = 0
        while self.leases:
            [ref], _ = ray.wait(list(self.leases), num_returns=1)
            actor, shard = self.leases.pop(ref)
            try:
                ray.get(ref)
            except RayActorError as err:
                self.queue.appendleft(shard)
                if actor in self.dead:
                    continue  # its replacement already holds leases
                self.dead.add(actor)
                restarts += 1
                if restarts > self.max_restarts:
                    raise HarvestError(f"harvest: actors died {restarts} times, last on shard {shard}: {err}") from err
                print(f"harvest: the actor on shard {shard} died; leasing its shards to a new actor", flush=True)
                self.lease(self.replace(actor), CONCURRENT)
                continue
            except RayTaskError as err:
                raise HarvestError(f"harvest: shard {shard} failed: {err.cause}") from err
            tokens = (progress.done + 1) * rows_per_shard
            progress.update(1, extra=f"{tokens:,} tokens, {tokens / progress.elapsed():,.0f} tokens/s")
            self.lease(actor)

    def release(self) -> None:
        """Frees the actors' CPUs and GPUs now rather than when their handles are collected."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor)
        for group in self.groups.values():
            remove_placement_group(group)


def run_actors(store_path: str, pending: list[int], cfg: PipelineConfig, n_layers: int, rows_per_shard: int) -> None:
    """Harvests every shard in `pending`; returns when each has its completion record."""
    leases = ShardLeases(store_path, pending, cfg, n_layers)
    try:
        leases.run(Progress("harvest", len(pending), "shards"), rows_per_shard)
    finally:
        leases.release()
