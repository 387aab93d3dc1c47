"""Feature cards of a transcoder, a CLT and per-layer transcoders trained briefly on a store harvested from a tiny
GPT-2: they parse with circuit-tracer's feature model, are named by its cantor pairing, and hold the top contexts
with the activations the coder gives the store's rows."""

import pytest
import torch

from pipeline.activations.loading import ActivationData
from pipeline.coders.registry import AnyCoderConfig
from pipeline.config import TrackingConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.export.runs import load_run
from pipeline.trace.features import cantor, write_features
from pipeline.train.trainer import train_run

from conftest import harvest_in_process

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = [0, 1, 2]
HOOKS = [f"{site}.{layer}" for layer in LAYERS for site in ("mlp_in", "mlp_out")]
K = 5  # examples per card


@pytest.fixture(scope="module")
def store(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("cards")
    store = harvest_in_process(
        tiny_models["gpt2"], out, HOOKS, **{"harvest.n_tokens": 2400, "harvest.contexts_per_shard": 40}
    )
    assert store.layout.n_shards > 1  # the cards are merged from several chunks of the store
    return store


def _trained(store, folder, kind: str, arrays: dict, n: int):
    cfg = TrainConfig(tokens=30 * 64, batch_size=64, lr=1e-2, eval_tokens=128, **arrays)
    data = ActivationData(store, cfg.hook, cfg, torch.device("cpu"))
    coder_cfg = AnyCoderConfig(kind=kind, n_features=n, l1_coefficient=0.1)
    train_run(coder_cfg, cfg, data, folder, TrackingConfig(mode="disabled"), folder.name, "g")
    return load_run(folder, "trace.run")


@pytest.fixture(scope="module")
def transcoder(store, tmp_path_factory):
    arrays = {"hook": "mlp_in.1", "target_hook": "mlp_out.1"}
    return _trained(store, tmp_path_factory.mktemp("runs") / "transcoder", "transcoder", arrays, 32)


def _all_features(run, store) -> dict[int, torch.Tensor]:
    """{model layer: [contexts, rows per context, features]}: the coder on every row of the store at once."""
    source, layout = run.source, store.layout
    x = torch.stack([store.read_rows(h, 0, layout.n_rows).float() * source["scales"][h] for h in source["inputs"]], 1)
    with torch.no_grad():
        f = run.coder.eval().encode(x if run.coder.layered else x[:, 0])
    per_layer = f.view(layout.n_contexts, layout.rows_per_context, len(source["layers"]), -1)
    return {layer: per_layer[:, :, i] for i, layer in enumerate(source["layers"])}


def _check_cards(run, store, folder, features):
    from circuit_tracer.frontend.feature_models import Model

    from pipeline.config import ModelConfig
    from pipeline.models.loading import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(name=run.source["model"]["name"]))
    everything = _all_features(run, store)
    for layer, feature in features:
        card = Model.model_validate_json((folder / f"{cantor(layer, feature)}.json").read_text())
        f = everything[layer][..., feature]  # [contexts, rows]
        assert card.index == cantor(layer, feature) and card.transcoder_id == run.id
        assert card.act_max == pytest.approx(f.max().item(), rel=1e-5)
        assert card.activation_frequency == pytest.approx((f > 0).float().mean().item())
        assert sum(card.histogram) == (f > 0).sum().item() and len(card.quantile_values) == 100
        assert card.quantile_values == sorted(card.quantile_values) and card.quantile_values[-1] <= card.act_max
        examples = card.examples_quantiles[0].examples
        assert len(examples) == min(K, int((f.amax(1) > 0).sum()))
        if not examples:  # a feature that never fires on the store
            assert f.max() <= 0 and card.act_max == card.activation_frequency == 0 and sum(card.histogram) == 0
            continue
        best, peaks = examples[0], f.amax(1)
        assert max(best.tokens_acts_list) == pytest.approx(peaks.max().item(), rel=1e-5)
        # The context it came from: one of those holding the maximum (contexts that open alike tie).
        [context] = [
            c
            for c in torch.nonzero(peaks >= peaks.max() * (1 - 1e-6)).flatten().tolist()
            if [tokenizer.decode([t]) for t in store.read_tokens(c, c + 1)[0].tolist()] == best.tokens
        ][:1]
        assert len(best.tokens_acts_list) == len(best.tokens) == store.layout.rows_per_context + 1
        assert best.tokens_acts_list[1:] == pytest.approx(f[context].tolist(), rel=1e-5, abs=1e-6)
        assert best.tokens_acts_list[0] == 0.0 and best.train_token_ind == 1 + int(f[context].argmax())  # BOS left out
        assert [e.is_repeated_datapoint for e in examples] == [
            e.tokens in [earlier.tokens for earlier in examples[:i]] for i, e in enumerate(examples)
        ]
        maxima = [max(example.tokens_acts_list) for example in examples]
        assert maxima == sorted(maxima, reverse=True) and maxima == pytest.approx(
            f.amax(1).sort(descending=True)[0][:K].tolist()[: len(maxima)], rel=1e-5
        )


def _chosen(run, store, n_per_layer: int) -> set[tuple[int, int]]:
    """The features that fire most often in each layer, and one that never fires, if there is one."""
    chosen = set()
    for layer, f in _all_features(run, store).items():
        counts = (f > 0).sum((0, 1))
        chosen |= {(layer, i) for i in counts.argsort(descending=True)[:n_per_layer].tolist()}
        chosen |= {(layer, i) for i in torch.nonzero(counts == 0).flatten()[:1].tolist()}
    return chosen


def test_cards_of_a_transcoders_features(store, transcoder, tmp_path):
    run = transcoder
    features = _chosen(run, store, 4) | {(0, 3)}  # layer 0 is another member's: left out
    write_features(tmp_path / "cards", run, store, features, K)
    assert sorted(p.name for p in (tmp_path / "cards").iterdir()) == sorted(
        f"{cantor(layer, f)}.json" for layer, f in features if layer == 1
    )
    _check_cards(run, store, tmp_path / "cards", [(layer, f) for layer, f in features if layer == 1])


@pytest.mark.parametrize("kind", ["clt", "plt"])
def test_cards_of_a_layered_coders_features_in_each_of_its_layers(store, tmp_path, kind):
    run = _trained(store, tmp_path / kind, kind, {"layers": LAYERS}, 48)
    features = _chosen(run, store, 3)
    write_features(tmp_path / "cards", run, store, features, K)
    assert len(list((tmp_path / "cards").iterdir())) == len(features) >= 9
    _check_cards(run, store, tmp_path / "cards", features)


def test_a_feature_index_beyond_the_layers_features_is_refused(store, transcoder, tmp_path):
    with pytest.raises(ValueError, match="layer 1 has features 0..31, not 32"):
        write_features(tmp_path / "cards", transcoder, store, {(1, 32)}, K)
    assert not (tmp_path / "cards").exists()


def test_a_store_without_the_hook_the_run_reads_is_refused_before_anything_is_written(
    tiny_models, transcoder, tmp_path
):
    other = harvest_in_process(tiny_models["gpt2"], tmp_path, ["mlp_in.0", "mlp_out.0"])
    with pytest.raises(ConfigError, match=r"^trace\.run: transcoder reads mlp_in\.1, which the store at .* does not"):
        write_features(tmp_path / "cards", transcoder, other, {(1, 0)}, K)
    assert not (tmp_path / "cards").exists()
