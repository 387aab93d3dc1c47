"""A dictionary as circuit-tracer's transcoders: its folder in circuit-tracer's format (`tracer_format`), then
loaded with circuit-tracer's own loaders, so a trace reads exactly what the export writes.

A dictionary is one CLT or transcoder, or a set of single-layer transcoders (one per layer), each a
(coder, source) pair; every one reads `mlp_in.L` and predicts `mlp_out.L` of the same layer L.
"""

from pathlib import Path

import torch

from pipeline.circuits import tracer_format
from pipeline.coders.base import Coder
from pipeline.coders.folding import fold
from pipeline.errors import ConfigError

Member = tuple[Coder, dict]  # a coder and its source.json


def check(coder: Coder, source: dict, what: str, field: str) -> None:
    """ConfigError naming `field` unless `coder` (called `what`) replaces MLPs the way circuit-tracer reads them."""
    if source["targets"] == source["inputs"]:
        raise ConfigError(
            f"{field}: circuit-tracer replaces MLPs with transcoders, not with a {coder.kind} SAE ({what} reads and "
            f"predicts {source['inputs'][0]}); use a transcoder, per-layer transcoders or a CLT"
        )
    check_mlp_pairs(coder.cross_layer and coder.skip_connection, source["inputs"], source["targets"], what, field)


def check_mlp_pairs(clt_skip: bool, inputs: list[str], targets: list[str], what: str, field: str) -> None:
    """ConfigError naming `field` unless the transcoder `what` predicts mlp_out.L from mlp_in.L of each layer L and,
    as a CLT, has no skip connection (`clt_skip`), which circuit-tracer does not read."""
    if clt_skip:
        raise ConfigError(
            f"{field}: circuit-tracer reads no skip connection of a cross-layer transcoder from disk, and {what} "
            "has one; train it with coder.skip_connection=false"
        )
    for read, predicted in zip(inputs, targets, strict=True):
        site_in, layer_in = read.rpartition(".")[::2]
        site_out, layer_out = predicted.rpartition(".")[::2]
        if (site_in, site_out) != ("mlp_in", "mlp_out") or layer_in != layer_out:
            raise ConfigError(
                f"{field}: circuit-tracer's transcoder of layer L predicts mlp_out.L from mlp_in.L; "
                f"{what} predicts {predicted} from {read}"
            )


def covered_layers(members: list[Member]) -> list[int]:
    """The model layers whose MLPs the dictionary replaces."""
    return sorted({layer for _, source in members for layer in source["layers"]})


def write_folder(members: list[Member], folder: Path) -> None:
    """The dictionary's circuit-tracer folder in `folder` (created): a CLT, or a transcoder set of all members."""
    folder.mkdir()
    coder, source = members[0]
    files = tracer_format.dictionary_files([(s, fold(c, s)) for c, s in members], coder.cross_layer)
    tracer_format.save(files, tracer_format.folder_config(source, coder.cross_layer), folder)


def load_folder(folder: Path, n_layers: int, scan: str, device: torch.device, dtype: torch.dtype):
    """circuit-tracer's TranscoderSet or CrossLayerTranscoder of the folder `write_folder` wrote, in memory."""
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    hooks = tracer_format.INPUT_HOOK, tracer_format.OUTPUT_HOOK
    if (folder / "W_enc_0.safetensors").exists():
        return load_clt(str(folder), *hooks, scan=scan, device=device, dtype=dtype, lazy_decoder=False)
    paths = {layer: str(folder / f"layer_{layer}.safetensors") for layer in range(n_layers)}
    return load_transcoder_set(paths, scan, *hooks, device=device, dtype=dtype, lazy_encoder=False, lazy_decoder=False)
