"""Tests of report.py on hand-made metrics: aggregation, effect checks, figures, report.md."""

import json
import math
import os
import re

import numpy as np
import pytest

import report

MODES = ["greeting", "list", "story", "question"]
BON_N = [1, 2, 4, 8, 16, 32]

def _policy(fkl, rkl, off, freqs, gold):
    freqs = np.asarray(freqs, dtype=float)
    freqs = (1 - off) * freqs / freqs.sum()  # the mode fractions plus off-support sum to 1
    on = freqs / freqs.sum()
    entropy = float(-(on[on > 0] * np.log(on[on > 0])).sum())
    return {"forward_kl": fkl, "reverse_kl": rkl, "off_support": off,
            "mode_freq": dict(zip(MODES, freqs.tolist())), "mode_entropy": entropy,
            "distinct": 0.9, "gold_reward": gold, "length": 12.0}

def _bon(start, slope):
    """A Best-of-N curve: gold reward start + slope * log N."""
    kl = [math.log(n) - (n - 1) / n for n in BON_N]
    return {"n": list(BON_N), "kl": kl, "gold_reward": [start + slope * math.log(n) for n in BON_N],
            "off_support": [0.1] * len(BON_N)}

def fake_run(seed, control=True):
    """A metrics dict shaped like afd_mini.py's, in which every expected effect holds."""
    rng = np.random.default_rng(seed)
    e = lambda: float(rng.normal(0, 0.02))  # a little seed-to-seed noise
    policies = {
        "expert": _policy(0.01 + e(), -0.01 + e(), 0.0, [1, 1, 1, 1], 1.0),
        "init": _policy(40 + e(), 30 + e(), 0.6, [1, 1, 1, 1], 0.2),
        "sft": _policy(3 + e(), 12 + e(), 0.15, [1, 1, 0.9, 0.8], 0.9 + e()),
        "rkl_seq": _policy(25 + e(), 2 + e(), 0.02, [3, 0.3, 0.1, 0.1], 1.0 + e()),
        "rkl_tok": _policy(20 + e(), 3 + e(), 0.03, [2, 1, 0.1, 0.1], 0.95 + e()),
        "js": _policy(30 + e(), 1.5 + e(), 0.01, [5, 0.2, 0.1, 0.1], 1.0 + e()),
        "rkl_seq_scalar": _policy(20 + e(), 4 + e(), 0.05, [2, 1, 0.1, 0.1], 0.95 + e()),
        "rkl_oracle": _policy(60 + e(), 0.8 + e(), 0.0, [1, 0, 0, 0.01], 1.1 + e()),
        "js_oracle": _policy(40 + e(), 1.0 + e(), 0.0, [2, 0, 0.5, 0.01], 1.1 + e()),
        "rl_init_sft": _policy(15 + e(), 5 + e(), 0.05, [1, 1, 0.5, 0.5], 1.4 + e()),
        "bon_init_sft@16": _policy(5 + e(), 8 + e(), 0.1, [1, 1, 1, 1], 1.3 + e()),
    }
    for name, p in policies.items():  # KL(π ‖ π_SFT), measured for every policy but the expert
        if name != "expert":
            p["kl_sft"] = 0.0 if name == "sft" else 2.5 + e()
    bon = {"init_sft": _bon(0.9 + e(), 0.2), "init_demo": _bon(0.9 + e(), 0.05),
           "sft_demo": _bon(0.9 + e(), -0.02), "pairwise_bt": _bon(0.9 + e(), 0.1),
           "init_sft_optimum": _bon(0.9 + e(), 0.25), "init_sft_scalar": _bon(0.9 + e(), 0.1),
           "init_demo_optimum": _bon(0.9 + e(), 0.1), "sft_demo_optimum": _bon(0.9 + e(), 0.0),
           "gold": _bon(0.9 + e(), 0.3)}
    adversarial = {m: {"disc_acc_expert": (0.8 - 0.005 * np.arange(40) + e()).tolist(),
                       "disc_acc_policy": (0.9 - 0.008 * np.arange(40) + e()).tolist(),
                       "reward": (-3 + 0.07 * np.arange(40) + e()).tolist(),
                       "kl_ref": (0.1 * np.sqrt(np.arange(40)) + e()).tolist()}
                   for m in ["rkl_seq", "rkl_tok", "js", "rkl_seq_scalar"]}
    for m in ["rkl_oracle", "js_oracle", "rl_init_sft"]:  # no discriminator: empty accuracy curves
        adversarial[m] = {"disc_acc_expert": [], "disc_acc_policy": [],
                          "reward": (-5 + 0.1 * np.arange(40)).tolist(),
                          "kl_ref": (0.2 * np.sqrt(np.arange(40))).tolist()}
    true = rng.normal(-2, 3, size=200)
    run = {
        "seed": seed,
        "config": {"n_layer": 2, "device": "cpu", "compile": False, "out_dir": "out"},
        "stage_seconds": {"world": 0.5 + e(), "pretrain": 10 + e(), "sft": 3 + e(),
                          "rkl_seq": 30 + e()},
        "policies": policies,
        "demonstrations": {"gold_reward": 1.0 + e()},
        "bon": bon,
        "reward_models": {**{f"{m}_vs_optimum": {"pearson": 0.8 + e(), "spearman": 0.85 + e()}
                             for m in ["init_sft", "init_demo", "sft_demo", "init_sft_scalar"]},
                          "final_loss": {"init_sft": 0.6}},
        "calibration": {m: {"pearson": 0.9 + e(), "spearman": 0.8 + e(), "auc_off_support": 0.7 + e()}
                        for m in ["rkl_seq", "rkl_tok", "js", "rkl_seq_scalar"]},
        "calibration_points": {m: {"true": true.tolist(),
                                   "logit": (true * 0.8 + rng.normal(0, 1, 200)).tolist()}
                               for m in ["rkl_seq", "rkl_tok", "js", "rkl_seq_scalar"]},
        "curves": {"pretrain_loss": (4 * np.exp(-0.05 * np.arange(100)) + 1 + e()).tolist(),
                   "sft_loss": (2 * np.exp(-0.1 * np.arange(30)) + 0.8 + e()).tolist(),
                   "adversarial": adversarial},
    }
    if control:  # without the signature the demonstration-based reward models catch up
        run["control"] = {"bon": {"init_sft": _bon(0.9 + e(), 0.2), "init_demo": _bon(0.9 + e(), 0.18),
                                  "sft_demo": _bon(0.9 + e(), 0.15), "gold": _bon(0.9 + e(), 0.3),
                                  "init_sft_optimum": _bon(0.9 + e(), 0.25),
                                  "init_demo_optimum": _bon(0.9 + e(), 0.22),
                                  "sft_demo_optimum": _bon(0.9 + e(), 0.2)},
                          "demonstrations": {"gold_reward": 1.0 + e()}}
    return run

