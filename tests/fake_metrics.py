"""Hand-made metrics shaped like afd_mini.py's, in which every expected effect holds: the input of the tests of
metrics.py (aggregation, effects) and report.py."""
import math

import numpy as np

MODES = ["greeting", "list", "story", "question"]
BON_N = [1, 2, 4, 8, 16, 32]

def _policy(fkl, rkl, off, freqs, gold):
    freqs = np.asarray(freqs, dtype=float)
    freqs = (1 - off) * freqs / freqs.sum()  # the mode fractions plus off-support sum to 1
    on = freqs / freqs.sum()
    entropy = float(-(on[on > 0] * np.log(on[on > 0])).sum())
    return {"forward_kl": fkl, "reverse_kl": rkl, "reverse_kl_on": 1 / rkl, "off_support": off,
            "mode_freq": dict(zip(MODES, freqs.tolist())), "mode_entropy": entropy,
            "distinct": 0.9, "gold_reward": gold, "length": 12.0}

def _bon(start, slope):
    """A Best-of-N curve: gold reward start + slope * log N, against a made-up KL that grows with N."""
    kl = [0.3 * math.log2(n) for n in BON_N]
    return {"n": list(BON_N), "kl": kl, "gold_reward": [start + slope * math.log(n) for n in BON_N],
            "off_support": [0.1] * len(BON_N)}

