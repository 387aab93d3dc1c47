"""Feature cards for circuit-tracer's frontend: each feature's top-activating contexts in the store it was trained on.

A card is `<cantor(layer, feature)>.json` in circuit-tracer's feature format
(`circuit_tracer.frontend.feature_models.Model`), the name its graph files give a feature node.
The store is read a shard at a time (fewer contexts where a shard's rows would pass `_CHUNK_BYTES`),
its raw rows of the hook each layer reads encoded with the run's folded weights
(`pipeline.coders.folding.fold`), which circuit-tracer's graphs are computed with: the same features
the coder gives the rows at their training scale. Under relu and jumprelu a feature's activation
depends on its own encoder row alone, so only the chosen features' rows are applied: 50 features cost
50 of a layer's thousands. Activation frequency is the share of all the store's rows where a feature fires;
act_min is 0 (every transcoder's features are non-negative) and act_max the largest activation; the
quantiles and the histogram (`_HISTOGRAM_BINS` bins over [0, act_max]) count its positive
activations, to within 1/512 of act_max (`pipeline.trace.histogram`). top_logits and
bottom_logits are empty: a card is written from the store alone, without the model's unembedding.
"""

from pathlib import Path

import torch

from pipeline.atomic import write_json_atomic
from pipeline.coders.folding import fold
from pipeline.coders.raw import RawWeights
from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.export.runs import Run
from pipeline.models.loading import load_tokenizer
from pipeline.store.activation_store import ActivationStore
from pipeline.trace.histogram import Histograms

_CHUNK_BYTES = 1 << 28  # the most bytes of one hook's rows held at once (float32)
_HISTOGRAM_BINS = 40
_QUANTILES = torch.arange(1, 101) / 100  # the frontend places a node's activation at the first one it is below


def cantor(layer: int, feature: int) -> int:
    """circuit-tracer's id of a feature (`frontend.graph_models._cantor_pairing`), the name of its card."""
    return (layer + feature) * (layer + feature + 1) // 2 + feature


class _Top:
    """One layer's chosen features over the store: each one's `k` contexts of highest activation (with their
    per-row activations), how often it fires, and its histogram."""

    def __init__(self, n_features: int, k: int, rows_per_context: int):
        self.k = k
        self.values = torch.empty(n_features, 0)  # [features, <= k]: each kept context's highest activation
        self.contexts = torch.empty(n_features, 0, dtype=torch.long)  # their context numbers in the store
        self.acts = torch.empty(n_features, 0, rows_per_context)  # their activations on each row
        self.fired = torch.zeros(n_features, dtype=torch.long)
        self.histograms = Histograms(n_features)

    def add(self, acts: torch.Tensor, first_context: int) -> None:
        """`acts` [contexts, rows per context, features]: the chosen features on consecutive contexts."""
        flat = acts.flatten(0, 1)
        self.fired += (flat > 0).sum(0)
        self.histograms.add(flat)
        per_context = acts.permute(2, 0, 1)  # [features, contexts, rows]
        numbers = torch.arange(first_context, first_context + len(acts)).expand(len(per_context), -1)
        values = torch.cat([self.values, per_context.amax(-1)], 1)
        kept = values.topk(min(self.k, values.shape[1]), dim=1).indices
        self.values = values.gather(1, kept)
        self.contexts = torch.cat([self.contexts, numbers], 1).gather(1, kept)
        rows = kept[..., None].expand(-1, -1, per_context.shape[-1])
        self.acts = torch.cat([self.acts, per_context], 1).gather(1, rows)


def write_features(
    folder: Path, run: Run, store: ActivationStore, features: set[tuple[int, int]], n_examples: int
) -> None:
    """Writes `folder/<cantor(layer, feature)>.json` for each (model layer, feature index within that layer) of
    `features` that `run` has: a set's member covers one layer, so features of other layers are left to theirs."""
    wanted = _by_layer(run, features)
    for hook in run.source["inputs"]:
        if hook not in store.hooks:
            raise ConfigError(f"trace.run: {run.id} reads {hook}, which the store at {store.path} does not hold")
    tokenizer = load_tokenizer(ModelConfig(name=run.source["model"]["name"], revision=run.source["model"]["revision"]))
    folded = fold(run.coder, run.source)
    if folded.activation not in ("relu", "jumprelu"):
        raise ValueError(f"{run.id}: feature cards read relu or jumprelu features, not {folded.activation}")
    tops = {layer: _Top(len(ids), n_examples, store.layout.rows_per_context) for layer, ids in wanted.items()}
    for start, stop in _chunks(store, store.d_model(run.source["inputs"][0])):
        for layer, ids in wanted.items():
            tops[layer].add(_encoded(run, folded, store, layer, ids, start, stop), start)
    folder.mkdir(parents=True, exist_ok=True)
    for layer, ids in wanted.items():
        for i, feature in enumerate(ids):
            card = _card(run.id, layer, feature, tops[layer], i, store, tokenizer)
            write_json_atomic(folder / f"{card['index']}.json", card)


