"""BatchTopK's threshold calibrated on the held-out rows once training ends, so the saved coder is a JumpReLU."""

import copy

import pytest
import torch

from pipeline.coders.registry import AnyCoderConfig, build, load
from pipeline.config import TrainConfig
from pipeline.distributed.process_group import World
from pipeline.errors import ConfigError
from pipeline.evaluate.metrics import evaluate
from pipeline.train.sharded import ShardedCoder
from pipeline.train.trainer import train_run

from unit.test_stack import DISABLED

pytestmark = pytest.mark.usefixtures("one_thread")


def _coder(kind: str = "batchtopk", n: int = 64, d: int = 16, **fields):
    torch.manual_seed(0)
    return build(AnyCoderConfig(kind=kind, n_features=n, k=4, **fields), d)


def _held_out(rows: int = 300, d: int = 16) -> list[torch.Tensor]:
    x = torch.randn(rows, d, generator=torch.Generator().manual_seed(1))
    return list(x.split(64))  # a shorter last batch, as the held-out rows come


@pytest.mark.parametrize("kind", ["batchtopk", "matryoshka"])
def test_the_held_out_threshold_keeps_k_latents_per_row_there(kind):
    coder = _coder(kind, threshold_calibration="held_out")
    coder.loss(torch.randn(64, 16))  # a running threshold from one training step
    running = coder.threshold.clone()
    inputs = _held_out()
    coder.calibrate(inputs)
    pre = torch.cat([(x - coder.b_dec) @ coder.w_enc.t() + coder.b_enc for x in inputs]).detach()
    # By hand: the largest activation that the selection of the 4 * 300 largest over all rows leaves out.
    assert coder.threshold == torch.relu(pre).flatten().sort(descending=True).values[4 * 300]
    assert coder.threshold != running
    coder.eval()
    with torch.no_grad():
        fired = sum(int((coder.encode(x) > 0).sum()) for x in inputs)
        metrics = evaluate(coder, inputs)
    assert fired == 4 * 300 and metrics["l0"] == pytest.approx(4.0)


def test_the_running_threshold_is_kept_by_default():
    coder = _coder()
    coder.loss(torch.randn(64, 16))
    running = coder.threshold.clone()
    coder.calibrate(_held_out())
    assert coder.threshold == running > 0


def test_with_fewer_positive_activations_than_k_per_row_every_positive_one_fires():
    coder = _coder(threshold_calibration="held_out")
    with torch.no_grad():
        coder.b_enc.fill_(-3.0)  # only a few pre-activations stay above 0
    coder.calibrate(_held_out())
    assert coder.threshold == 0


def test_the_sharded_calibration_on_one_rank_is_its_own():
    coder = _coder(threshold_calibration="held_out")
    whole = copy.deepcopy(coder)
    sharded = ShardedCoder(coder, World(0, 1))
    sharded.calibrate(_held_out())
    whole.calibrate(_held_out())
    assert sharded.local.threshold == whole.threshold > 0


def test_a_bad_calibration_is_refused_with_the_field_named():
    with pytest.raises(ConfigError, match=r"^coder.threshold_calibration: expected one of running, held_out"):
        _coder(threshold_calibration="feature")


def test_training_ends_with_the_calibrated_threshold_saved(data, tmp_path):
    train = TrainConfig(tokens=12 * 256, batch_size=256, lr=3e-3)
    runs = {}
    for calibration in ("running", "held_out"):
        cfg = AnyCoderConfig(kind="batchtopk", n_features=64, k=4, threshold_calibration=calibration)
        metrics = train_run(cfg, train, data, tmp_path / calibration, DISABLED, calibration, "g")
        runs[calibration] = (metrics, load(tmp_path / calibration / "coder"))
    (running, coder_r), (held_out, coder_h) = runs["running"], runs["held_out"]
    assert held_out["l0"] == pytest.approx(4.0) and running["l0"] != pytest.approx(4.0)
    assert coder_h.threshold != coder_r.threshold  # the same weights, another threshold
    for name in ("w_enc", "w_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(coder_h, name), getattr(coder_r, name))
    coder_h.eval()
    assert evaluate(coder_h, list(data.eval_batches(256)))["l0"] == pytest.approx(4.0)  # as saved
