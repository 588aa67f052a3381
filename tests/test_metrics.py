"""Tests of metrics.py on hand-made metrics (fake_metrics.py): aggregation over seeds and the effect verdicts on
paired differences."""
import re

import numpy as np
import pytest

import metrics
from fake_metrics import BON_N, _bon, fake_run


def test_aggregate_matches_numpy():
    runs = [fake_run(s) for s in range(3)]
    mean, std = metrics.aggregate(runs)
    for path in [("policies", "sft", "forward_kl"), ("demonstrations", "gold_reward"),
                 ("stage_seconds", "rkl_seq"), ("calibration", "js", "spearman")]:
        values = []
        for r in runs:
            node = r
            for k in path:
                node = node[k]
            values.append(node)
        m, s = mean, std
        for k in path:
            m, s = m[k], s[k]
        assert m == pytest.approx(np.mean(values))
        assert s == pytest.approx(np.std(values, ddof=1))
    curves = np.array([r["bon"]["init_sft"]["gold_reward"] for r in runs])
    assert mean["bon"]["init_sft"]["gold_reward"] == pytest.approx(curves.mean(0).tolist())
    assert std["bon"]["init_sft"]["gold_reward"] == pytest.approx(curves.std(0, ddof=1).tolist())
    # non-numeric leaves come from the first run, with no spread
    assert mean["config"]["device"] == "cpu" and std["config"]["device"] is None
    assert mean["config"]["compile"] is False
    assert mean["curves"]["adversarial"]["rkl_oracle"]["disc_acc_expert"] == []

def test_aggregate_one_seed_and_partial_keys():
    run = fake_run(0)
    mean, std = metrics.aggregate([run])
    assert mean["policies"]["js"]["reverse_kl"] == run["policies"]["js"]["reverse_kl"]
    assert std["policies"]["js"]["reverse_kl"] == 0.0
    assert std["bon"]["gold"]["gold_reward"] == [0.0] * len(BON_N)
    # a key in only some runs is averaged over the runs that have it
    a, b = fake_run(0), fake_run(1)
    del b["policies"]["bon_init_sft@16"]
    a["policies"]["bon_init_sft@16"]["gold_reward"] = 2.0
    mean, std = metrics.aggregate([a, b])
    assert mean["policies"]["bon_init_sft@16"]["gold_reward"] == 2.0
    assert std["policies"]["bon_init_sft@16"]["gold_reward"] == 0.0

# -----------------------------------------------------------------------------
# the effect verdicts: paired differences over seeds

def _row(effects, *words, condition=None):
    # each word as a whole: "rkl_seq" does not match "rkl_seq_scalar"
    hits = [e for e in effects if all(re.search(re.escape(w) + r"(?!\w)", e["effect"]) for w in words)
            and (condition is None or e["condition"] == condition)]
    assert len(hits) == 1, (words, condition, [(e["effect"], e["condition"]) for e in effects])
    return hits[0]

def _set_all(runs, keys, values):
    for run, v in zip(runs, values):
        node = run
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = v

def test_every_effect_holds_on_good_metrics_with_fields_and_seed_counts():
    runs = [fake_run(s) for s in range(5)]
    effects = metrics.effects(runs)
    assert [e for e in effects if e["verdict"] != "holds"] == []
    keys = {"effect", "condition", "verdict", "seeds_holding", "seeds", "diff_mean", "ci95"}
    assert all(keys <= set(e) for e in effects)
    assert all(e["seeds"] == 5 and e["seeds_holding"] == 5 for e in effects)
    row = _row(effects, "mass-covering: π_SFT", "than rkl_seq")
    diffs = [r["policies"]["rkl_seq"]["forward_kl"] - r["policies"]["sft"]["forward_kl"] for r in runs]
    assert row["diff_mean"] == pytest.approx(np.mean(diffs))
    half = 2.776 * np.std(diffs, ddof=1) / np.sqrt(5)   # t_{0.975, 4} = 2.776, computed here by hand
    assert row["ci95"] == pytest.approx([np.mean(diffs) - half, np.mean(diffs) + half], abs=1e-3 * half)
    # the mode-seeking effects: three conditions and their combination, against π_SFT and against the control
    assert [e["condition"] for e in effects if e["effect"].startswith("mode-seeking: js has")] == \
        ["off-support rate", "mode entropy", "all conditions"] * 2
    assert _row(effects, "mode-seeking: js", "pg_control", condition="off-support rate")["difference"] == \
        "off_support[pg_control] − off_support[js]"

