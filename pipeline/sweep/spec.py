"""A sweep file (`sweeps/NAME.yaml`): what to vary across the arms of a scaling-law study."""

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.coders.registry import KINDS, coder_class
from pipeline.errors import ConfigError

PACKAGED = Path(__file__).resolve().parents[2] / "sweeps"


@dataclass
class SweepSpec:
    name: str = ""  # sweep id, used to group runs (defaults to the file's stem)
    kind: str = "relu"  # coder kind of every arm (or list several in `kinds`)
    # kinds compared at one target L0, each with its own arms (instead of `kind` and `sparsity`)
    kinds: list[str] = field(default_factory=list)
    # with `kinds`: the mean active features per token every kind is set for (0: none, where every kind
    # takes a penalty)
    target_l0: int = 0
    # with `kinds`: per penalty kind, the lambda recorded to give about target_l0 on this store (its lambda)
    sparsity_by_kind: dict[str, float] = field(default_factory=dict)
    budgets: list[float] = field(default_factory=list)  # compute budgets C, in training FLOPs per arm
    n_features: list[int] = field(default_factory=list)  # dictionary widths N (or use `expansion`)
    # widths as multiples of the activation size d (per layer for a clt)
    expansion: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)  # peak learning rates
    # per arm: penalty lambda (relu, jumprelu, transcoder, clt) or k (topk, batchtopk)
    sparsity: list[float] = field(default_factory=lambda: [5.0])
    seeds: list[int] = field(default_factory=lambda: [0])  # seeds of init and data order
    batch_size: int = 1024  # activation rows per step
    repeat_data: bool = True  # allow arms to see the store's rows more than once
    # store array the arms read (an SAE's input, a transcoder's mlp_in.L); empty = train.hook or
    # the store's first
    hook: str = ""
    target_hook: str = ""  # transcoder: the store array it predicts (e.g. mlp_out.3); empty for other kinds
    # clt: the layers it spans, reading mlp_in.L and predicting mlp_out.L
    layers: list[int] = field(default_factory=list)
    # transcoder, clt: a learned linear map from each input to its output (counted in FLOPs)
    skip_connection: bool = False


def find_sweep(name: str) -> Path:
    """A path to a YAML file, else `sweeps/NAME.yaml` here or among the packaged sweeps."""
    for candidate in (Path(name), Path("sweeps") / f"{name}.yaml", PACKAGED / f"{name}.yaml"):
        if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
            return candidate
    raise ConfigError(f"sweep: no sweep file {name!r} (looked for sweeps/{name}.yaml and the packaged sweeps)")


def load_spec(name: str) -> SweepSpec:
    path = find_sweep(name)
    try:
        loaded = OmegaConf.load(path)
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"sweep: {path}: expected a YAML mapping of sweep fields; {_problem(err)}") from err
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"sweep: {path}: expected a YAML mapping of sweep fields, got a list")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweepSpec(name=path.stem)), loaded)
    except OmegaConfBaseException as err:
        raise ConfigError(f"sweep: {path}: {_first_line(err)}") from err
    spec = SweepSpec(**OmegaConf.to_container(merged))
    given = set(loaded.keys())
    if spec.kinds and given & {"kind", "sparsity"}:
        raise ConfigError(
            f"sweep: {path}: {min(given & {'kind', 'sparsity'})} is not used with kinds; expected target_l0 and "
            "sparsity_by_kind instead"
        )
    _validate(spec, path)
    return spec


def kind_sparsities(spec: SweepSpec) -> dict[str, list[float]]:
    """{kind: its arms' sparsity values}: `sparsity` for the one `kind`, or each of `kinds` set for `target_l0`
    (k = target_l0 where the kind's sparsity is its L0, the recorded lambda where it is a penalty)."""
    if not spec.kinds:
        return {spec.kind: list(spec.sparsity)}
    return {
        kind: [spec.target_l0 if coder_class(kind).sparsity_is_l0 else spec.sparsity_by_kind[kind]]
        for kind in spec.kinds
    }


def _first_line(err: Exception) -> str:
    return " ".join(str(err).split("\n")[0].split()) or type(err).__name__


