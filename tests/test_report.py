"""Tests of report.py on hand-made metrics: aggregation, effect checks, figures, report.md."""

import copy
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
        "rkl_oracle": _policy(60 + e(), 0.8 + e(), 0.0, [1, 0, 0, 0.01], 1.1 + e()),
        "rl_init_sft": _policy(15 + e(), 5 + e(), 0.05, [1, 1, 0.5, 0.5], 1.4 + e()),
        "bon_init_sft@16": _policy(5 + e(), 8 + e(), 0.1, [1, 1, 1, 1], 1.3 + e()),
    }
    for name, p in policies.items():  # KL(π ‖ π_SFT), measured for every policy but the expert
        if name != "expert":
            p["kl_sft"] = 0.0 if name == "sft" else 2.5 + e()
    bon = {"init_sft": _bon(0.9 + e(), 0.2), "init_demo": _bon(0.9 + e(), 0.05),
           "sft_demo": _bon(0.9 + e(), -0.02), "pairwise_bt": _bon(0.9 + e(), 0.1),
           "closed_form": _bon(0.9 + e(), 0.19), "gold": _bon(0.9 + e(), 0.3)}
    adversarial = {m: {"disc_acc_expert": (0.8 - 0.005 * np.arange(40) + e()).tolist(),
                       "disc_acc_policy": (0.9 - 0.008 * np.arange(40) + e()).tolist(),
                       "reward": (-3 + 0.07 * np.arange(40) + e()).tolist(),
                       "kl_ref": (0.1 * np.sqrt(np.arange(40)) + e()).tolist()}
                   for m in ["rkl_seq", "rkl_tok", "js"]}
    for m in ["rkl_oracle", "rl_init_sft"]:  # no discriminator: empty accuracy curves
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
        "reward_models": {"init_sft_vs_closed_form_corr": 0.8 + e(), "final_loss": {"init_sft": 0.6}},
        "calibration": {"rkl_seq": 0.9 + e(), "rkl_tok": 0.7 + e(), "js": 0.85 + e()},
        "calibration_points": {m: {"true": true.tolist(),
                                   "logit": (true * 0.8 + rng.normal(0, 1, 200)).tolist()}
                               for m in ["rkl_seq", "rkl_tok", "js"]},
        "curves": {"pretrain_loss": (4 * np.exp(-0.05 * np.arange(100)) + 1 + e()).tolist(),
                   "sft_loss": (2 * np.exp(-0.1 * np.arange(30)) + 0.8 + e()).tolist(),
                   "adversarial": adversarial},
    }
    if control:  # without the signature the demonstration-based reward models catch up
        run["control"] = {"bon": {"init_sft": _bon(0.9 + e(), 0.2), "init_demo": _bon(0.9 + e(), 0.18),
                                  "sft_demo": _bon(0.9 + e(), 0.15), "gold": _bon(0.9 + e(), 0.3)},
                          "demonstrations": {"gold_reward": 1.0 + e()}}
    return run

def _by_name(effects):
    return {e["name"]: e for e in effects}

def _find(effects, *words):
    hits = [e for e in effects if all(w in e["name"] for w in words)]
    assert len(hits) == 1, (words, [e["name"] for e in effects])
    return hits[0]

# -----------------------------------------------------------------------------
# aggregate

def test_aggregate_matches_numpy():
    runs = [fake_run(s) for s in range(3)]
    mean, std = report.aggregate(runs)
    for path in [("policies", "sft", "forward_kl"), ("demonstrations", "gold_reward"),
                 ("stage_seconds", "rkl_seq"), ("calibration", "js")]:
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
# the effect checks

def test_all_effects_hold_on_good_metrics():
    mean, std = report.aggregate([fake_run(0), fake_run(1)])
    effects = report.check_effects(mean, std)
    not_holding = [e["name"] for e in effects if e["holds"] is not True
                   and not e["name"].startswith("control world")]
    assert not_holding == []
    assert _find(effects, "shrinks")["holds"] is True
    # 4 mass-covering + 4 mode-seeking + 1 extrapolation + 2 gains + 2 control gains + 1 gap
    assert len(effects) == 14
    # the detail prints the numbers it used, with the spread over seeds
    detail = _find(effects, "mass-covering", "rkl_seq")["detail"]
    assert f"{mean['policies']['sft']['forward_kl']:.3g}" in detail and "±" in detail

