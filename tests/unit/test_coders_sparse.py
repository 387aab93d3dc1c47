import math

import pytest
import torch

from pipeline.activations.loading import ActivationData
from pipeline.coders.base import BatchSparseActs, SparseActs
from pipeline.coders.jumprelu import JumpReLUFunction, StepFunction
from pipeline.coders.registry import AnyCoderConfig, build, load, training_flops
from pipeline.config import TrackingConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.evaluate.metrics import evaluate
from pipeline.train.trainer import train_run

SPARSE_KINDS = ("topk", "batchtopk", "jumprelu")


pytestmark = pytest.mark.usefixtures("one_thread")


def _coder(kind: str, n: int = 64, d: int = 16, seed: int = 0, **fields):
    torch.manual_seed(seed)
    return build(AnyCoderConfig(kind=kind, n_features=n, **fields), d)


# --- registry and config ---------------------------------------------------------------------


def test_each_kind_gets_exactly_its_own_hparams_from_the_config():
    cfg = dict(k=5, aux_k=7, aux_k_coefficient=0.5, dead_tokens_threshold=99, l1_coefficient=2.0, init_decoder_norm=0.2)
    cfg |= dict(jumprelu_penalty="l0", jumprelu_bandwidth=0.01, init_threshold=0.02, tanh_scale=3.0)
    cfg |= dict(preact_coefficient=0.1, jumprelu_ste_to_input=True)
    topk = dict(k=5, aux_k=7, aux_k_coefficient=0.5, dead_tokens_threshold=99)
    assert _coder("topk", **cfg).hparams == topk
    batchtopk = topk | {"threshold_momentum": 0.9, "threshold_calibration": "running"}
    assert _coder("batchtopk", **cfg).hparams == batchtopk
    assert _coder("matryoshka", **cfg).hparams == batchtopk | {"prefix_fractions": [0.0625, 0.25]}
    assert _coder("relu", **cfg).hparams == {"l1_coefficient": 2.0, "init_decoder_norm": 0.2}
    assert _coder("jumprelu", **cfg).hparams == {
        "l1_coefficient": 2.0,
        "penalty": "l0",
        "bandwidth": 0.01,
        "init_threshold": 0.02,
        "tanh_scale": 3.0,
        "preact_coefficient": 0.1,
        "init_decoder_norm": 0.2,
        "target_l0": 32.0,
        "ste_to_input": True,
    }


def test_bad_sparse_settings_are_refused_with_the_field_named():
    with pytest.raises(ConfigError, match="coder.k"):
        _coder("topk", n=8, k=9)
    with pytest.raises(ConfigError, match="coder.jumprelu_penalty"):
        _coder("jumprelu", jumprelu_penalty="l1")
    with pytest.raises(ConfigError, match="coder.jumprelu_bandwidth"):
        _coder("jumprelu", jumprelu_bandwidth=0.0)


def test_initialisation():
    for kind in ("topk", "batchtopk"):
        coder = _coder(kind)
        torch.testing.assert_close(coder.w_dec.norm(dim=0), torch.ones(64))
        assert torch.equal(coder.w_enc, coder.w_dec.t())
        assert not coder.b_enc.any() and not coder.b_dec.any() and not coder.tokens_since_fired.any()
    coder = _coder("jumprelu", init_threshold=0.003, init_decoder_norm=0.1)
    torch.testing.assert_close(coder.threshold, torch.full((64,), 0.003))
    torch.testing.assert_close(coder.w_dec.norm(dim=0), torch.full((64,), 0.1))
    assert torch.equal(coder.w_enc, coder.w_dec.t())


def test_after_step_renormalises_decoders_where_the_penalty_cannot_see_their_scale():
    cases = [("topk", {}, 1.0), ("batchtopk", {}, 1.0), ("jumprelu", {"jumprelu_penalty": "l0"}, 0.1)]
    for kind, fields, norm in cases:
        coder = _coder(kind, **fields)
        with torch.no_grad():
            coder.w_dec.mul_(torch.rand(64) + 0.5)
        coder.after_step()
        torch.testing.assert_close(coder.w_dec.norm(dim=0), torch.full((64,), norm))
    for kind in ("relu", "jumprelu"):  # decoder-norm weighted penalties: no-op
        coder = _coder(kind)
        before = coder.w_dec.detach().clone() * 3
        with torch.no_grad():
            coder.w_dec.mul_(3)
        coder.after_step()
        assert torch.equal(coder.w_dec, before)


