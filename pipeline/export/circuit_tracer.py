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

from pipeline.circuits import tracer_format, transcoders
from pipeline.coders.raw import RawWeights
from pipeline.export.runs import Run

NAME = "circuit-tracer"
LIBRARY = "circuit-tracer"


def check(run: Run) -> None:
    transcoders.check(run.coder, run.source, run.id, "export.format")


def config(run: Run) -> dict:
    return tracer_format.folder_config(run.source, run.coder.cross_layer)


def write(run: Run, folded: RawWeights, folder: Path) -> None:
    files = tracer_format.dictionary_files([(run.source, folded)], run.coder.cross_layer)
    tracer_format.save(files, config(run), folder)


def write_set(members: list[tuple[Run, RawWeights]], folder: Path) -> None:
    """Several single-layer transcoder runs (see `tracer_format.transcoder_set`) as one transcoder set in `folder`."""
    files = tracer_format.dictionary_files([(run.source, folded) for run, folded in members], cross_layer=False)
    tracer_format.save(files, config(members[0][0]), folder)


def usage(run: Run) -> str:
    """Python lines loading the uploaded folder, for the model card."""
    return (
        "from circuit_tracer import ReplacementModel\n\n"
        f'model = ReplacementModel.from_pretrained("{run.source["model"]["name"]}", "<user>/<repo>")'
    )
