"""circuit-tracer's two folders: a per-layer transcoder set and a cross-layer transcoder (CLT).

Both replace the MLP of every layer of the model, so a transcoder reads `mlp_in.L` and predicts
`mlp_out.L`. A transcoder run becomes a set (`config.yaml` with `model_kind: transcoder_set` and
`layer_{i}.safetensors` for each of the model's layers, the layers it does not cover all zeros:
no feature there ever fires); so does a run of per-layer transcoders (a PLT), one file per layer it
spans. A CLT run becomes `model_kind: cross_layer_transcoder` with
`W_enc_{i}.safetensors` and `W_dec_{i}.safetensors` per model layer, W_dec_i of shape
[features, layers - i, d_model], zero where the CLT has no layer or no decoder. circuit-tracer 0.5.0
reads a transcoder's skip connection (`W_skip`) but not a CLT's, so a CLT with one is refused. SAEs
replace no MLP and are refused. Several single-layer transcoder runs, one per layer, also make one set
(`write_set`; the export stage decides which runs do).
"""

from pathlib import Path

from pipeline.circuits import tracer_format
from pipeline.coders.raw import RawWeights
from pipeline.errors import ConfigError
from pipeline.export import hooks
from pipeline.export.runs import Run

NAME = "circuit-tracer"
LIBRARY = "circuit-tracer"


def check(run: Run) -> None:
    if not run.transcodes:
        raise ConfigError(
            f"export.format: circuit-tracer replaces MLPs with transcoders, not with a {run.coder.kind} SAE "
            f"({run.id}); use export.format=saelens"
        )
    if run.coder.cross_layer and run.coder.skip_connection:
        raise ConfigError(
            f"export.format: circuit-tracer reads no skip connection of a cross-layer transcoder from disk, and "
            f"{run.id} has one; train it with coder.skip_connection=false"
        )
    for name in run.source["inputs"]:
        hooks.circuit_tracer(name, "input")
    for name in run.source["targets"]:
        hooks.circuit_tracer(name, "output")
    for read, predicted in zip(run.source["inputs"], run.source["targets"], strict=True):
        if hooks.split(read)[1] != hooks.split(predicted)[1]:
            raise ConfigError(
                f"export.format: circuit-tracer's transcoder of layer L predicts mlp_out.L from mlp_in.L; "
                f"{run.id} predicts {predicted} from {read}"
            )


def config(run: Run) -> dict:
    return tracer_format.folder_config(run.source, run.coder.cross_layer)


def write(run: Run, folded: RawWeights, folder: Path) -> None:
    if run.coder.cross_layer:
        files = tracer_format.cross_layer_transcoder(run.source, folded)
    else:
        files = tracer_format.transcoder_set(tracer_format.per_layer(run.source, folded))
    tracer_format.save(files, config(run), folder)


def write_set(members: list[tuple[Run, RawWeights]], folder: Path) -> None:
    """Several single-layer transcoder runs (see `tracer_format.transcoder_set`) as one transcoder set in `folder`."""
    files = tracer_format.transcoder_set([(run.source, folded) for run, folded in members])
    tracer_format.save(files, config(members[0][0]), folder)


def usage(run: Run) -> str:
    """Python lines loading the uploaded folder, for the model card."""
    return (
        "from circuit_tracer import ReplacementModel\n\n"
        f'model = ReplacementModel.from_pretrained("{run.source["model"]["name"]}", "<user>/<repo>")'
    )