# -----------------------------------------------------------------------------
# aggregate

def test_aggregate_matches_numpy():
    runs = [fake_run(s) for s in range(3)]
    mean, std = report.aggregate(runs)
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
    mean, std = report.aggregate([run])
    assert mean["policies"]["js"]["reverse_kl"] == run["policies"]["js"]["reverse_kl"]
    assert std["policies"]["js"]["reverse_kl"] == 0.0
    assert std["bon"]["gold"]["gold_reward"] == [0.0] * len(BON_N)
    # a key in only some runs is averaged over the runs that have it
    a, b = fake_run(0), fake_run(1)
    del b["policies"]["bon_init_sft@16"]
    a["policies"]["bon_init_sft@16"]["gold_reward"] = 2.0
    mean, std = report.aggregate([a, b])
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

def test_t_quantiles_match_the_table_and_its_expansion():
    # published values of t_{0.975, df}: the table's ends and the expansion past it
    for df, t in [(1, 12.706), (4, 2.776), (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980)]:
        assert report.t_quantile_975(df) == pytest.approx(t, abs=1.5e-3)
    with pytest.raises(ValueError):
        report.t_quantile_975(0)

def test_paired_interval_of_a_known_sample():
    # d = 1..5: mean 3, s² = (4 + 1 + 0 + 1 + 4) / 4 = 2.5, t_{0.975, 4} = 2.776,
    # half-width 2.776 · √2.5 / √5 = 2.776 · √0.5 = 1.96293
    lo, hi = report.paired_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert lo == pytest.approx(3 - 1.96293, abs=1e-4) and hi == pytest.approx(3 + 1.96293, abs=1e-4)
    assert report.paired_interval([1.0, 2.0]) is None   # K < 3: no interval

@pytest.mark.parametrize("diffs, verdict", [
    ([1.0, 2.0, 3.0, 4.0, 5.0], "holds"),            # interval [1.04, 4.96]
    ([-1.0, -2.0, -3.0, -4.0, -5.0], "does not hold"),
    ([1.0, -2.0, 3.0, -4.0, 1.5], "inconclusive"),   # mean −0.1, s ≈ 2.9: the interval spans 0
    ([2.5, 2.5, 2.5], "holds"),                      # no spread at all
    ([4.0, 5.0], "indicative"),
    ([3.0], "indicative"),
])
def test_judge(diffs, verdict):
    assert report.judge(diffs) == verdict