def _by_layer(run: Run, features: set[tuple[int, int]]) -> dict[int, list[int]]:
    """{model layer the run covers: its requested feature indices, sorted}; ValueError for an index out of range."""
    per_layer = run.coder.n_features // len(run.source["layers"])
    wanted: dict[int, list[int]] = {}
    for layer, feature in sorted(features):
        if layer in run.source["layers"]:
            if not 0 <= feature < per_layer:
                raise ValueError(f"{run.id}: layer {layer} has features 0..{per_layer - 1}, not {feature}")
            wanted.setdefault(layer, []).append(feature)
    return wanted


def _chunks(store: ActivationStore, d: int) -> list[tuple[int, int]]:
    """[start, stop) context ranges covering the store: its shards, cut where one hook's rows of width `d` on a
    shard would exceed `_CHUNK_BYTES`."""
    layout = store.layout
    fits = max(1, _CHUNK_BYTES // (4 * d * layout.rows_per_context))
    step = min(layout.contexts_per_shard, fits)
    return [(start, min(start + step, layout.n_contexts)) for start in range(0, layout.n_contexts, step)]


@torch.no_grad()
def _encoded(
    run: Run, folded: RawWeights, store: ActivationStore, layer: int, ids: list[int], start: int, stop: int
) -> torch.Tensor:
    """[contexts, rows per context, len(ids)]: features `ids` of model layer `layer` on contexts [start, stop)."""
    s = run.source["layers"].index(layer)
    rpc = store.layout.rows_per_context
    rows = store.read_rows(run.source["inputs"][s], start * rpc, stop * rpc).float()
    pre = torch.nn.functional.linear(rows - folded.pre_bias[s], folded.w_enc[s][ids], folded.b_enc[s][ids])
    acts = pre.clamp(min=0) if folded.activation == "relu" else pre * (pre > folded.threshold[s][ids])
    return acts.view(stop - start, rpc, len(ids))


def _card(run_id: str, layer: int, feature: int, top: _Top, i: int, store: ActivationStore, tokenizer) -> dict:
    """The frontend's card of the `i`th chosen feature of `top` (feature `feature` of model layer `layer`)."""
    act_max = top.values[i, 0].item() if top.values.shape[1] else 0.0
    examples, seen = [], set()
    for value, context, acts in zip(top.values[i].tolist(), top.contexts[i].tolist(), top.acts[i], strict=True):
        if value > 0:
            ids = tuple(store.read_tokens(context, context + 1)[0].tolist())
            examples.append(_example(tokenizer, ids, acts, repeated=ids in seen))
            seen.add(ids)
    quantiles = top.histograms.quantiles(i, _QUANTILES)
    return {
        "transcoder_id": run_id,
        "index": cantor(layer, feature),
        "examples_quantiles": [{"quantile_name": "Top activations", "examples": examples}],
        "top_logits": [],
        "bottom_logits": [],
        "act_min": 0.0,
        "act_max": act_max,
        "quantile_values": [min(q, act_max) for q in quantiles],
        "histogram": top.histograms.coarse(i, _HISTOGRAM_BINS, act_max),
        "activation_frequency": top.fired[i].item() / store.layout.n_rows,
    }


def _example(tokenizer, ids: tuple[int, ...], acts: torch.Tensor, repeated: bool) -> dict:
    """One context's tokens and the feature's activation on each (0 on a BOS position the store left out);
    `repeated`: a context of the same tokens came before it, which the frontend shows faded."""
    per_token = [0.0] * (len(ids) - len(acts)) + acts.tolist()
    return {
        "tokens": tokenizer.batch_decode([[token] for token in ids]),
        "tokens_acts_list": per_token,
        "train_token_ind": max(range(len(per_token)), key=per_token.__getitem__),
        "is_repeated_datapoint": repeated,
    }
