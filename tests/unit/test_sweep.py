"""Planning a sweep: its arms, its files and its packs (the sweeps that run are in tests/integration/test_sweep.py)."""

import json

import pytest

from pipeline.errors import ConfigError
from pipeline.sweep.plan import plan
from pipeline.sweep.spec import SweepSpec, kind_sparsities, load_spec

from integration.test_sweep import _write_sweep


def test_tokens_are_the_budget_over_flops_per_token():
    arms = plan(SweepSpec(budgets=[1e9], expansion=[1, 2], lrs=[1e-3], batch_size=100), d_in=64, train_rows=10**6)
    assert [a.n_features for a in arms] == [64, 128]
    for arm in arms:
        fpt = 12 * 64 * arm.n_features
        assert arm.steps == int(1e9 // fpt) // 100 and arm.tokens == arm.steps * 100
        assert arm.flops == arm.tokens * fpt <= 1e9


def test_topk_arms_are_planned_with_their_k():
    arms = plan(
        SweepSpec(kind="topk", budgets=[1e9], n_features=[256], lrs=[1e-3], sparsity=[8, 32], batch_size=10), 64, 10**6
    )
    assert [a.run_id for a in arms] == ["topk_C1e+09_N256_lr0.001_k8_s0", "topk_C1e+09_N256_lr0.001_k32_s0"]
    for arm, k in zip(arms, (8, 32)):
        assert arm.sparsity == k and arm.steps == int(1e9 // (3 * (2 * 64 * 256 + 2 * 64 * k))) // 10


def test_arms_that_cannot_run_are_refused_with_the_arm_named():
    with pytest.raises(ConfigError, match=r"arm relu_C1000_N64_lr0.001_l1-5_s0: .*less than one batch"):
        plan(SweepSpec(budgets=[1e3], n_features=[64], lrs=[1e-3]), d_in=8, train_rows=10**6)
    with pytest.raises(ConfigError, match="repeat_data is false"):
        plan(SweepSpec(budgets=[1e9], n_features=[64], lrs=[1e-3], repeat_data=False), d_in=8, train_rows=1000)


def test_sweep_files_are_validated(tmp_path):
    assert load_spec("quickstart").budgets and load_spec("smoke").lrs
    with pytest.raises(ConfigError, match="sweep: no sweep file 'nope'"):
        load_spec("nope")
    with pytest.raises(ConfigError, match="budgets should be a non-empty list of positive"):
        load_spec(_write_sweep(tmp_path, budgets=[-1.0]))
    with pytest.raises(ConfigError, match="exactly one of the two"):
        load_spec(_write_sweep(tmp_path, expansion=[2]))
    with pytest.raises(ConfigError, match="tiny.yaml"):
        load_spec(_write_sweep(tmp_path, widths=[2]))
    (tmp_path / "broken.yaml").write_text("budgets: [1e9, 2e9\nlrs: [1e-3]\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: expected a YAML mapping .* at line 2, column 4$"):
        load_spec(str(tmp_path / "broken.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a YAML mapping of sweep fields, got a list"):
        load_spec(str(tmp_path / "list.yaml"))


def test_packs_group_arms_that_see_the_same_batches():
    from pipeline.sweep.launch import packs

    arms = plan(SweepSpec(budgets=[1e9], n_features=[8, 16, 32], lrs=[1e-3], seeds=[0, 1], batch_size=10), 8, 10**6)
    groups = packs(arms, 2)
    assert [len(g) for g in groups] == [2, 1, 2, 1]
    assert all(len({(a.seed, a.batch_size) for a in g}) == 1 for g in groups)


def test_packs_put_arms_that_stack_side_by_side():
    from pipeline.sweep.launch import packs

    # Plan order interleaves widths within each rate; packs of 2 then hold one width each, so each pack stacks.
    spec = SweepSpec(budgets=[1e9], n_features=[8, 16], lrs=[1e-3, 3e-3], sparsity=[1.0, 5.0], batch_size=10)
    arms = sorted(plan(spec, 8, 10**6), key=lambda a: (a.lr, a.sparsity))
    groups = packs(arms, 4)
    assert [[a.n_features for a in g] for g in groups] == [[8, 8, 8, 8], [16, 16, 16, 16]]
    # TopK arms stack only with the same k, so each pack holds one k.
    topk = plan(
        SweepSpec(kind="topk", budgets=[1e9], n_features=[256], lrs=[1e-3, 3e-3], sparsity=[8, 32], batch_size=10),
        64,
        10**6,
    )
    ks = [tuple({a.sparsity for a in g}) for g in packs(sorted(topk, key=lambda a: a.lr), 2)]
    assert sorted(ks) == [(8,), (32,)]


def _write_kinds_sweep(folder, **fields) -> str:
    spec = {
        "kinds": ["relu", "topk", "batchtopk", "jumprelu"],
        "target_l0": 16,
        "sparsity_by_kind": {"relu": 3.0, "jumprelu": 0.5},
        "budgets": [1e9],
        "n_features": [64, 128],
        "lrs": [1e-3],
        "seeds": [0, 1],
        "batch_size": 10,
        **fields,
    }
    path = folder / "kinds.yaml"
    path.write_text(json.dumps(spec))
    return str(path)


def test_a_sweep_of_several_kinds_sets_each_for_the_target_l0(tmp_path):
    spec = load_spec(_write_kinds_sweep(tmp_path))
    assert kind_sparsities(spec) == {"relu": [3.0], "topk": [16], "batchtopk": [16], "jumprelu": [0.5]}
    arms = plan(spec, d_in=32, train_rows=10**6)
    assert len(arms) == 4 * 2 * 2
    by_kind = {kind: [a for a in arms if a.kind == kind] for kind in spec.kinds}
    assert [len(a) for a in by_kind.values()] == [4, 4, 4, 4]
    assert {a.sparsity for a in by_kind["topk"] + by_kind["batchtopk"]} == {16}
    assert {a.sparsity for a in by_kind["relu"]} == {3.0} and {a.sparsity for a in by_kind["jumprelu"]} == {0.5}
    assert "batchtopk_C1e+09_N128_lr0.001_k16_s1" in {a.run_id for a in arms}
    assert "jumprelu_C1e+09_N64_lr0.001_l1-0.5_s0" in {a.run_id for a in arms}
    for arm in by_kind["topk"]:  # each kind's own FLOPs per token buys its tokens
        assert arm.steps == int(1e9 // (3 * (2 * 32 * arm.n_features + 2 * 32 * 16))) // 10
    for arm in by_kind["relu"]:
        assert arm.steps == int(1e9 // (12 * 32 * arm.n_features)) // 10
    from pipeline.sweep.launch import packs

    # Arms of every kind that see the same batches (one seed) share packs, those of one kind side by side.
    grouped = packs(arms, 4)
    assert len(grouped) == 4 and all(len({a.seed for a in g}) == 1 for g in grouped)
    assert [[a.kind for a in g] for g in grouped[:2]] == [
        ["batchtopk"] * 2 + ["jumprelu"] * 2,
        ["relu"] * 2 + ["topk"] * 2,
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "relu"}, "kind is not used with kinds"),
        ({"sparsity": [5.0]}, "sparsity is not used with kinds"),
        ({"kinds": ["relu", "nope"]}, "kinds should name kinds among .* got 'nope'"),
        ({"kinds": ["topk", "topk"]}, "should name each kind once"),
        ({"kinds": ["relu", "transcoder"], "target_hook": "mlp_out.1"}, "should all read and predict the same"),
        ({"target_l0": 0}, "target_l0 should be the positive L0"),
        (
            {"sparsity_by_kind": {"relu": 3.0}},
            r"sparsity_by_kind.jumprelu should be the l1_coefficient .* target_l0=16",
        ),
        ({"sparsity_by_kind": {"relu": 3.0, "jumprelu": 1.0, "topk": 8}}, "sparsity_by_kind.topk is not used"),
        ({"kinds": ["relu"], "sparsity_by_kind": {"relu": 1.0, "jumprelu": 1.0}}, "names a kind that kinds does not"),
    ],
)
def test_bad_kinds_sweeps_are_refused_with_the_field_named(tmp_path, fields, message):
    with pytest.raises(ConfigError, match=message):
        load_spec(_write_kinds_sweep(tmp_path, **fields))


def test_target_l0_needs_kinds(tmp_path):
    with pytest.raises(ConfigError, match="target_l0 is only used with kinds"):
        load_spec(_write_sweep(tmp_path, target_l0=16))