def test_every_effect_holds_on_good_metrics_with_fields_and_seed_counts():
    runs = [fake_run(s) for s in range(5)]
    effects = report.effects(runs)
    assert [e for e in effects if e["verdict"] != "holds"] == []
    keys = {"effect", "condition", "verdict", "seeds_holding", "seeds", "diff_mean", "ci95"}
    assert all(keys <= set(e) for e in effects)
    assert all(e["seeds"] == 5 and e["seeds_holding"] == 5 for e in effects)
    row = _row(effects, "mass-covering", "than rkl_seq")
    diffs = [r["policies"]["rkl_seq"]["forward_kl"] - r["policies"]["sft"]["forward_kl"] for r in runs]
    assert row["diff_mean"] == pytest.approx(np.mean(diffs))
    half = 2.776 * np.std(diffs, ddof=1) / np.sqrt(5)   # t_{0.975, 4} = 2.776, computed here by hand
    assert row["ci95"] == pytest.approx([np.mean(diffs) - half, np.mean(diffs) + half], abs=1e-3 * half)
    # the mode-seeking effects: three conditions and their combination
    assert [e["condition"] for e in effects if e["effect"].startswith("mode-seeking: js has")] == \
        ["reverse KL", "off-support rate", "mode entropy", "all conditions"]

def test_a_clear_failure_and_noise_are_told_apart():
    runs = [fake_run(s) for s in range(5)]
    # js's reverse KL far above SFT's on every seed: that condition does not hold, so neither does the effect
    _set_all(runs, ["policies", "js", "reverse_kl"], [40.0, 41.0, 39.0, 42.0, 40.5])
    # rkl_tok's off-support rate on both sides of SFT's 0.15: noise
    _set_all(runs, ["policies", "rkl_tok", "off_support"], [0.10, 0.20, 0.12, 0.19, 0.13])
    effects = report.effects(runs)
    assert _row(effects, "mode-seeking: js", condition="reverse KL")["verdict"] == "does not hold"
    assert _row(effects, "mode-seeking: js", condition="reverse KL")["seeds_holding"] == 0
    assert _row(effects, "mode-seeking: js", condition="all conditions")["verdict"] == "does not hold"
    noisy = _row(effects, "mode-seeking: rkl_tok", condition="off-support rate")
    assert noisy["verdict"] == "inconclusive" and noisy["seeds_holding"] == 3
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1]
    assert _row(effects, "mode-seeking: rkl_tok", condition="all conditions")["verdict"] == "inconclusive"
    assert _row(effects, "mode-seeking: rkl_seq has", condition="all conditions")["verdict"] == "holds"

def test_pairing_sees_an_effect_that_the_means_spread_hides():
    # SFT's reverse KL swings by 20 nats from seed to seed, and rkl_seq's with it, 1 nat lower each time:
    # unpaired, the two spreads overlap; paired, the difference is exactly 1 on every seed
    runs = [fake_run(s) for s in range(4)]
    base = [10.0, 30.0, 15.0, 25.0]
    _set_all(runs, ["policies", "sft", "reverse_kl"], base)
    _set_all(runs, ["policies", "rkl_seq", "reverse_kl"], [b - 1.0 for b in base])
    row = _row(report.effects(runs), "mode-seeking: rkl_seq has", condition="reverse KL")
    assert row["verdict"] == "holds" and row["ci95"] == pytest.approx([1.0, 1.0])

def test_best_of_n_is_judged_at_the_preregistered_n_not_the_best():
    runs = [fake_run(s) for s in range(3)]
    for r in runs:   # far above the demonstrations at N = 8 only: not one of the N fixed in advance
        r["bon"]["init_sft"]["gold_reward"] = [0.5 if n != 8 else 5.0 for n in BON_N]
    effects = [e for e in report.effects(runs) if e["effect"].startswith("extrapolation")]   # the signed world
    for n in report.PREREGISTERED_N:
        assert _row(effects, f"Best-of-{n}", "extrapolation")["verdict"] == "does not hold"

def test_reward_model_gains_and_the_control_gap():
    runs = [fake_run(s) for s in range(3)]
    effects = report.effects(runs)
    learned_sft_demo = ("heterogeneity", "SFT-Demo reward model")
    assert _row(effects, *learned_sft_demo, condition="all conditions")["verdict"] == "holds"
    for r in runs:   # the learned SFT-Demo gains more than Init-SFT: that effect fails, the others do not
        r["bon"]["sft_demo"] = _bon(0.9, 0.5)
    effects = report.effects(runs)
    assert _row(effects, *learned_sft_demo, condition="all conditions")["verdict"] == "does not hold"
    assert _row(effects, "heterogeneity", "Init-Demo reward model", condition="all conditions")["verdict"] == "holds"
    assert _row(effects, "heterogeneity", "SFT-Demo optimum", condition="all conditions")["verdict"] == "holds"
    # a control world where the demonstration-based models do worse than with the signature: no shrinking
    runs = [fake_run(s) for s in range(3)]
    for r in runs:
        r["control"]["bon"]["init_demo"] = _bon(0.9, -0.3)
        r["control"]["bon"]["sft_demo"] = _bon(0.9, -0.3)
    assert _row(report.effects(runs), "shrinks", condition="all conditions")["verdict"] == "does not hold"

