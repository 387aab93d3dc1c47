"""The harvest stage: tokenize into the store, then fill every incomplete shard with activations."""

import math
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.distributed.cluster import check_address, check_fits, connect
from pipeline.harvest.coordinator import run_actors
from pipeline.layout import OutDir
from pipeline.models.hooks import parse_hook
from pipeline.models.loading import ModelInfo, check_context_len, describe, hub_reachable, load_tokenizer
from pipeline.store.activation_store import ActivationStore, created
from pipeline.store.schema import base_attrs, check_reusable
from pipeline.store.verify import corrupt_shards, tokens_damage
from pipeline.text.contexts import build_contexts
from pipeline.text.corpus import check_source, documents


def planned_attrs(cfg: PipelineConfig, info: ModelInfo) -> dict:
    """The attributes a store made by this configuration has; also what validation checks."""
    h, d, s = cfg.harvest, cfg.data, cfg.store
    for hook in h.hooks:
        parse_hook(hook, info.n_layers)
    rows_per_context = d.context_len - int(h.drop_bos)
    n_shards = math.ceil(h.n_tokens / (rows_per_context * h.contexts_per_shard))
    layout = {
        "n_contexts": n_shards * h.contexts_per_shard,
        "context_len": d.context_len,
        "rows_per_context": rows_per_context,
        "contexts_per_shard": h.contexts_per_shard,
        "drop_bos": h.drop_bos,
    }
    model = {
        "name": info.name,
        "revision": info.revision,
        "dtype": info.dtype,
        "n_layers": info.n_layers,
        "d_model": info.d_model,
        "has_lm_head": info.has_lm_head,
    }
    dataset = {
        "source": d.source,
        "name": d.name,
        "subset": d.subset,
        "split": d.split,
        "seed": d.seed,
        "context_len": d.context_len,
        "paths": list(d.paths),
    }
    codec = {"dtype": s.dtype, "codec": s.codec, "contexts_per_chunk": s.contexts_per_chunk}
    return base_attrs(model, dataset, list(h.hooks), layout, codec)


def validate(cfg: PipelineConfig) -> dict:
    """Checks everything the harvest needs before any work; returns the planned attributes."""
    check_address(cfg.ray)
    check_source(cfg.data, hub_reachable)
    info = describe(cfg.model)
    check_context_len(info, cfg.data.context_len)
    load_tokenizer(cfg.model)  # its files, before the store is made
    attrs = planned_attrs(cfg, info)
    check_placeable(cfg, attrs["layout"]["n_contexts"] // cfg.harvest.contexts_per_shard)
    path = OutDir(cfg.out_dir).store
    if created(path):
        check_reusable(_existing_attrs(path), attrs, str(path))
    return attrs


def check_placeable(cfg: PipelineConfig, n_shards: int) -> None:
    """Refuses replicas that a local Ray instance could never place: one alone, or all of them at once (the
    harvest places every replica before it leases shards)."""
    h = cfg.harvest
    one = {"CPU": h.cpus_per_replica, "GPU": h.gpus_per_replica}
    check_fits(cfg.ray, one, {"CPU": "harvest.cpus_per_replica", "GPU": "harvest.gpus_per_replica"}, "a replica")
    replicas = min(h.replicas, n_shards)
    every = {resource: amount * replicas for resource, amount in one.items()}
    check_fits(cfg.ray, every, dict.fromkeys(every, "harvest.replicas"), f"{replicas} replicas")


def discard_corrupt(store: ActivationStore, mode: str) -> None:
    """Checks the complete shards as `harvest.verify` says; a corrupt one loses its record, so it is written again."""
    if mode == "none":
        return
    corrupt, tokens = corrupt_shards(store, mode), tokens_damage(store)
    for shard, why in corrupt.items():
        print(f"harvest: shard {shard} is corrupt ({why}); writing it again", flush=True)
    if tokens:
        print(f"harvest: the {tokens}; writing them again", flush=True)
    if corrupt or tokens:
        store.discard(list(corrupt), tokens=bool(tokens))


def _existing_attrs(path: Path) -> dict:
    import zarr

    return dict(zarr.open_group(str(path), mode="r").attrs)


def run_harvest(cfg: PipelineConfig) -> ActivationStore:
    attrs = validate(cfg)
    path = OutDir(cfg.out_dir).store
    if created(path):
        store = ActivationStore(path)
        store.remove_leftovers()
        discard_corrupt(store, cfg.harvest.verify)
        if store.complete:
            print(f"harvest: {path} is complete ({store.layout.n_rows:,} rows per hook); nothing to do", flush=True)
            return store
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        store = ActivationStore.create(path, attrs, attrs["model"]["d_model"])
    if not store.tokens_complete():
        label = f"{cfg.data.source}:{cfg.data.name}/{cfg.data.split}"
        tokenizer = load_tokenizer(cfg.model)
        store.write_tokens(
            build_contexts(tokenizer, documents(cfg.data), store.layout.n_contexts, cfg.data.context_len, label)
        )
    pending = store.incomplete_shards()
    if pending:
        connect(cfg.ray)
        print(f"harvest: {len(pending)} of {store.layout.n_shards} shards to write into {path}", flush=True)
        run_actors(str(path), pending, cfg, attrs["model"]["n_layers"], store.layout.rows_per_shard)
        store.remove_leftovers()  # of writes by actors that died midway in this harvest
    store.finalize()
    return store