# --- topk ------------------------------------------------------------------------------------


def test_topk_keeps_exactly_k_latents_per_row():
    coder = _coder("topk", k=6)
    x = torch.randn(40, 16)
    parts, sparse = coder.loss(x)
    assert isinstance(sparse, SparseActs) and sparse.index.shape == sparse.values.shape == (40, 6)
    f = sparse.dense()
    pre = (x - coder.b_dec) @ coder.w_enc.t() + coder.b_enc
    assert ((f != 0).sum(1) == 6).all()
    values, index = pre.topk(6, dim=1)
    assert (values > 0).all()  # so the ReLU keeps all six
    torch.testing.assert_close(f.gather(1, index), values)
    torch.testing.assert_close(f, coder.encode(x))
    recon = ((x - (f @ coder.w_dec.t() + coder.b_dec)) ** 2).sum(1).mean()
    torch.testing.assert_close(parts["reconstruction"], recon)
    assert parts["auxk"] == 0 and torch.equal(parts["loss"], parts["reconstruction"])


def _dense(f: torch.Tensor | SparseActs | BatchSparseActs) -> torch.Tensor:
    return f if isinstance(f, torch.Tensor) else f.dense()


def test_sparse_topk_training_gradients_equal_the_dense_expression():
    coder = _coder("topk", k=5, aux_k=7, dead_tokens_threshold=1)
    with torch.no_grad():
        coder.b_enc.normal_()
        coder.b_dec.normal_()
    x = torch.randn(24, 16)
    coder.loss(x)  # marks the latents that did not fire as dead, so AuxK is on
    coder.zero_grad()
    parts, _ = coder.loss(x, sparsity_scale=0.5)
    parts["loss"].backward()
    sparse_grads = {name: p.grad.clone() for name, p in coder.named_parameters()}

    coder.zero_grad()
    pre = (x - coder.b_dec) @ coder.w_enc.t() + coder.b_enc
    values, index = pre.topk(5, dim=1)
    f = torch.zeros_like(pre).scatter(1, index, torch.relu(values))
    x_hat = f @ coder.w_dec.t() + coder.b_dec
    masked = torch.where(coder.dead(), pre.detach(), torch.tensor(float("-inf")))
    aux_index = masked.topk(7, dim=1).indices
    f_aux = torch.zeros_like(pre).scatter(1, aux_index, torch.relu(pre.gather(1, aux_index)))
    auxk = ((x - x_hat).detach() - f_aux @ coder.w_dec.t()).pow(2).sum(1).mean()
    dense_loss = (x - x_hat).pow(2).sum(1).mean() + 0.5 * coder.aux_k_coefficient * auxk
    dense_loss.backward()
    torch.testing.assert_close(parts["loss"], dense_loss)
    for name, p in coder.named_parameters():
        torch.testing.assert_close(sparse_grads[name], p.grad, msg=name)


@pytest.mark.parametrize("arms", [(), (3,)])  # one coder, and a stack of three
def test_the_encoder_gradient_summed_over_the_selection_equals_the_dense_product(arms):
    from pipeline.coders.topk_kernel import dense_encoder_gradient, row_major, sparse_encoder_gradient

    rows, n, d, k = 12, 40, 6, 5
    centred = torch.randn(*arms, rows, d)
    index = torch.randn(*arms, rows, n).topk(k, dim=-1).indices  # k distinct latents per row, some never chosen
    flat = row_major(index, n)
    grad = torch.randn(flat.shape)
    expected = torch.zeros(*arms, rows * n).scatter(-1, flat, grad).view(*arms, rows, n).mT @ centred
    torch.testing.assert_close(sparse_encoder_gradient(grad, flat, centred, n), expected)
    torch.testing.assert_close(dense_encoder_gradient(grad, flat, centred, n), expected)