@pytest.mark.parametrize("flip, words", [
    # (where to write a number in the mean tree, the one check that must then fail)
    (("policies", "sft", "forward_kl", 100.0), ("mass-covering", "rkl_tok")),  # fails all four
    (("policies", "js", "reverse_kl", 50.0), ("mode-seeking", "js")),
    (("policies", "rkl_oracle", "off_support", 0.9), ("mode-seeking", "rkl_oracle")),
    (("policies", "rkl_seq", "mode_entropy", 5.0), ("mode-seeking", "rkl_seq")),
    (("demonstrations", "gold_reward", 10.0), ("extrapolation",)),
])
def test_flipping_one_number_breaks_its_effect(flip, words):
    mean, _ = report.aggregate([fake_run(0)])
    before = _find(report.check_effects(mean), *words)
    assert before["holds"] is True
    *keys, leaf, value = flip
    node = mean
    for k in keys:
        node = node[k]
    node[leaf] = value
    after = _find(report.check_effects(mean), *words)
    assert after["holds"] is False
    assert f"{value:.3g}" in after["detail"]  # it says which number broke it

def test_extrapolation_names_the_n_and_the_margin():
    mean, _ = report.aggregate([fake_run(0)])
    g, demo = mean["bon"]["init_sft"]["gold_reward"], mean["demonstrations"]["gold_reward"]
    first_above = next(n for n, x in zip(BON_N, g) if x > demo)
    detail = _find(report.check_effects(mean), "extrapolation")["detail"]
    assert f"N={BON_N[int(np.argmax(g))]}" in detail
    assert f"from N={first_above}" in detail
    assert f"{max(g) - demo:+.3g}" in detail

def test_reward_model_gains_and_the_control_gap():
    mean, _ = report.aggregate([fake_run(0)])
    effects = report.check_effects(mean)
    assert _find(effects, "heterogeneity", "Init-Demo")["holds"] is True
    assert _find(effects, "heterogeneity", "SFT-Demo")["holds"] is True
    assert _find(effects, "control world", "Init-Demo")["holds"] is True  # 0.18 < 0.2 per log N
    # SFT-Demo gains more than Init-SFT: that check and only that one flips
    flipped = copy.deepcopy(mean)
    flipped["bon"]["sft_demo"] = _bon(0.9, 0.5)
    effects = report.check_effects(flipped)
    assert _find(effects, "heterogeneity", "SFT-Demo")["holds"] is False
    assert _find(effects, "heterogeneity", "Init-Demo")["holds"] is True
    # a control world where the demonstration-based models do as badly: the gap does not shrink
    mean["control"]["bon"]["init_demo"] = _bon(0.9, 0.0)
    mean["control"]["bon"]["sft_demo"] = _bon(0.9, 0.0)
    assert _find(report.check_effects(mean), "shrinks")["holds"] is False

def test_missing_parts_are_skipped_not_failed():
    mean, _ = report.aggregate([fake_run(0, control=False)])
    del mean["policies"]["rkl_tok"]
    effects = report.check_effects(mean)
    assert not any("control" in e["name"] or "shrinks" in e["name"] for e in effects)
    skipped = [e for e in effects if e["holds"] is None]
    assert len(skipped) == 2 and all("rkl_tok" in e["name"] for e in skipped)

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
    # every effect line carries its verdict, and the verdicts agree with check_effects
    effects = report.check_effects(*report.aggregate(runs))
    verdict = {True: "**holds**", False: "**does not hold**", None: "*not checked*"}
    for e in effects:
        assert f"- {verdict[e['holds']]}: {e['name']}." in text
    assert "π_SFT (forward KL) (`sft`)" in text and "±" in text

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
