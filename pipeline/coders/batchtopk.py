"""BatchTopK sparse autoencoder (Bussmann, Leask and Nanda, 2024), with OpenAI's AuxK loss.

    pre = W_enc (x - b_dec) + b_enc,  x_hat = W_dec f + b_dec
    training:  f = the k * batch_size largest entries of ReLU(pre) over the whole batch, the rest zero
    inference: f = pre * (pre > threshold)

so rows use a variable number of latents, k on average. `threshold` (a buffer) is the running
estimate of the smallest positive activation the batch selection kept: on each training step the
batch minimum m updates it as threshold <- momentum * threshold + (1 - momentum) * m (the first
step sets it to m; the default momentum 0.9 averages over about the last ten steps, so the estimate
follows activations that drift during training). Until the first training step it is 0, i.e. plain
ReLU. Call `.eval()` to encode with the threshold; in training mode `encode` and `loss` select per
batch.

Once training ends the threshold either stays the running average (`threshold_calibration=running`)
or is calibrated on the held-out rows (`held_out`) to keep the training L0: it becomes the largest
ReLU pre-activation that a selection of the k * rows largest over all held-out rows leaves out, so
exactly k latents per row fire on average there (ties aside). Either way the saved coder encodes as
a JumpReLU with one threshold for every feature, pre * (pre > threshold).

Training is sparse, as TopK's: the selection runs on pre-activations computed without autograd,
only the selected entries carry gradients, and they are decoded row by row with an embedding bag
(`topk_kernel.batch_decode`), so the activations come back as `BatchSparseActs`. Initialisation, the
decoder renormalisation in `after_step`, the dead-latent count and the AuxK loss are those of
`pipeline.coders.topk`.
"""

import itertools
import math
from dataclasses import dataclass

import torch

from pipeline.coders.base import BatchSparseActs, FeatureShard, expect
from pipeline.coders.topk import TopKConfig, TopKFamily
from pipeline.coders.topk_kernel import SelectedPreActivations

CALIBRATIONS = ("running", "held_out")
# On a CPU the batch selection guesses its threshold from every 31st entry or so: at n = k * rows entries
# wanted, the quarter of margin is about 8 standard deviations of the sample's count when n / 31 >= 1000.
SAMPLE_EVERY = 31


@dataclass
class BatchTopKConfig(TopKConfig):
    kind: str = "batchtopk"  # this kind
    threshold_momentum: float = 0.9  # weight of the running threshold against each step's batch minimum, in [0, 1)
    # inference threshold once training ends: running (the training average) or held_out (keeps k per held-out row)
    threshold_calibration: str = "running"

    def __post_init__(self):
        super().__post_init__()
        expect(0 <= self.threshold_momentum < 1, "threshold_momentum", "a momentum in [0, 1)", self.threshold_momentum)
        calibration = self.threshold_calibration
        expect(calibration in CALIBRATIONS, "threshold_calibration", f"one of {', '.join(CALIBRATIONS)}", calibration)


@torch.no_grad()
def batch_top(pre: torch.Tensor, n: int) -> torch.Tensor:
    """The ids of the `n` largest entries of [..., rows, N] `pre` laid out row by row, ascending (so each row's
    entries are together, as `batch_decode` needs them): those one `torch.topk` over the batch would select.

    On a CPU, where `torch.topk` runs one slice on one thread, above a threshold guessed from a sample
    (`top_above_sampled_threshold`); on a GPU, in two rounds (`top_in_two_rounds`), which need no
    host-side count.
    """
    if pre.device.type == "cpu":
        return top_above_sampled_threshold(pre, n)
    return top_in_two_rounds(pre, n)