def test_topk_relu_drops_negative_selected_values():
    coder = _coder("topk", n=8, d=4, k=3)
    with torch.no_grad():
        coder.b_enc.fill_(-100.0)
    assert not coder.encode(torch.randn(5, 4)).any()


# --- batchtopk -------------------------------------------------------------------------------


def test_batchtopk_keeps_k_times_batch_latents_over_the_batch():
    coder = _coder("batchtopk", k=4)
    x = torch.randn(32, 16)
    parts, sparse = coder.loss(x)
    assert isinstance(sparse, BatchSparseActs) and sparse.flat.shape == sparse.values.shape == (4 * 32,)
    assert (sparse.flat.diff() > 0).all()  # ascending: each row's latents together
    f = sparse.dense()
    assert (f != 0).sum() == 4 * 32
    assert len(set((f != 0).sum(1).tolist())) > 1  # rows differ in how many latents they use
    pre = torch.relu((x - coder.b_dec) @ coder.w_enc.t() + coder.b_enc)
    kept = pre.flatten().topk(4 * 32).values
    torch.testing.assert_close(f[f != 0].sort().values, kept.sort().values)


@pytest.mark.parametrize("way", ["top_in_two_rounds", "top_above_sampled_threshold"])
@pytest.mark.parametrize(
    ("shape", "k"),
    [((1024, 2048), 32), ((3, 96, 512), 4), ((7, 50), 5), ((6, 10), 10)],  # many chunks, a stack, 7 rows, k = N
)
def test_each_batch_selection_selects_what_one_round_does(way, shape, k):
    from pipeline.coders import batchtopk

    pre = torch.randn(shape) + torch.randn(*shape[:-1], 1)  # rows of different scales
    n = k * shape[-2]
    one_round = pre.flatten(-2).topk(n, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(getattr(batchtopk, way)(pre, n), one_round)


def test_a_sampled_threshold_that_leaves_too_few_entries_falls_back_to_the_two_rounds(monkeypatch):
    from pipeline.coders import batchtopk

    rows, n_features, k = 256, 1024, 8
    pre = torch.randn(rows, n_features)
    pre.view(-1)[:: batchtopk.SAMPLE_EVERY] += 10  # the sample sees only the largest entries
    two_rounds, calls = batchtopk.top_in_two_rounds, []
    monkeypatch.setattr(batchtopk, "top_in_two_rounds", lambda pre, n: calls.append(n) or two_rounds(pre, n))
    one_round = pre.flatten().topk(k * rows).indices.sort().values
    assert torch.equal(batchtopk.top_above_sampled_threshold(pre, k * rows), one_round)
    assert calls == [k * rows]


@pytest.mark.parametrize("arms", [(), (3,)])  # one coder, and a stack of three
def test_sparse_batchtopk_training_gradients_equal_the_dense_expression(arms):
    from pipeline.coders.base import with_rows_axis

    torch.manual_seed(0)
    coder = _coder("batchtopk", k=3)
    if arms:  # a stack's parameters: [arms, ...] tensors of one coder of the class
        for name, p in list(coder.named_parameters()):
            setattr(coder, name, torch.nn.Parameter(torch.stack([p.detach().clone() for _ in range(3)])))
        for name, b in list(coder.named_buffers()):
            setattr(coder, name, torch.stack([b.clone() for _ in range(3)]))
    with torch.no_grad():
        for p in coder.parameters():
            p.add_(0.3 * torch.randn_like(p))  # arms differ, biases are not zero
    x = torch.randn(20, 16)
    parts, sparse = coder.loss(x)
    parts["loss"].sum().backward()
    sparse_grads = {name: p.grad.clone() for name, p in coder.named_parameters()}

    coder.zero_grad()
    pre = (x - with_rows_axis(coder.b_dec)) @ coder.w_enc.mT + with_rows_axis(coder.b_enc)
    flat = torch.relu(pre).flatten(-2)
    values, index = flat.topk(3 * 20, dim=-1)
    f = torch.zeros_like(flat).scatter(-1, index, values).view_as(pre)
    x_hat = f @ coder.w_dec.mT + with_rows_axis(coder.b_dec)
    dense_loss = (x - x_hat).pow(2).sum(-1).mean(-1)
    dense_loss.sum().backward()
    torch.testing.assert_close(sparse.dense(), f.detach())
    torch.testing.assert_close(parts["loss"], dense_loss)
    for name, p in coder.named_parameters():
        torch.testing.assert_close(sparse_grads[name], p.grad, msg=name)


@pytest.mark.parametrize("arms", [(), (3,)])  # one coder, and a stack of three
def test_each_prefix_decodes_its_own_first_latents_of_a_batch_selection(arms):
    from pipeline.coders.batchtopk import batch_top
    from pipeline.coders.topk_kernel import prefix_decode

    rows, n, d, sizes = 9, 40, 6, [5, 17, 40]
    w_dec = torch.randn(*arms, d, n, requires_grad=True)
    pre = torch.randn(*arms, rows, n)
    f = BatchSparseActs(batch_top(pre, 4 * rows), torch.rand(*arms, 4 * rows, requires_grad=True), rows, n)
    decoded = prefix_decode(w_dec, f, sizes)
    dense = [f.dense()[..., :m] @ w_dec[..., :m].mT for m in sizes]
    torch.testing.assert_close(decoded, torch.stack(dense, -3))
    weights = torch.randn(decoded.shape)
    sparse_grads = torch.autograd.grad((decoded * weights).sum(), [w_dec, f.values])
    dense_grads = torch.autograd.grad((torch.stack(dense, -3) * weights).sum(), [w_dec, f.values])
    for sparse, expected in zip(sparse_grads, dense_grads):
        torch.testing.assert_close(sparse, expected)


def test_batchtopk_threshold_is_a_running_minimum_and_is_used_in_eval_mode():
    coder = _coder("batchtopk", k=4)
    assert coder.threshold == 0
    x1, x2 = torch.randn(32, 16), torch.randn(32, 16)
    f1 = coder.loss(x1)[1].dense()
    m1 = f1[f1 > 0].min()
    torch.testing.assert_close(coder.threshold, m1)  # the first step sets it
    f2 = coder.loss(x2)[1].dense()
    torch.testing.assert_close(coder.threshold, 0.9 * m1 + 0.1 * f2[f2 > 0].min())
    with torch.no_grad():  # evaluation (no gradients) leaves it alone
        coder.loss(torch.randn(32, 16))
    torch.testing.assert_close(coder.threshold, 0.9 * m1 + 0.1 * f2[f2 > 0].min())

    coder.eval()
    with torch.no_grad():
        coder.threshold.fill_(0.3)
    x = torch.randn(50, 16)
    pre = (x - coder.b_dec) @ coder.w_enc.t() + coder.b_enc
    f = coder.encode(x)
    torch.testing.assert_close(f, pre * (pre > 0.3))
    assert (f[f != 0] > 0.3).all() and 0 < (f != 0).sum() < pre.numel()
    _, f_loss = coder.loss(x)
    torch.testing.assert_close(f_loss, f)
    assert coder.threshold == 0.3  # eval mode never updates


# --- AuxK ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
def test_auxk_is_zero_without_dead_latents_and_reconstructs_the_residual_with_dead_ones(kind):
    coder = _coder(kind, k=4, aux_k=8, aux_k_coefficient=0.25, dead_tokens_threshold=1000)
    x = torch.randn(32, 16)
    parts, f = coder.loss(x)
    f = _dense(f)
    assert parts["auxk"] == 0
    fired = (f > 0).any(0)
    assert (coder.tokens_since_fired[fired] == 0).all() and (coder.tokens_since_fired[~fired] == 32).all()

    # Every latent idle for the whole window, as a loaded state would have it.
    coder.load_state_dict(coder.state_dict() | {"tokens_since_fired": torch.full((coder.n_features,), 1000)})
    coder.zero_grad()
    parts, f = coder.loss(x, sparsity_scale=0.5)
    f = _dense(f)
    dead = ~(f > 0).any(0)  # those that fired in this batch are alive again
    assert torch.equal(coder.dead(), dead) and dead.sum() > 8

    # Hand computation: the top 8 dead pre-activations of each row, through ReLU, decode the residual.
    pre = ((x - coder.b_dec) @ coder.w_enc.t() + coder.b_enc).detach()
    residual = (x - coder.decode(f)).detach()
    masked = torch.where(dead, pre, torch.tensor(float("-inf")))
    values, index = masked.topk(8, dim=1)
    f_aux = torch.zeros_like(pre).scatter(1, index, torch.relu(values))
    expected = ((residual - f_aux @ coder.w_dec.detach().t()) ** 2).sum(1).mean()
    assert parts["auxk"] > 0
    torch.testing.assert_close(parts["auxk"], expected)
    torch.testing.assert_close(parts["loss"], parts["reconstruction"] + 0.5 * 0.25 * parts["auxk"])

    # Its gradient reaches only dead decoder columns.
    coder.zero_grad()
    parts["auxk"].backward()
    grad_norm = coder.w_dec.grad.norm(dim=0)
    assert (grad_norm[~dead] == 0).all() and (grad_norm[dead] > 0).any()


@pytest.mark.parametrize("arms", [(), (3,)])  # one coder, and a stack of three
@pytest.mark.parametrize("m", [4, 64])  # fewer than the dead of some arms, more than the dead of every arm
def test_the_selection_among_dead_columns_picks_what_the_fixed_size_one_does(arms, m):
    from pipeline.coders.topk import dead_top, dead_top_among_columns

    rows, n = 10, 64
    pre = torch.randn(*arms, rows, n)
    dead = torch.rand(*arms, n) < torch.linspace(0.1, 0.5, arms[0] if arms else 1).view(*arms, 1)  # arms differ
    expected_values, expected_ids = dead_top(pre, dead, m)
    values, ids = dead_top_among_columns(pre, dead, m)

    def chosen(values, ids):  # per (arm, row): the set of dead latents selected, with their values
        return [
            sorted(zip(i[v.isfinite()].tolist(), v[v.isfinite()].tolist()))
            for v, i in zip(values.view(-1, values.shape[-1]), ids.reshape(-1, ids.shape[-1]))
        ]

    assert chosen(values, ids) == chosen(expected_values, expected_ids)
    assert values.shape[-1] <= m


def test_auxk_uses_at_most_the_dead_latents_and_is_capped_at_n_features():
    coder = _coder("topk", n=16, d=8, k=2, aux_k=512, dead_tokens_threshold=1)
    x = torch.randn(4, 8)
    coder.loss(x)  # everything that did not fire is now dead
    parts, _ = coder.loss(x)
    assert parts["auxk"] > 0


def test_auxk_reads_the_idle_counts_only_once_the_host_bound_reaches_the_threshold(monkeypatch):
    coder = _coder("topk", k=4, aux_k=8, dead_tokens_threshold=96)
    reads = []
    real_max = torch.Tensor.max
    monkeypatch.setattr(torch.Tensor, "max", lambda t, *a, **kw: reads.append(1) or real_max(t, *a, **kw))
    for _ in range(2):  # 64 tokens: no latent can be idle for 96
        coder.loss(torch.randn(32, 16))
    assert not reads and coder.idle_bound == 64
    coder.loss(torch.randn(32, 16))  # 96 tokens: the bound cannot rule dead latents out, so the counts are read
    assert len(reads) == 1
    coder.load_state_dict(coder.state_dict())  # a loaded state: nothing is known until the counts are read
    assert coder.idle_bound is None
    coder.loss(torch.randn(32, 16))
    assert len(reads) == 2


def test_auxk_with_few_dead_latents_equals_the_selection_of_exactly_the_dead():
    coder = _coder("topk", n=256, k=4, aux_k=8, dead_tokens_threshold=100)
    x = torch.randn(32, 16)
    silent = (coder.encode(x) == 0).all(0).nonzero().flatten()[:3]  # latents this batch will not fire
    idle = torch.zeros(coder.n_features, dtype=torch.long)
    idle[silent] = 100  # three dead latents, fewer than aux_k
    coder.load_state_dict(coder.state_dict() | {"tokens_since_fired": idle})
    parts, f = coder.loss(x)
    dead = coder.dead()
    assert dead.sum() == 3
    pre = ((x - coder.b_dec) @ coder.w_enc.t() + coder.b_enc).detach()
    residual = (x - coder.decode(f)).detach()
    f_aux = torch.relu(pre) * dead  # every dead latent, since there are fewer than aux_k
    expected = ((residual - f_aux @ coder.w_dec.detach().t()) ** 2).sum(1).mean()
    torch.testing.assert_close(parts["auxk"], expected)


def test_the_firing_count_only_moves_on_training_steps():
    coder = _coder("topk", k=4)
    coder.eval()
    coder.loss(torch.randn(32, 16))
    assert not coder.tokens_since_fired.any()
    coder.train()
    with torch.no_grad():
        coder.loss(torch.randn(32, 16))
    assert not coder.tokens_since_fired.any()


# --- jumprelu --------------------------------------------------------------------------------


def test_jumprelu_functions_match_the_straight_through_estimator_by_hand():
    # theta = 0.5, bandwidth 0.2: the rectangle kernel is 1 for |pre - theta| < 0.1.
    pre = torch.tensor([[0.45, 0.7], [0.58, 0.2]], requires_grad=True)
    log_theta = torch.full((2,), math.log(0.5), requires_grad=True)
    f = JumpReLUFunction.apply(pre, log_theta.exp(), 0.2, False)
    torch.testing.assert_close(f, torch.tensor([[0.0, 0.7], [0.58, 0.0]]))
    f.sum().backward()
    torch.testing.assert_close(pre.grad, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    # feature 0: both rows in the window, d/dtheta = 2 * -(0.5 / 0.2) = -5, d/dlog_theta = theta * -5 = -2.5;
    # feature 1: 0.7 and 0.2 are outside it.
    torch.testing.assert_close(log_theta.grad, torch.tensor([-2.5, 0.0]))

    pre.grad, log_theta.grad = None, None
    step = StepFunction.apply(pre, log_theta.exp(), 0.2, False)
    torch.testing.assert_close(step, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    (step * torch.tensor([1.0, 3.0])).sum().backward()
    assert pre.grad is None  # the step passes no gradient to the pre-activation
    torch.testing.assert_close(log_theta.grad, torch.tensor([0.5 * 2 * -(1 / 0.2), 0.0]))


def test_jumprelu_ste_to_input_gives_the_pre_activation_the_negative_of_the_threshold_gradient():
    # As above (theta 0.5, bandwidth 0.2); rows 0.45 and 0.58 of feature 0 lie in the kernel's window.
    pre = torch.tensor([[0.45, 0.7], [0.58, 0.2]], requires_grad=True)
    theta = torch.full((2,), 0.5, requires_grad=True)
    JumpReLUFunction.apply(pre, theta, 0.2, True).sum().backward()
    # H(pre - theta) plus (theta / eps) K = 2.5 inside the window.
    torch.testing.assert_close(pre.grad, torch.tensor([[2.5, 1.0], [3.5, 0.0]]))
    torch.testing.assert_close(theta.grad, torch.tensor([-5.0, 0.0]))

    pre.grad = theta.grad = None
    StepFunction.apply(pre, theta, 0.2, True).sum().backward()
    torch.testing.assert_close(pre.grad, torch.tensor([[5.0, 0.0], [5.0, 0.0]]))
    torch.testing.assert_close(theta.grad, torch.tensor([-10.0, 0.0]))


@pytest.mark.parametrize("penalty", ["l0", "tanh"])
def test_jumprelu_loss_and_threshold_gradient_match_a_hand_computation(penalty):
    eps, lam, c, scale = 0.05, 0.7, 4.0, 0.5
    coder = _coder(
        "jumprelu",
        n=32,
        d=8,
        l1_coefficient=lam,
        jumprelu_penalty=penalty,
        jumprelu_bandwidth=eps,
        init_threshold=0.05,
        tanh_scale=c,
    )
    with torch.no_grad():
        coder.b_enc.copy_(torch.linspace(-0.1, 0.1, 32))
    x = torch.randn(64, 8)
    parts, f = coder.loss(x, sparsity_scale=scale)

    pre = (x @ coder.w_enc.t() + coder.b_enc).detach()
    theta = coder.threshold.detach()
    w_dec, b_dec = coder.w_dec.detach(), coder.b_dec.detach()
    torch.testing.assert_close(f, pre * (pre > theta))
    torch.testing.assert_close(coder.encode(x), f)
    norms = w_dec.norm(dim=0)
    recon = ((x - f.detach() @ w_dec.t() - b_dec) ** 2).sum(1).mean()
    if penalty == "l0":
        sparsity = (pre > theta).float().sum(1).mean()
    else:
        sparsity = torch.tanh(c * f.detach() * norms).sum(1).mean()
    torch.testing.assert_close(parts["reconstruction"], recon)
    torch.testing.assert_close(parts["sparsity"], sparsity)
    torch.testing.assert_close(parts["loss"], recon + scale * lam * sparsity)

    parts["loss"].backward()
    # dL/df by hand: reconstruction 2 (x_hat - x) W_dec / rows, plus the tanh penalty's c ||W_dec,i|| sech^2 term.
    x_hat = f.detach() @ w_dec.t() + b_dec
    dl_df = 2 * (x_hat - x) @ w_dec / len(x)
    if penalty == "tanh":
        dl_df = dl_df + scale * lam * c * norms * (1 - torch.tanh(c * f.detach() * norms) ** 2) / len(x)
    window = ((pre - theta).abs() < eps / 2).float()
    dl_dtheta = (dl_df * -(theta / eps) * window).sum(0)
    if penalty == "l0":
        dl_dtheta = dl_dtheta + scale * lam * (-(1 / eps) * window).sum(0) / len(x)
    assert window.sum() > 0 and coder.log_threshold.grad.abs().sum() > 0
    torch.testing.assert_close(coder.log_threshold.grad, theta * dl_dtheta)


def test_jumprelu_preact_loss_is_off_by_default_and_penalises_features_below_threshold():
    coder = _coder("jumprelu", preact_coefficient=0.0, l1_coefficient=0.0)
    x = torch.randn(16, 16)
    parts, _ = coder.loss(x)
    torch.testing.assert_close(parts["loss"], parts["reconstruction"])
    coder = _coder("jumprelu", preact_coefficient=0.3, l1_coefficient=0.0)
    parts, _ = coder.loss(x)
    pre = x @ coder.w_enc.t() + coder.b_enc
    preact = (torch.relu(coder.threshold - pre) * coder.w_dec.norm(dim=0)).sum(1).mean()
    torch.testing.assert_close(parts["preact"], preact)
    torch.testing.assert_close(parts["loss"], parts["reconstruction"] + 0.3 * preact)


# --- flops, save/load, training --------------------------------------------------------------


def test_flops_per_token_are_the_hand_counts():
    d, n, k = 384, 1536, 32
    # topk and batchtopk: dense encoder 2dN, sparse decoder 2dk forward; backward twice the forward.
    for kind in ("topk", "batchtopk"):
        assert training_flops(AnyCoderConfig(kind=kind, n_features=n, k=k), d) == 3 * (2 * d * n + 2 * d * k)
        assert _coder(kind, n=n, d=d, k=k).flops_per_token() == 3 * (2 * d * n + 2 * d * k)
        assert _coder(kind, n=n, d=d, k=8).flops_per_token() == 3 * (2 * d * n + 2 * d * 8)
    # jumprelu: dense encoder and decoder, as relu.
    assert training_flops(AnyCoderConfig(kind="jumprelu", n_features=n), d) == 12 * d * n
    assert _coder("jumprelu", n=n, d=d).flops_per_token() == 12 * d * n


@pytest.mark.parametrize("kind", SPARSE_KINDS)
def test_save_and_load_round_trip_for_every_sparse_kind(kind, tmp_path):
    coder = _coder(kind, k=4, dead_tokens_threshold=64, jumprelu_penalty="l0", preact_coefficient=0.1)
    optimizer = torch.optim.Adam(coder.parameters(), lr=1e-2)
    for _ in range(3):  # move weights and running statistics away from their initial values
        coder.loss(torch.randn(32, 16))[0]["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    coder.save(tmp_path / "c")
    loaded = load(tmp_path / "c")
    assert type(loaded) is type(coder) and loaded.config() == coder.config()
    assert loaded.state_dict().keys() == coder.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), coder.state_dict().values()))
    if kind != "jumprelu":
        assert coder.tokens_since_fired.any()
    if kind == "batchtopk":
        assert loaded.threshold > 0
    x = torch.randn(8, 16)
    for mode in ("train", "eval"):
        getattr(coder, mode)(), getattr(loaded, mode)()
        with torch.no_grad():
            a, b = coder.loss(x), loaded.loss(x)
        assert a[0].keys() == b[0].keys()
        for key in a[0]:
            torch.testing.assert_close(a[0][key], b[0][key])
        torch.testing.assert_close(_dense(a[1]), _dense(b[1]))


TRAINING_ARMS = {
    "topk": dict(kind="topk", k=8),
    "batchtopk": dict(kind="batchtopk", k=8),
    "jumprelu-tanh": dict(kind="jumprelu", l1_coefficient=0.5),
    # Adam moves log-thresholds by about lr per step, so a short run starts them where they matter; Gemma Scope's
    # recipe, whose straight-through gradient reaches the thresholds alone.
    "jumprelu-l0": dict(
        kind="jumprelu",
        jumprelu_penalty="l0",
        jumprelu_ste_to_input=False,
        l1_coefficient=1.0,
        init_threshold=0.05,
        jumprelu_bandwidth=0.05,
        init_decoder_norm=1.0,
    ),
}


@pytest.mark.parametrize("arm", TRAINING_ARMS)
def test_short_training_learns_the_synthetic_dictionary(arm, synthetic_store, tmp_path):
    data = ActivationData(synthetic_store, "resid_post.0", TrainConfig(eval_tokens=512), torch.device("cpu"))
    train_cfg = TrainConfig(tokens=40_960, batch_size=256, lr=3e-3, eval_tokens=512)
    coder_cfg = AnyCoderConfig(n_features=128, **TRAINING_ARMS[arm])
    metrics = train_run(coder_cfg, train_cfg, data, tmp_path / "run", TrackingConfig(mode="disabled"), "r", "g")
    assert metrics["fvu"] < 0.3 and metrics["l0"] < (64 if arm == "jumprelu-l0" else 20)
    coder = load(tmp_path / "run" / "coder")
    assert metrics["flops_per_token"] == coder.flops_per_token()
    if arm == "batchtopk":  # inference with the learned threshold keeps about k latents per row
        coder.eval()
        held_out = evaluate(coder, data.eval_batches(256))
        assert held_out["fvu"] < 0.3 and 4 < held_out["l0"] < 16


@pytest.mark.parametrize("kind", ["relu", "jumprelu", "topk", "batchtopk"])
def test_a_kinds_sharded_forward_on_one_rank_is_its_own_loss(kind):
    import copy

    from pipeline.distributed.process_group import World
    from pipeline.train.sharded import ShardedCoder

    coder = _coder(kind, k=4, jumprelu_penalty="l0", preact_coefficient=0.1)
    whole = copy.deepcopy(coder)
    sharded = ShardedCoder(coder, World(0, 1))
    x = torch.randn(32, 16)
    parts, f = sharded.loss(x, 0.5)
    expected, f_whole = whole.loss(x, 0.5)
    assert parts.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(parts[name], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f, _dense(f_whole))
    torch.testing.assert_close(sharded.decode(f), whole.decode(f_whole), rtol=1e-5, atol=1e-6)


def test_a_kind_without_a_sharded_forward_is_refused_for_feature_sharding():
    from pipeline.distributed.process_group import World
    from pipeline.train.sharded import ShardedCoder

    with pytest.raises(ConfigError, match="train.parallel: features sharding supports coder.kind relu, topk"):
        ShardedCoder(_coder("transcoder"), World(0, 1))
