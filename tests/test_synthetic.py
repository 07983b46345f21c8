"""Planted worlds through the production counting engine and the SAL statistics."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sal import plots, synthetic
from sal.config.evaluate import WorldConfig

# Small worlds: about 90 triggered samples per planted premise set, counted over the planted
# features only (the planted rules' counts do not depend on the other features).
SMALL = WorldConfig(
    n_samples=600,
    n_features=400,
    n_planted_per_kind=20,
    trigger_rate=0.15,
    background_active=10,
    count_scope="planted",
)
FAST = dict(n_bootstrap=200, n_permutations=199)


def _world(**kw):
    return synthetic.generate_world(replace(SMALL, **kw))


def test_world_shape_values_and_planted_table():
    w = _world()
    lc = w.layer_counts
    assert lc.shape == (SMALL.n_samples, SMALL.n_features)
    assert lc.dtype.kind == "i" and lc.data.min() >= 1 and lc.data.max() <= SMALL.n_layers
    p = w.planted
    assert (p.groupby("category").size() == SMALL.n_planted_per_kind).all()
    two = p[p["p2"] >= 0]
    assert (two["p1"] < two["p2"]).all() and (two["n_premise"] == 2).all()
    ids = np.concatenate([p["p1"], two["p2"], p["q"]])
    assert len(set(ids)) == len(ids), "planted features must be distinct across rules"


def test_planted_relations_hold_in_layer_counts():
    # Strict at full separation: whenever all premises fire, the conclusion fires in fewer
    # layers than every premise (the counting rule a_p > a_q > 0).
    w = _world(separation=1.0)
    a = w.layer_counts.toarray()
    for r in w.planted[w.planted["category"] == "Strict"].itertuples():
        prem = [r.p1] + ([r.p2] if r.p2 >= 0 else [])
        fired = (a[:, prem] > 0).all(axis=1)
        assert fired.sum() > 50
        weakest = a[fired][:, prem].min(axis=1)
        assert ((a[fired, r.q] > 0) & (a[fired, r.q] < weakest)).all()


def test_agnostic_world_gives_kinds_the_same_strengths():
    w = _world(mode="agnostic", n_planted_per_kind=60, n_features=1000)
    groups = [g["strength"].to_numpy() for _, g in w.planted.groupby("category")]
    assert stats.kruskal(*groups).pvalue > 0.01
    lo, hi = SMALL.agnostic_strength
    assert all(((g >= lo) & (g <= hi)).all() for g in groups)


def test_label_file_is_what_the_replay_judge_reads(tmp_path):
    w = _world()
    path = synthetic.write_labels(w, tmp_path / "labels.csv")
    labels = pd.read_csv(path)
    assert list(labels.columns) == ["p1", "p2", "q", "category", "rationale"]
    assert set(labels["category"]) == {"Strict", "Plausible", "No"}
    assert (labels.loc[w.planted["n_premise"] == 1, "p2"] == -1).all()
    # Labels read back from the file give the same SAL as the ground truth in memory.
    rules = synthetic.count_world_rules(w)
    a = synthetic.validate_world(w, rules=rules, **FAST)
    b = synthetic.validate_world(w, rules=rules, labels=labels, **FAST)
    assert a.sal.sal == pytest.approx(b.sal.sal) and a.sal.counts == b.sal.counts


def test_save_and_load_round_trip(tmp_path):
    w = _world()
    synthetic.save_world(w, tmp_path / "world")
    back = synthetic.load_world(tmp_path / "world")
    assert (back.layer_counts != w.layer_counts).nnz == 0
    assert back.config == w.config
    pd.testing.assert_frame_equal(back.planted, w.planted)


def test_strict_rules_recovered_with_high_probability():
    v = synthetic.validate_world(_world(separation=1.0), **FAST)
    rec = v.recovery
    assert rec.by_category.loc["Strict", "n_emitted"] == SMALL.n_planted_per_kind
    assert rec.strict_min_prob > 0.9 and rec.strict_recovered == 1.0
    assert rec.by_category.loc["No", "mean_prob"] < 0.2


def test_aware_world_beats_agnostic_and_is_significant():
    aware = synthetic.validate_world(_world(mode="aware", separation=1.0), n_permutations=999,
                                     n_bootstrap=200)
    agnostic = synthetic.validate_world(_world(mode="agnostic"), n_permutations=999,
                                        n_bootstrap=200)
    assert aware.sal.sal > agnostic.sal.sal
    assert aware.sal.p_value < 0.01
    assert aware.sal.ci[0] > agnostic.sal.ci[1]


def test_agnostic_world_not_significant_in_most_seeds():
    pvals = [
        synthetic.validate_world(_world(mode="agnostic", seed=s), n_bootstrap=10,
                                 n_permutations=199).sal.p_value
        for s in range(6)
    ]
    assert sum(p < 0.05 for p in pvals) <= 1, pvals


def test_sal_rises_with_separation(tmp_path):
    sweep = synthetic.separation_sweep(SMALL, separations=[0.0, 0.1, 0.3, 0.6, 1.0], n_seeds=1,
                                       n_bootstrap=50, n_permutations=50)
    sal = sweep.sort_values("separation")["sal"].to_numpy()
    assert (np.diff(sal) > 0).all(), sal
    assert (sweep["mode"] == "agnostic").sum() == 1
    assert plots.plot_validation(sweep, tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"


def test_world_config_validation_names_the_field():
    with pytest.raises(ValueError, match="world.mode"):
        WorldConfig(mode="clever")
    with pytest.raises(ValueError, match="world.n_features"):
        WorldConfig(n_features=50)
    with pytest.raises(ValueError, match="plausible_strength"):
        WorldConfig(plausible_strength=[0.9, 0.6])
    WorldConfig()


def test_counting_scope_does_not_change_planted_rules():
    w = _world(separation=0.5)
    keys = ["p1", "p2", "q"]
    planted = w.planted[keys]
    got = {
        scope: planted.merge(synthetic.count_world_rules(w, scope=scope), on=keys)
        .sort_values(keys)
        .reset_index(drop=True)
        for scope in ("planted", "all")
    }
    assert len(got["all"]) >= 0.9 * len(planted)
    pd.testing.assert_frame_equal(got["planted"], got["all"])