def test_a_clear_failure_and_noise_are_told_apart():
    runs = [fake_run(s) for s in range(5)]
    # js's mode entropy far above SFT's on every seed: that condition does not hold, so neither does the effect
    _set_all(runs, ["policies", "js", "mode_entropy"], [4.0, 4.1, 3.9, 4.2, 4.05])
    # rkl_tok's off-support rate on both sides of SFT's 0.15: noise
    _set_all(runs, ["policies", "rkl_tok", "off_support"], [0.10, 0.20, 0.12, 0.19, 0.13])
    effects = metrics.effects(runs)
    sft = "than π_SFT"
    assert _row(effects, "mode-seeking: js", sft, condition="mode entropy")["verdict"] == "does not hold"
    assert _row(effects, "mode-seeking: js", sft, condition="mode entropy")["seeds_holding"] == 0
    assert _row(effects, "mode-seeking: js", sft, condition="all conditions")["verdict"] == "does not hold"
    noisy = _row(effects, "mode-seeking: rkl_tok", sft, condition="off-support rate")
    assert noisy["verdict"] == "inconclusive" and noisy["seeds_holding"] == 3
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1]
    assert _row(effects, "mode-seeking: rkl_tok", sft, condition="all conditions")["verdict"] == "inconclusive"
    assert _row(effects, "mode-seeking: rkl_seq has", sft, condition="all conditions")["verdict"] == "holds"

def test_pairing_sees_an_effect_that_the_means_spread_hides():
    # SFT's off-support rate swings by 0.2 from seed to seed, and rkl_seq's with it, 0.01 lower each time:
    # unpaired, the two spreads overlap; paired, the difference is exactly 0.01 on every seed
    runs = [fake_run(s) for s in range(4)]
    base = [0.1, 0.3, 0.15, 0.25]
    _set_all(runs, ["policies", "sft", "off_support"], base)
    _set_all(runs, ["policies", "rkl_seq", "off_support"], [b - 0.01 for b in base])
    row = _row(metrics.effects(runs), "mode-seeking: rkl_seq has", "than π_SFT", condition="off-support rate")
    assert row["verdict"] == "holds" and row["ci95"] == pytest.approx([0.01, 0.01])

def test_best_of_n_is_judged_at_the_preregistered_n_not_the_best():
    runs = [fake_run(s) for s in range(3)]
    for r in runs:   # far above the demonstrations at N = 8 only: not one of the N fixed in advance
        r["bon"]["init_sft"]["gold_reward"] = [0.5 if n != 8 else 5.0 for n in BON_N]
    effects = [e for e in metrics.effects(runs) if e["effect"].startswith("extrapolation")]   # the signed world
    for n in metrics.PREREGISTERED_N:
        assert _row(effects, f"Best-of-{n}", "extrapolation")["verdict"] == "does not hold"

def test_reward_model_gains_and_the_control_gap():
    runs = [fake_run(s) for s in range(3)]
    effects = metrics.effects(runs)
    learned_sft_demo = ("heterogeneity", "SFT-Demo reward model")
    assert _row(effects, *learned_sft_demo, condition="all conditions")["verdict"] == "holds"
    for r in runs:   # the learned SFT-Demo gains more than Init-SFT: that effect fails, the others do not
        r["bon"]["sft_demo"] = _bon(0.9, 0.5)
    effects = metrics.effects(runs)
    assert _row(effects, *learned_sft_demo, condition="all conditions")["verdict"] == "does not hold"
    assert _row(effects, "heterogeneity", "Init-Demo reward model", condition="all conditions")["verdict"] == "holds"
    assert _row(effects, "heterogeneity", "SFT-Demo optimum", condition="all conditions")["verdict"] == "holds"
    # a control world where the demonstration-based models do worse than with the signature: no shrinking
    runs = [fake_run(s) for s in range(3)]
    for r in runs:
        r["control"]["bon"]["init_demo"] = _bon(0.9, -0.3)
        r["control"]["bon"]["sft_demo"] = _bon(0.9, -0.3)
    assert _row(metrics.effects(runs), "shrinks", condition="all conditions")["verdict"] == "does not hold"

def test_fewer_than_three_seeds_are_indicative_and_missing_inputs_not_checked():
    effects = metrics.effects([fake_run(0, control=False)])
    assert {e["verdict"] for e in effects} == {"indicative"}
    assert all(e["ci95"] is None and e["seeds"] == 1 for e in effects)
    assert not any("control world" in e["effect"] or "shrinks" in e["effect"] for e in effects)
    runs = [fake_run(s) for s in range(3)]
    del runs[1]["policies"]["rkl_tok"]
    skipped = [e for e in metrics.effects(runs) if e["verdict"] == "not checked"]
    assert skipped and all("rkl_tok" in e["effect"] for e in skipped)
    assert len(skipped) == 9   # mass-covering twice, mode-seeking's two conditions and their combination twice, its price