def _problem(err: Exception) -> str:
    """A YAML error's problem and where it is, on one line (PyYAML spreads them over several)."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{getattr(err, 'problem', None) or _first_line(err)}{where}"


def _validate(spec: SweepSpec, path: Path) -> None:
    def fail(field_: str, expected: str) -> None:
        raise ConfigError(f"sweep: {path}: {field_} {expected}")

    if not spec.budgets or any(b <= 0 for b in spec.budgets):
        fail("budgets", f"should be a non-empty list of positive FLOP counts, got {spec.budgets}")
    if bool(spec.n_features) == bool(spec.expansion):
        fail("n_features/expansion", "exactly one of the two should list the widths")
    if any(w <= 0 for w in [*spec.n_features, *spec.expansion]):
        fail("n_features/expansion", "should hold positive widths")
    if not spec.lrs or any(lr <= 0 for lr in spec.lrs):
        fail("lrs", f"should be a non-empty list of positive learning rates, got {spec.lrs}")
    if not spec.sparsity or any(c < 0 for c in spec.sparsity):
        fail("sparsity", f"should be a non-empty list of non-negative numbers, got {spec.sparsity}")
    if not spec.seeds:
        fail("seeds", "should list at least one seed")
    if spec.batch_size <= 0:
        fail("batch_size", f"should be positive, got {spec.batch_size}")
    if spec.kinds:
        _validate_kinds(spec, fail)
    elif spec.target_l0 or spec.sparsity_by_kind:
        fail("target_l0" if spec.target_l0 else "sparsity_by_kind", "is only used with kinds; expected it unset")
    for kind in spec.kinds or [spec.kind]:
        _validate_arrays(spec, kind, fail)


def _validate_kinds(spec: SweepSpec, fail) -> None:
    """Distinct known kinds that read and predict the same arrays, each with its setting for target_l0."""
    unknown = [k for k in spec.kinds if k not in KINDS]
    if unknown:
        fail("kinds", f"should name kinds among {', '.join(KINDS)}, got {unknown[0]!r}")
    if len(set(spec.kinds)) != len(spec.kinds):
        fail("kinds", f"should name each kind once, got {spec.kinds}")
    shapes = {(KINDS[k].target_field, KINDS[k].layered) for k in spec.kinds}
    if len(shapes) > 1:
        fail("kinds", f"should all read and predict the same arrays (compare SAEs with SAEs), got {spec.kinds}")
    sets_k = any(KINDS[k].sparsity_is_l0 for k in spec.kinds)
    if spec.target_l0 < 0 or (sets_k and not spec.target_l0):
        fail("target_l0", f"should be the positive L0 every kind is set for, got {spec.target_l0}")
    aim = f" that gives about target_l0={spec.target_l0} active features" if spec.target_l0 else " of its arms"
    for kind in spec.kinds:
        recorded = spec.sparsity_by_kind.get(kind)
        if KINDS[kind].sparsity_is_l0 and recorded is not None:
            fail(f"sparsity_by_kind.{kind}", f"is not used: a {kind}'s {KINDS[kind].sparsity_field} is target_l0")
        if not KINDS[kind].sparsity_is_l0 and (recorded is None or recorded < 0):
            fail(
                f"sparsity_by_kind.{kind}",
                f"should be the {KINDS[kind].sparsity_field} (>= 0){aim}, got {recorded}",
            )
    extra = sorted(set(spec.sparsity_by_kind) - set(spec.kinds))
    if extra:
        fail(f"sparsity_by_kind.{extra[0]}", "names a kind that kinds does not list")


def _validate_arrays(spec: SweepSpec, kind: str, fail) -> None:
    """The fields naming what the arms read and predict must fit the kind."""
    needs = coder_class(kind).target_field
    for name, example in (("target_hook", "mlp_out.3"), ("layers", "[0, 1, 2]")):
        if name == needs and not getattr(spec, name):
            fail(name, f"should say what a {kind} predicts (e.g. {example})")
        if name != needs and getattr(spec, name):
            fail(name, f"is not used by kind {kind}; expected it empty")
    if spec.layers and (spec.layers != sorted(set(spec.layers)) or spec.layers[0] < 0):
        fail("layers", f"should be distinct layer numbers >= 0 in increasing order, got {spec.layers}")
    if spec.layers and spec.hook:
        fail("hook", f"is not used by a {kind}, which reads mlp_in.L of its layers; expected it empty")
    with_skip = [kind for kind, cls in KINDS.items() if "skip_connection" in {f.name for f in fields(cls.config_class)}]
    if spec.skip_connection and kind not in with_skip:
        fail("skip_connection", f"is only for kinds {', '.join(with_skip)}, not {kind}")