def test_fewer_than_three_seeds_are_indicative_and_missing_inputs_not_checked():
    effects = report.effects([fake_run(0, control=False)])
    assert {e["verdict"] for e in effects} == {"indicative"}
    assert all(e["ci95"] is None and e["seeds"] == 1 for e in effects)
    assert not any("control" in e["effect"] or "shrinks" in e["effect"] for e in effects)
    runs = [fake_run(s) for s in range(3)]
    del runs[1]["policies"]["rkl_tok"]
    skipped = [e for e in report.effects(runs) if e["verdict"] == "not checked"]
    assert skipped and all("rkl_tok" in e["effect"] for e in skipped)
    assert len(skipped) == 5   # mass-covering, and mode-seeking's three conditions and their combination

def test_error_bars_are_confidence_intervals_from_three_seeds():
    runs = [fake_run(s) for s in range(4)]
    mean, std = report.aggregate(runs)
    err, label = report.error_bars(std, 4)
    assert "95%" in label
    s = std["policies"]["sft"]["forward_kl"]
    assert err["policies"]["sft"]["forward_kl"] == pytest.approx(3.182 * s / 2)   # t_{0.975, 3} · s / √4
    err2, label2 = report.error_bars(std, 2)
    assert err2 is std and "standard deviation" in label2

# -----------------------------------------------------------------------------
# the intuition figure's fits

def test_forward_kl_covers_reverse_kl_seeks():
    grid = np.linspace(-6, 6, 241)
    modes = (-2.0, 2.0)
    target = report.bimodal_target(grid, modes, width=0.6)
    mu_f, sigma_f = report.fit_gaussian(target, grid, "forward")
    mu_r, sigma_r = report.fit_gaussian(target, grid, "reverse")
    assert modes[0] + 0.5 < mu_f < modes[1] - 0.5  # between the modes
    assert sigma_f > 2 * sigma_r  # spread over both
    assert min(abs(mu_r - m) for m in modes) < 0.2  # on one mode
    assert sigma_r == pytest.approx(0.6, abs=0.1)  # and only as wide as it

# -----------------------------------------------------------------------------
# the written report

def test_write_report_writes_markdown_and_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "DPI", 40)  # small images: the test checks files, not looks
    runs = [fake_run(0), fake_run(1)]
    path = report.write_report(str(tmp_path), runs)
    assert path == os.path.join(str(tmp_path), "report.md")
    text = open(path).read()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == sorted(["fig_intuition.png", "fig_modes.png", "fig_divergence_plane.png",
                                    "fig_bon.png", "fig_calibration.png", "fig_curves.png"])
    for link in links:
        png = tmp_path / link
        assert png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))  # temp names were renamed
    # every effect row carries its seed count and its verdict: two seeds are indicative only
    for e in report.effects(runs):
        assert f"| {e['effect']} | {e['condition']} |" in text
    assert "Two seeds: indicative only; run --seeds=5" in text
    assert text.count("2/2 seeds") > 10 and "| indicative |" in text
    assert "π_SFT (forward KL) (`sft`)" in text and "±" in text
    assert "Error bars: ± one sample standard deviation over 2 seeds" in text

def test_write_report_without_optional_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "DPI", 40)
    run = fake_run(0, control=False)
    del run["calibration_points"]
    path = report.write_report(str(tmp_path), [run])
    text = open(path).read()
    assert "fig_calibration.png skipped" in text and "No control world" in text
    assert "±" not in text.split("## Expected effects")[0]  # one seed: no spread shown
    assert not (tmp_path / "fig_calibration.png").exists()
    assert (tmp_path / "fig_bon.png").stat().st_size > 1000

def test_load_runs_reads_the_seed_folders(tmp_path):
    for seed in [1, 0]:
        (tmp_path / f"seed_{seed}").mkdir()
        (tmp_path / f"seed_{seed}" / "metrics.json").write_text(json.dumps(fake_run(seed)))
    (tmp_path / "metrics.json").write_text("{}")  # the pipeline's aggregate: not a seed
    runs = report.load_runs(str(tmp_path))
    assert [r["seed"] for r in runs] == [0, 1]
    assert runs[1] == json.loads(json.dumps(fake_run(1)))