def top_in_two_rounds(pre: torch.Tensor, n: int) -> torch.Tensor:
    """`batch_top` in two rounds that select what one would: the `n` largest of each of c chunks of whole rows,
    then the `n` largest of those; c, near sqrt(N / k), keeps both rounds small.
    """
    *lead, rows, n_features = pre.shape
    bound = max(1, math.isqrt(n_features * rows // n))
    chunks = next(c for c in range(bound, 0, -1) if rows % c == 0)  # each chunk holds at least n entries
    flat = pre.reshape(*lead, chunks, -1)
    values, index = flat.topk(n, dim=-1, sorted=False)
    index = index + flat.shape[-1] * torch.arange(chunks, device=pre.device).unsqueeze(-1)
    top = values.flatten(-2).topk(n, dim=-1, sorted=False).indices
    return index.flatten(-2).gather(-1, top).sort(dim=-1).values


def top_above_sampled_threshold(pre: torch.Tensor, n: int) -> torch.Tensor:
    """`batch_top` among the entries at or above a threshold guessed from a sample to lie below every arm's `n`
    largest.

    The guess is the value that a quarter more than n/s entries of a sample of every s-th entry reach (s the
    first number from `SAMPLE_EVERY` up with no factor in common with N, so the sample takes every latent in
    turn). The `n` largest are then selected exactly from the entries at or above it, about 1.25 n per arm;
    where it leaves some arm fewer than `n`, the two rounds select instead.
    """
    *lead, rows, n_features = pre.shape
    flat = pre.reshape(-1, rows * n_features)  # one row per arm
    stride = next(s for s in itertools.count(SAMPLE_EVERY) if math.gcd(s, n_features) == 1)
    sample = flat[:, ::stride]
    wanted = min(sample.shape[-1], -(-5 * n // (4 * stride)))
    low = sample.topk(wanted, dim=-1, sorted=False).values.min(-1, keepdim=True).values
    arm, place = (flat >= low).nonzero(as_tuple=True)  # arm by arm, places ascending
    counts = torch.bincount(arm, minlength=len(flat))  # a sum over the boolean mask would take longer than the rest
    if bool((counts < n).any()):
        return top_in_two_rounds(pre, n)
    slot = torch.arange(len(place), device=flat.device) - (counts.cumsum(0) - counts)[arm]
    values = flat.new_full((len(flat), int(counts.max())), float("-inf"))
    values[arm, slot] = flat[arm, place]
    places = torch.zeros(values.shape, dtype=torch.long, device=flat.device)
    places[arm, slot] = place
    top = values.topk(n, dim=-1, sorted=False).indices
    return places.gather(-1, top).sort(dim=-1).values.view(*lead, n)


class BatchTopKSAE(TopKFamily):
    kind = "batchtopk"
    config_class = BatchTopKConfig
    raw_activation = "jumprelu"  # at inference it keeps each pre-activation above its learned threshold
    rows_independent = False  # the selection spans the whole batch

    def __init__(
        self,
        d_in: int,
        n_features: int,
        k: int = 32,
        aux_k: int = 512,
        aux_k_coefficient: float = 1 / 32,
        dead_tokens_threshold: int = 10_000_000,
        threshold_momentum: float = 0.9,
        threshold_calibration: str = "running",
    ):
        super().__init__(
            d_in, n_features, k, aux_k, aux_k_coefficient, dead_tokens_threshold,
            threshold_momentum=threshold_momentum, threshold_calibration=threshold_calibration,
        )  # fmt: skip
        self.threshold_momentum, self.threshold_calibration = threshold_momentum, threshold_calibration
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if not self.training:
            theta = self.threshold.view(*self.arms, *[1] * (pre.dim() - len(self.arms)))  # one per arm of a stack
            return pre * (pre > theta)
        flat = torch.relu(pre).reshape(*self.arms, -1)  # each arm of a stack selects over its own batch
        values, index = flat.topk(self.k * (flat.shape[-1] // self.n_features), dim=-1)
        return torch.zeros_like(flat).scatter(-1, index, values).view_as(pre)

    def loss(self, x: torch.Tensor, sparsity_scale: float = 1.0) -> tuple[dict[str, torch.Tensor], BatchSparseActs]:
        if not self.training:  # the learned threshold, as `activate` applies it
            return super().loss(x, sparsity_scale)
        pre, f = self.batch_selection(x)
        return self.loss_parts(x, self.decode(f), pre, sparsity_scale), f

    def batch_selection(self, x: torch.Tensor) -> tuple[torch.Tensor, BatchSparseActs]:
        """A training step's pre-activations (without autograd) and selection, its running statistics updated."""
        pre = self.selection_pre(x)
        rows = pre.shape[-2]
        flat = batch_top(pre, self.k * rows)
        values = torch.relu(SelectedPreActivations.apply(x, self.w_enc, self.b_enc, self.b_dec, pre, flat))
        f = BatchSparseActs(flat, values, rows, self.n_features)
        if self.updating():
            self.count_firing(f)
            self.after_activation(values.detach())
        return pre, f

    @property
    def arms(self) -> tuple[int, ...]:
        """(arms,) for a stack of coders (`pipeline.train.stack`), () for one coder."""
        return tuple(self.w_enc.shape[:-2])

    @torch.no_grad()
    def after_activation(self, f: torch.Tensor) -> None:
        # Smallest positive selected activation (of the dense activations or the selected values), without a
        # host sync; +inf when nothing fired.
        positive = torch.where(f > 0, f, torch.full_like(f, float("inf"))).reshape(*self.arms, -1)
        batch_min = positive.min(-1).values.to(self.threshold.dtype)
        seen = torch.isfinite(batch_min)
        m = self.threshold_momentum
        running = torch.where(self.threshold_updates > 0, m * self.threshold + (1 - m) * batch_min, batch_min)
        self.threshold.copy_(torch.where(seen, running, self.threshold))
        self.threshold_updates += seen.long()

    def sharded_activate(self, pre: torch.Tensor, shard: FeatureShard) -> torch.Tensor:
        if not self.training:
            return self.activate(pre)  # at evaluation the learned threshold, feature by feature
        rows = pre.shape[0]
        return shard.top(torch.relu(pre).flatten(), self.k * rows, shard.widest * rows).view_as(pre)

    def sharded_after_activation(self, f: torch.Tensor, shard: FeatureShard) -> None:
        # The running threshold follows the smallest positive activation kept in the whole batch; handing
        # it the minimum over all ranks makes every rank take the same step.
        positive = torch.where(f > 0, f, torch.full_like(f, math.inf))
        self.after_activation(shard.reduce(positive.min().reshape(1), "min"))

    def held_out_candidates(self, inputs: list[torch.Tensor], pre_activation) -> torch.Tensor:
        """The k * rows + 1 largest ReLU pre-activations over all rows of `inputs` (all of them where fewer), in
        decreasing order: a running selection, so no [rows x features] tensor of all rows is kept."""
        n = self.k * sum(len(x) for x in inputs) + 1
        kept = torch.zeros(0, device=self.w_enc.device)
        for x in inputs:
            pool = torch.cat([kept, torch.relu(pre_activation(x)).flatten().float()])
            kept = pool.topk(min(n, len(pool))).values
        return kept

    @torch.no_grad()
    def calibrate(self, inputs: list[torch.Tensor]) -> None:
        if self.threshold_calibration == "held_out":
            kept, n = self.held_out_candidates(inputs, self.pre_activation), self.k * sum(len(x) for x in inputs)
            # Fewer candidates than k per row and one: every positive activation is kept, a threshold of 0.
            self.threshold.fill_(kept[n] if len(kept) > n else 0.0)

    @torch.no_grad()
    def sharded_calibrate(self, inputs: list[torch.Tensor], shard: FeatureShard) -> None:
        # Each rank offers its own largest k * rows + 1; among all ranks' offers the smallest winner is the
        # threshold, unless fewer of them than that are positive.
        if self.threshold_calibration != "held_out":
            return
        kept = self.held_out_candidates(inputs, lambda x: self.sharded_pre_activation(x, shard))
        n = self.k * sum(len(x) for x in inputs) + 1
        winners = shard.top(torch.nn.functional.pad(kept, (0, n - len(kept))), n, n)
        positive = shard.reduce((winners > 0).sum())
        smallest = shard.reduce(torch.where(winners > 0, winners, math.inf).min().reshape(1), "min")
        self.threshold.fill_(smallest[0] if positive >= n else 0.0)
