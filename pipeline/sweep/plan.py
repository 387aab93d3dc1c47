"""From a sweep spec to its arms: each (budget C, width N) trains T = C / flops_per_token(N) tokens."""

import itertools
from dataclasses import asdict, dataclass

from pipeline.coders.registry import SPARSITY_FIELD, coder_class
from pipeline.errors import ConfigError
from pipeline.sweep.spec import SweepSpec


@dataclass(frozen=True)
class Arm:
    run_id: str
    kind: str
    budget: float  # planned training FLOPs
    n_features: int
    d_in: int
    lr: float
    sparsity: float  # penalty lambda or k, as SPARSITY_FIELD says for the kind
    seed: int
    batch_size: int
    steps: int
    tokens: int  # steps * batch_size, at most the budget's T
    flops: float  # tokens * flops_per_token: what the arm will spend

    def as_dict(self) -> dict:
        return asdict(self)


def widths(spec: SweepSpec, d_in: int) -> list[int]:
    return list(spec.n_features) or [round(e * d_in) for e in spec.expansion]


def plan(spec: SweepSpec, d_in: int, train_rows: int) -> list[Arm]:
    """Every arm, or ConfigError naming the first arm that cannot run on this store."""
    cls = coder_class(spec.kind)
    uses_k = SPARSITY_FIELD[spec.kind] == "k"
    arms = []
    for budget, n, lr, sparsity, seed in itertools.product(
        spec.budgets, widths(spec, d_in), spec.lrs, spec.sparsity, spec.seeds
    ):
        tag = f"k{int(sparsity)}" if uses_k else f"l1-{sparsity:g}"
        run_id = f"{spec.kind}_C{budget:g}_N{n}_lr{lr:g}_{tag}_s{seed}"
        fpt = cls.training_flops(d_in, n, k=int(sparsity)) if uses_k else cls.training_flops(d_in, n)
        steps = int(budget // fpt) // spec.batch_size
        if steps < 1:
            raise ConfigError(
                f"sweep: {spec.name}: arm {run_id}: budget {budget:g} FLOPs buys {budget / fpt:,.0f} tokens, "
                f"less than one batch of {spec.batch_size}"
            )
        if not spec.repeat_data and steps * spec.batch_size > train_rows:
            raise ConfigError(
                f"sweep: {spec.name}: arm {run_id}: needs {steps * spec.batch_size:,} tokens but the store has "
                f"{train_rows:,} training rows and repeat_data is false"
            )
        tokens = steps * spec.batch_size
        arms.append(Arm(run_id, spec.kind, budget, n, d_in, lr, sparsity, seed, spec.batch_size, steps, tokens, tokens * fpt))
    return arms


def format_table(arms: list[Arm]) -> str:
    head = f"{'run_id':<44} {'budget':>9} {'N':>7} {'lr':>8} {'sparsity':>8} {'tokens':>11} {'steps':>7}"
    rows = [
        f"{a.run_id:<44} {a.budget:>9.2e} {a.n_features:>7} {a.lr:>8.2g} {a.sparsity:>8g} {a.tokens:>11,} {a.steps:>7}"
        for a in arms
    ]
    return "\n".join([head, *rows])
