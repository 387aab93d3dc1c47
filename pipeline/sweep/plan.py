"""From a sweep spec to its arms: each (budget C, width N) trains T = C / flops_per_token(N) tokens.

N counts every feature of an arm; a CLT's are split evenly over its layers, so its widths from
`expansion` are per layer (N = layers * round(expansion * d)).
"""

import itertools
from dataclasses import asdict, dataclass

from pipeline.coders.registry import AnyCoderConfig, coder_class, sparsity_setting, training_flops
from pipeline.errors import ConfigError
from pipeline.sweep.spec import SweepSpec, kind_sparsities


@dataclass(frozen=True)
class Arm:
    run_id: str
    kind: str
    budget: float  # planned training FLOPs
    n_features: int
    d_in: int
    lr: float
    sparsity: float  # the value of the kind's `sparsity_field`: a penalty lambda or k
    seed: int
    batch_size: int
    steps: int
    tokens: int  # steps * batch_size, at most the budget's T
    flops: float  # tokens * flops_per_token: what the arm will spend
    hook: str = ""  # store array the arm reads; empty = train.hook or the store's first
    target_hook: str = ""  # transcoder: the array it predicts
    layers: tuple[int, ...] = ()  # clt: the layers it spans
    skip_connection: bool = False  # transcoder, clt: with a linear skip connection

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))  # a list when read back from plan.json

    def as_dict(self) -> dict:
        return asdict(self)


def widths(spec: SweepSpec, d_in: int) -> list[int]:
    per_layer = max(1, len(spec.layers))
    return list(spec.n_features) or [per_layer * round(e * d_in) for e in spec.expansion]


def plan(spec: SweepSpec, d_in: int, train_rows: int) -> list[Arm]:
    """Every arm, kind by kind, or ConfigError naming the first arm that cannot run on this store."""
    arms = []
    for kind, sparsities in kind_sparsities(spec).items():
        arms += _plan_kind(spec, kind, sparsities, d_in, train_rows)
    return arms


def _plan_kind(spec: SweepSpec, kind_name: str, sparsities: list[float], d_in: int, train_rows: int) -> list[Arm]:
    kind = coder_class(kind_name)
    n_layers = max(1, len(spec.layers))
    shared = {
        "hook": spec.hook,
        "target_hook": spec.target_hook,
        "layers": tuple(spec.layers),
        "skip_connection": spec.skip_connection,
    }
    arms = []
    for budget, n, lr, sparsity, seed in itertools.product(
        spec.budgets, widths(spec, d_in), spec.lrs, sparsities, spec.seeds
    ):
        setting = sparsity_setting(kind_name, sparsity)
        tag = kind.sparsity_tag.format(setting[kind.sparsity_field])
        run_id = f"{kind_name}_C{budget:g}_N{n}_lr{lr:g}_{tag}_s{seed}"
        if n % n_layers:
            raise ConfigError(
                f"sweep: {spec.name}: arm {run_id}: {n} features do not split evenly over {n_layers} layers"
            )
        try:
            coder = AnyCoderConfig(kind=kind_name, n_features=n, skip_connection=spec.skip_connection, **setting)
        except ConfigError as err:
            raise ConfigError(f"sweep: {spec.name}: arm {run_id}: {err}") from err
        fpt = training_flops(coder, d_in, n_layers)
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
        arms.append(
            Arm(
                run_id,
                kind_name,
                budget,
                n,
                d_in,
                lr,
                sparsity,
                seed,
                spec.batch_size,
                steps,
                tokens,
                tokens * fpt,
                **shared,
            )
        )
    return arms


def format_table(arms: list[Arm]) -> str:
    head = f"{'run_id':<44} {'budget':>9} {'N':>7} {'lr':>8} {'sparsity':>8} {'tokens':>11} {'steps':>7}"
    rows = [
        f"{a.run_id:<44} {a.budget:>9.2e} {a.n_features:>7} {a.lr:>8.2g} {a.sparsity:>8g} {a.tokens:>11,} {a.steps:>7}"
        for a in arms
    ]
    return "\n".join([head, *rows])
