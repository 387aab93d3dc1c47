"""The held-out metrics against their definitions, computed here independently in numpy."""

import json

import numpy as np
import pytest
import torch

from pipeline.activations.loading import ActivationData
from pipeline.coders.registry import AnyCoderConfig, build
from pipeline.config import TrackingConfig, TrainConfig
from pipeline.evaluate.decoder import decoder_similarity, max_cosine_per_feature
from pipeline.evaluate.metrics import density_metrics, evaluate
from pipeline.layout import METRICS
from pipeline.sweep.results import METRIC_COLUMNS
from pipeline.train.trainer import train_run


def _shrinking(d: int, factor: float):
    """A ReLU coder whose reconstruction is `factor` * x: features relu(x) and relu(-x), decoder factor * [I, -I]."""
    coder = build(AnyCoderConfig(n_features=2 * d, l1_coefficient=0.0), d)
    eye = torch.eye(d)
    with torch.no_grad():
        coder.w_enc.copy_(torch.cat([eye, -eye]))
        coder.w_dec.copy_(factor * torch.cat([eye, -eye], dim=1))
    return coder


def test_both_explained_variances_shrinkage_and_cosine_match_their_definitions():
    torch.manual_seed(0)
    x = torch.randn(96, 8) * torch.linspace(0.5, 2, 8) + 3.0  # a large mean: the two formulas differ
    m = evaluate(_shrinking(8, 0.5), [x[:40], x[40:]])
    xs, err = x.double().numpy(), 0.25 * x.double().numpy() ** 2
    centred = ((xs - xs.mean(0)) ** 2).sum(1)
    assert m["explained_variance"] == pytest.approx(1 - err.sum() / centred.sum(), rel=1e-9)
    assert m["explained_variance"] == pytest.approx(1 - m["fvu"], rel=1e-12)
    # The legacy formula: 1 - ||x - x_hat||^2 / ||x - mean||^2 for each token, then the mean over tokens.
    assert m["explained_variance_legacy"] == pytest.approx(np.mean(1 - err.sum(1) / centred), rel=1e-9)
    assert abs(m["explained_variance_legacy"] - m["explained_variance"]) > 0.1
    assert m["mse"] == pytest.approx(err.mean(), rel=1e-9)
    assert m["cossim"] == pytest.approx(1.0, abs=1e-6)
    assert m["l2_ratio"] == pytest.approx(0.5, rel=1e-6)
    assert m["relative_reconstruction_bias"] == pytest.approx(0.5, rel=1e-6)


def test_an_orthogonal_reconstruction_has_cosine_zero():
    coder = _shrinking(2, 1.0)
    with torch.no_grad():
        coder.w_dec.copy_(torch.tensor([[0.0, 0, 0, 0], [1.0, 0, 0, 0]]))  # x_hat = (0, relu(x_0))
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    m = evaluate(coder, [x])
    assert m["cossim"] == pytest.approx(0.0, abs=1e-7) and m["l2_ratio"] == pytest.approx(1.0)


def test_density_shares_count_features_alive_and_above_one_and_ten_percent():
    density = torch.tensor([0.0, 0.0, 0.005, 0.02, 0.05, 0.2, 0.5, 0.0], dtype=torch.float64)
    m = density_metrics(density)
    assert m["frac_alive"] == 5 / 8
    assert m["freq_over_1_percent"] == 4 / 8 and m["freq_over_10_percent"] == 2 / 8
    assert m["l0"] == pytest.approx(density.sum().item())


def test_the_largest_decoder_cosine_is_found_chunk_by_chunk_as_in_the_whole_matrix():
    torch.manual_seed(0)
    columns = torch.randn(16, 5000)  # wider than one chunk of CHUNK_ELEMENTS similarities
    columns[:, 4321] = -3 * columns[:, 17]
    columns[:, 4000] = 2 * columns[:, 3999] + 1e-3 * torch.randn(16)
    unit = columns / columns.norm(dim=0)
    dense = unit.T @ unit
    dense.fill_diagonal_(-float("inf"))
    best = max_cosine_per_feature(columns)
    assert torch.allclose(best, dense.max(1).values, atol=1e-5)
    assert best[3999] > 0.999 and best[4000] > 0.999


def test_a_coder_reports_its_decoder_similarity():
    coder = _shrinking(4, 1.0)  # columns e_i and -e_i: no two point the same way
    sim = decoder_similarity(coder)
    assert sim["max_decoder_cosine_sim"] == pytest.approx(0.0, abs=1e-7)
    assert sim["average_max_decoder_cosine_sim"] == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        coder.w_dec[:, 1] = coder.w_dec[:, 0] * 5
    sim = decoder_similarity(coder)
    assert sim["max_decoder_cosine_sim"] == pytest.approx(1.0) and sim[
        "average_max_decoder_cosine_sim"
    ] == pytest.approx(2 / 8)


def test_a_finished_run_writes_every_core_metric_a_results_row_reads(store, tmp_path):
    data = ActivationData(store, "resid_post.0", TrainConfig(eval_tokens=512), torch.device("cpu"))
    cfg = TrainConfig(tokens=2560, batch_size=256, eval_tokens=512)
    train_run(AnyCoderConfig(n_features=32), cfg, data, tmp_path / "r", TrackingConfig(mode="disabled"), "r", "g")
    on_disk = json.loads((tmp_path / "r" / METRICS).read_text())
    spliced = {"delta_loss", "kl", "clean_loss", "spliced_loss", "ablated_loss", "ablated_kl", "ce_loss_score"}
    circuits = {"replacement_score", "completeness_score", "next_token_agreement"}  # a transcoder's, with prompts
    assert set(METRIC_COLUMNS) - spliced - circuits - {"kl_score"} <= set(on_disk)  # no model to splice here
    assert not circuits & set(on_disk)
    assert 0 < on_disk["frac_alive"] <= 1 and -1 <= on_disk["average_max_decoder_cosine_sim"] <= 1
    assert on_disk["explained_variance"] == pytest.approx(1 - on_disk["fvu"])