def fake_run(seed, control=True):
    """A metrics dict shaped like afd_mini.py's, in which every expected effect holds."""
    rng = np.random.default_rng(seed)
    e = lambda: float(rng.normal(0, 0.02))  # a little seed-to-seed noise
    rng2 = np.random.default_rng(seed + 1000)   # the same for the later methods, apart: the others' draws stay put
    e2 = lambda: float(rng2.normal(0, 0.02))
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
    later = {  # the methods added after the others: their own noise, so the others' draws stay put
        "fkl_fairl": _policy(4 + e2(), 10 + e2(), 0.12, [1, 1, 0.9, 0.8], 0.92 + e2()),
        "dpo": _policy(5 + e2(), 9 + e2(), 0.1, [1, 1, 0.9, 0.8], 1.0 + e2()),
        "spin": _policy(4 + e2(), 8 + e2(), 0.1, [1, 1, 0.9, 0.8], 1.0 + e2()),
        "extrapolated_0.25": _policy(3.5 + e2(), 11 + e2(), 0.14, [1, 1, 0.9, 0.8], 0.93 + e2()),
        "extrapolated_0.5": _policy(4 + e2(), 10 + e2(), 0.13, [1, 1, 0.9, 0.8], 1.0 + e2()),
        "extrapolated_1": _policy(6 + e2(), 12 + e2(), 0.15, [1, 1, 0.9, 0.8], 0.9 + e2()),
        "extrapolated_2": _policy(9 + e2(), 20 + e2(), 0.25, [1, 1, 0.9, 0.8], 0.7 + e2()),
    }
    for p in later.values():
        p["kl_sft"] = 2.5 + e2()
    policies.update(later)
    rng3 = np.random.default_rng(seed + 2000)   # the controls, added later still
    e3 = lambda: float(rng3.normal(0, 0.02))
    policies["pg_control"] = _policy(3.2 + e3(), 6 + e3(), 0.08, [1, 1, 0.9, 0.8], 0.9 + e3())
    policies["pg_frozen"] = dict(policies["sft"])
    for name in ("pg_control", "pg_frozen"):
        policies[name]["kl_sft"] = 1.0 + e3()
    rng4 = np.random.default_rng(seed + 3000)   # FAIRL's twins and SPIN from an under-trained π_SFT, later still
    e4 = lambda: float(rng4.normal(0, 0.02))
    policies.update({
        "fkl_iw": _policy(3.1 + e4(), 11 + e4(), 0.14, [1, 1, 0.9, 0.8], 0.9 + e4()),
        "fkl_oracle": _policy(10 + e4(), 30 + e4(), 0.4, [5, 0.2, 0.1, 0.1], 0.3 + e4()),
        "fkl_iw_oracle": _policy(3.5 + e4(), 11 + e4(), 0.14, [1, 1, 0.9, 0.8], 0.9 + e4()),
        "sft_short": _policy(3.6 + e4(), 14 + e4(), 0.2, [1, 1, 0.9, 0.8], 0.8 + e4()),
        "spin_short": _policy(3.3 + e4(), 13 + e4(), 0.18, [1, 1, 0.9, 0.8], 0.85 + e4()),
    })
    for name in ("fkl_iw", "fkl_oracle", "fkl_iw_oracle", "sft_short", "spin_short"):
        policies[name]["kl_sft"] = 1.0 + e4()
    bon = {"init_sft": _bon(0.9 + e(), 0.2), "init_demo": _bon(0.9 + e(), 0.05),
           "sft_demo": _bon(0.9 + e(), -0.02), "pairwise_bt": _bon(0.9 + e(), 0.1),
           "init_sft_optimum": _bon(0.9 + e(), 0.25), "init_sft_scalar": _bon(0.9 + e(), 0.1),
           "init_demo_optimum": _bon(0.9 + e(), 0.1), "sft_demo_optimum": _bon(0.9 + e(), 0.0),
           "sft_likelihood": _bon(0.9 + e2(), 0.05), "gold": _bon(0.9 + e(), 0.3)}
    bon["init_sft_optimum"]["off_support"] = [0.1 + 0.05 * i for i in range(len(BON_N))]   # the mechanism
    plausible = {k: _bon(0.95 + e2(), 0.15) for k in ["init_sft", "init_sft_optimum"]}
    adversarial = {m: {"disc_acc_expert": (0.8 - 0.005 * np.arange(40) + e()).tolist(),
                       "disc_acc_policy": (0.9 - 0.008 * np.arange(40) + e()).tolist(),
                       "reward": (-3 + 0.07 * np.arange(40) + e()).tolist(),
                       "kl_ref": (0.1 * np.sqrt(np.arange(40)) + e()).tolist()}
                   for m in ["rkl_seq", "rkl_tok", "js", "rkl_seq_scalar"]}
    adversarial["fkl_fairl"] = {k: list(v) for k, v in adversarial["rkl_seq"].items()}
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
        "bon_plausible": plausible,
        "reward_models": {**{f"{m}_vs_optimum": {"pearson": 0.8 + e(), "spearman": 0.85 + e()}
                             for m in ["init_sft", "init_demo", "sft_demo", "init_sft_scalar"]},
                          "final_loss": {"init_sft": 0.6}},
        "calibration": {m: {"pearson": 0.9 + e(), "spearman": 0.8 + e(), "auc_off_support": 0.7 + e(),
                            "spearman_untrained": 0.5, "spearman_learned": 0.4, "pearson_learned": 0.4}
                        for m in ["rkl_seq", "rkl_tok", "js", "rkl_seq_scalar"]},
        "calibration_points": {m: {"true": true.tolist(),
                                   "logit": (true * 0.8 + rng.normal(0, 1, 200)).tolist()}
                               for m in ["rkl_seq", "rkl_tok", "js", "rkl_seq_scalar"]},
        "curves": {"pretrain_loss": (4 * np.exp(-0.05 * np.arange(100)) + 1 + e()).tolist(),
                   "sft_loss": (2 * np.exp(-0.1 * np.arange(30)) + 0.8 + e()).tolist(),
                   "adversarial": adversarial},
    }
    run["calibration"]["fkl_fairl"] = {"pearson": 0.9 + e2(), "spearman": 0.8 + e2(), "auc_off_support": 0.7 + e2(),
                                       "spearman_untrained": 0.5, "spearman_learned": 0.4 + e3(),
                                       "pearson_learned": 0.4}
    run["calibration"]["fkl_iw"] = {**run["calibration"]["fkl_fairl"], "spearman_learned": 0.3 + e4()}
    probe = {"off_support": [0.15, 0.14], "forward_kl_support": [2.6, 2.5], "gold_on_support": [0.8, 0.85],
             "mode_entropy": [1.3, 1.3]}
    steps = np.arange(20)
    dpo_curve = lambda c, r: {"loss": (0.69 - 0.002 * steps).tolist(), "margin": (0.01 * steps).tolist(),
                              "chosen": (c * steps).tolist(), "rejected": (r * steps).tolist(), "steps_per_run": 10}
    run["curves"].update(dpo=dpo_curve(0.01, -0.02), spin=dpo_curve(-0.01, -0.05), spin_short=dpo_curve(0.02, -0.05))
    run["displacement"] = {"dpo": {"chosen": [0.2 + e4()], "rejected": [-0.1 + e4()], "probe": probe},
                           "spin": {"chosen": [0.05, 0.02], "rejected": [-0.1, -0.1], "probe": probe},
                           "spin_short": {"chosen": [0.3, 0.1], "rejected": [-0.1, -0.1], "probe": probe}}
    if control:  # without the signature the demonstration-based reward models catch up
        run["control"] = {"bon": {"init_sft": _bon(0.9 + e(), 0.2), "init_demo": _bon(0.9 + e(), 0.18),
                                  "sft_demo": _bon(0.9 + e(), 0.15), "gold": _bon(0.9 + e(), 0.3),
                                  "init_sft_optimum": _bon(0.9 + e(), 0.25),
                                  "init_demo_optimum": _bon(0.9 + e(), 0.22),
                                  "sft_demo_optimum": _bon(0.9 + e(), 0.2)},
                          "demonstrations": {"gold_reward": 1.0 + e()}}
    return run
