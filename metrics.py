"""
metrics.py: the numbers of a run. What metrics.json holds (assemble), their mean and spread over seeds
(aggregate), and the effects the two papers predict, judged on paired differences over seeds (effects).

runner.py assembles one seed's metrics from its stages' results, combines the seeds' into the top-level
metrics.json and a sweep's points' into sweep.json; report.py turns them into report.md and the figures
(figures.py). docs/METRICS.md documents every key. Notation as in the README: π_β the expert (demonstrator),
π_init the pretrained model, π_SFT the model fine-tuned on demonstrations; KL(β ‖ π) the forward KL
(mass-covering), KL(π ‖ β) the reverse KL (mode-seeking), in nats per response.
"""
import copy

import numpy as np

from methods import ADVERSARIAL, ALPHA_JUDGED, MODE_SEEKING, POLICIES
from stats import paired_interval, verdict

# -----------------------------------------------------------------------------
# one seed's metrics.json

def assemble(results, seed, world_seconds, config):
    """One seed's metrics.json from its stages' results: results[stage name] = that stage's results."""
    ev, bon, rm = results["evaluate"], results["best_of_n"], results["reward_models"]
    adversarial = {p.name: results[p.name]["curve"] for p in POLICIES if p.kind in ("adversarial", "oracle", "rm_rl", "control")}
    control = results.get("control_best_of_n")
    return {
        "seed": seed,
        "policies": ev["policies"],
        "demonstrations": bon["demonstrations"],
        "bon": bon["bon"],
        "bon_plausible": bon["bon_plausible"],
        "reward_models": {**bon["reward_models"],
                          "final_loss": {k: v["loss"][-1] for k, v in rm["curves"].items()},
                          "heldout_loss": {k: v["heldout_loss"] for k, v in rm["curves"].items()}},
        "calibration": ev["calibration"],
        "calibration_points": ev["calibration_points"],
        "curves": {"pretrain_loss": results["pretrain"]["curve"], "sft_loss": results["sft"]["curve"],
                   "adversarial": adversarial, **{name: dpo_curves(results[name]) for name in ("dpo", "spin", "spin_short")}},
        "displacement": {name: displacement(results[name]) for name in ("dpo", "spin", "spin_short")},
        "stage_seconds": {"world": world_seconds, **{s: r["seconds"] for s, r in results.items()}},
        "config": config,
        **({"control": {k: control[k] for k in ("bon", "bon_plausible", "reward_models", "demonstrations")}}
           if control else {}),
    }


def dpo_curves(result):
    """The per-step curves of a stage that trains with DPO's loss (dpo_training: loss, margin, chosen, rejected), its
    runs one after the other (SPIN: one run per iteration; chosen and rejected restart from 0 at each, measured from
    that iteration's reference π_t), and the steps of each run."""
    curves = result["curves"] if "curves" in result else [result["curve"]]
    keys = ("loss", "margin", "chosen", "rejected")
    return {**{k: [x for c in curves for x in c[k]] for k in keys}, "steps_per_run": len(curves[0]["loss"])}


def displacement(result):
    """What DPO's loss did to the likelihoods in one stage (dpo; spin and spin_short, one run of DPO's loss per
    iteration): per run, the mean change of log π over all chosen and all rejected responses from the run's
    reference (chosen, rejected), and the exact probe (evaluation.support_metrics on --probe_prompts held-out
    prompts) before the first run and after each (probe: each number a list, [start, after 1, ...]); for dpo,
    pairs: the share of its preference pairs tied on the gold reward (a coin-flip label) and of their responses
    off the expert's support."""
    curves = result["curves"] if "curves" in result else [result["curve"]]
    probes = [result["probe_start"]] + [c["probe"] for c in curves]
    return {"chosen": [c["displacement"]["chosen"] for c in curves],
            "rejected": [c["displacement"]["rejected"] for c in curves],
            "probe": {k: [p[k] for p in probes] for k in probes[0]},
            **({"pairs": result["pairs"]} if "pairs" in result else {})}


def get(tree, *keys):
    """tree[k1][k2]..., or None where a key is missing."""
    for k in keys:
        if not isinstance(tree, dict) or k not in tree:
            return None
        tree = tree[k]
    return tree


def fmt(x, s=None):
    """A number (± its spread) as tables and figures print it."""
    if x is None:
        return "n/a"
    text = f"{x + 0.0:.3g}"  # + 0.0 turns −0.0 into 0
    return text if s is None else f"{text} ± {s:.2g}"

# -----------------------------------------------------------------------------
# aggregation over seeds

def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)

def _is_number_list(x):
    return isinstance(x, list) and len(x) > 0 and all(_is_number(v) for v in x)

def _std(a):
    # sample standard deviation (ddof=1) over seeds; a single seed has no spread: 0
    return a.std(axis=0, ddof=1) if a.shape[0] > 1 else np.zeros(a.shape[1:])

def _aggregate(values):
    """values: the same node taken from every run that has it. Returns (mean, std)."""
    if all(isinstance(v, dict) for v in values):
        keys = list(dict.fromkeys(k for v in values for k in v))  # union, first-seen order
        pairs = {k: _aggregate([v[k] for v in values if k in v]) for k in keys}
        return {k: m for k, (m, _) in pairs.items()}, {k: s for k, (_, s) in pairs.items()}
    if all(v == values[0] for v in values) and (_is_number(values[0]) or _is_number_list(values[0])):
        # the same in every run (settings, the N of Best-of-N): kept as is, ints stay ints
        return copy.deepcopy(values[0]), (0.0 if _is_number(values[0]) else [0.0] * len(values[0]))
    if all(_is_number(v) for v in values):
        a = np.array(values, dtype=float)
        return float(a.mean()), float(_std(a))
    if all(_is_number_list(v) for v in values):
        n = min(len(v) for v in values)  # curves of different lengths: their common prefix
        a = np.array([v[:n] for v in values], dtype=float)
        return a.mean(axis=0).tolist(), _std(a).tolist()
    return copy.deepcopy(values[0]), None  # text, flags, empty lists: the first run's value

def aggregate(runs):
    """
    Mean and standard deviation over seeds, as two trees shaped like one metrics dict.
    Numbers and numeric lists (element-wise) are averaged; the std is the sample std (ddof=1),
    0 for a single seed. Anything else (text, booleans, empty lists) is the first run's value in
    the mean tree and None in the std tree. A key present in only some runs is kept and averaged
    over the runs that have it. Numeric lists of different lengths are cut to the shortest.
    """
    assert len(runs) > 0, "no runs to aggregate"
    return _aggregate(list(runs))

def combine(runs):
    """The top-level metrics.json: the mean over seeds of every number, their std, the seeds and the effects."""
    mean, std = aggregate(runs)
    return {**mean, "std": std, "seeds": [r["seed"] for r in runs], "effects": effects(runs)}

# -----------------------------------------------------------------------------
# the expected effects, judged on paired differences over seeds
#
# Every comparison the papers predict is between two policies (or reward models) trained from the
# same seed's π_init and π_SFT, so it is a paired comparison: for each seed s take the difference
# d_s that decides it, arranged so that the expected direction is d_s > 0, and judge the K
# differences, not the two means. Seed-to-seed variation that moves both sides together (a better
# π_SFT lifts everything) then cancels.

PREREGISTERED_N = (4, 16)  # Best-of-N effects are judged at these N, fixed in advance: no best N after looking

class _Missing(Exception):
    pass

def _need(run, *keys):
    value = get(run, *keys)
    if value is None:
        raise _Missing(".".join(map(str, keys)))
    return value

def _bon_at(world, rm, n, key="gold_reward", table="bon"):
    """Best-of-n's gold reward (or another statistic of its picks) with reward rm; table bon_plausible: under the
    plausibility constraint."""
    ns = _need(world, table, rm, "n")
    if n not in ns:
        raise _Missing(f"{table}.{rm} at N = {n}")
    return _need(world, table, rm, key)[ns.index(n)]

def _rm_gap(world, n):
    """How much more gold reward Best-of-n gets with Init-SFT than with the better of the two
    demonstration-based reward models."""
    return _bon_at(world, "init_sft", n) - max(_bon_at(world, "init_demo", n), _bon_at(world, "sft_demo", n))

def effect_conditions(has_control=True):
    """The papers' predictions as (effect, condition, difference, d(run)): d(run) is the per-seed
    difference, expected > 0; `difference` says it in words. An effect with several conditions holds
    only if every one of them does."""
    pol = lambda r, p, k: _need(r, "policies", p, k)
    out = []
    for p in MODE_SEEKING:   # forward KL is mass-covering: its minimiser, SFT, has the lowest KL(β ‖ π)
        out.append((f"mass-covering: π_SFT has lower forward KL than {p}", "forward KL",
                    f"forward_kl[{p}] − forward_kl[sft]",
                    lambda r, p=p: pol(r, p, "forward_kl") - pol(r, "sft", "forward_kl")))
    for p in MODE_SEEKING:   # ... and the loop alone (pg_control) moves away from it less than a mode-seeking reward
        out.append((f"mass-covering: the loop without demonstrations (pg_control) has lower forward KL than {p}",
                    "forward KL", f"forward_kl[{p}] − forward_kl[pg_control]",
                    lambda r, p=p: pol(r, p, "forward_kl") - pol(r, "pg_control", "forward_kl")))
    # Reverse KL is mode-seeking: less mass off the expert's support, on fewer modes. Judged on the two exact numbers
    # (evaluation.py), not on the whole reverse KL, which the off-support floor dominates and whose off-support part
    # is sampled. Each against π_SFT, and against the control (pg_control: the same loop, its discriminator shown
    # π_SFT's samples instead of demonstrations): what the demonstrations add to what the loop does by itself.
    # Within the support mode-seeking concentrates: KL(π(·|on) ‖ β(·|on)) rises above SFT's (seeds 0-4 showed it
    # for every reverse-KL policy, the exact oracle's most; fixed then, judged on 5-9: docs/RESULTS.md). The
    # support's part of the reverse KL, Σ_S π log(π/β), rose likewise: what lowers the reverse KL is leaving the floor.
    seeking = [("off_support", "off-support rate"), ("mode_entropy", "mode entropy")]
    for p in MODE_SEEKING:
        for ref, what in [("sft", "π_SFT"), ("pg_control", "the loop without demonstrations (pg_control)")]:
            effect = f"mode-seeking: {p} has a lower off-support rate and mode entropy than {what}"
            for key, label in seeking:
                out.append((effect, label, f"{key}[{ref}] − {key}[{p}]",
                            lambda r, p=p, key=key, ref=ref: pol(r, ref, key) - pol(r, p, key)))
    for p in MODE_SEEKING:
        out.append((f"mode-seeking concentrates: {p} spreads over the expert's support less like β than π_SFT does",
                    "KL on the support", f"reverse_kl_on[{p}] − reverse_kl_on[sft]",
                    lambda r, p=p: pol(r, p, "reverse_kl_on") - pol(r, "sft", "reverse_kl_on")))
    main, control = (lambda r: r), (lambda r: _need(r, "control"))   # the signed world and the control world
    in_control = lambda prefix: [(prefix, control)] if has_control else []
    for prefix, world in [("extrapolation", main), *in_control("control world: extrapolation")]:
        # extrapolation: Best-of-N on the Init-SFT reward goes past the demonstrator
        for n in PREREGISTERED_N:
            out.append((f"{prefix}: Best-of-{n} with the Init-SFT reward model beats the demonstrations",
                        f"N = {n}", f"bon.init_sft[N={n}] − demonstrations",
                        lambda r, world=world, n=n: _bon_at(world(r), "init_sft", n)
                        - _need(world(r), "demonstrations", "gold_reward")))
    # the methods AfD is compared with, on the same plane
    for m, name in [("dpo", "DPO"), ("spin", "SPIN")]:
        effect = f"{name} ({m}) has lower reverse KL and off-support rate, and a higher gold reward, than π_SFT"
        for key, label, sign in [("reverse_kl", "reverse KL", 1), ("off_support", "off-support rate", 1),
                                 ("gold_reward", "gold reward", -1)]:
            out.append((effect, label, f"{key}[sft] − {key}[{m}]" if sign > 0 else f"{key}[{m}] − {key}[sft]",
                        lambda r, m=m, key=key, sign=sign: sign * (pol(r, "sft", key) - pol(r, m, key))))
    out.append(("adversarial reverse KL (rkl_seq) reaches a lower reverse KL than SPIN from the same demonstrations",
                "reverse KL", "reverse_kl[spin] − reverse_kl[rkl_seq]",
                lambda r: pol(r, "spin", "reverse_kl") - pol(r, "rkl_seq", "reverse_kl")))
    fkl = lambda r, p: pol(r, p, "forward_kl")
    out.append(("FAIRL (fkl_fairl) keeps a forward KL closer to π_SFT's than reverse KL with the same discriminator "
                "(rkl_seq)", "forward KL", "forward_kl[rkl_seq] − forward_kl[fkl_fairl]",
                lambda r: fkl(r, "rkl_seq") - fkl(r, "fkl_fairl")))
    # FAIRL's twins, predicted from the gradients of objectives.fairl_reward and importance_weight_reward before
    # they ran: FAIRL's reward climbs the forward KL near β even when exact; the importance weight e^h descends it
    # but estimates SFT's gradient with weights of variance χ²(β ‖ π), so SFT (weight 1) still does better
    out.append(("FAIRL's reward moves away from β even when exact: fkl_oracle has a higher forward KL than π_SFT",
                "forward KL", "forward_kl[fkl_oracle] − forward_kl[sft]",
                lambda r: fkl(r, "fkl_oracle") - fkl(r, "sft")))
    for iw, fairl, what in [("fkl_iw_oracle", "fkl_oracle", "exact"), ("fkl_iw", "fkl_fairl", "learned")]:
        out.append((f"the importance weight e^h does not collapse where FAIRL does ({what}: {iw} has a lower forward "
                    f"KL than {fairl})", "forward KL", f"forward_kl[{fairl}] − forward_kl[{iw}]",
                    lambda r, iw=iw, fairl=fairl: fkl(r, fairl) - fkl(r, iw)))
        out.append((f"SFT still beats the importance weight e^h on forward KL ({what}: π_SFT has a lower forward KL "
                    f"than {iw})", "forward KL", f"forward_kl[{iw}] − forward_kl[sft]",
                    lambda r, iw=iw: fkl(r, iw) - fkl(r, "sft")))
    out.append(("the importance weight (fkl_iw) keeps a forward KL closer to π_SFT's than reverse KL with the same "
                "discriminator (rkl_seq)", "forward KL", "forward_kl[rkl_seq] − forward_kl[fkl_iw]",
                lambda r: fkl(r, "rkl_seq") - fkl(r, "fkl_iw")))
    out.append(("the demonstrations help the learned importance weight: fkl_iw has a lower forward KL than the loop "
                "without demonstrations (pg_control)", "forward KL", "forward_kl[pg_control] − forward_kl[fkl_iw]",
                lambda r: fkl(r, "pg_control") - fkl(r, "fkl_iw")))
    # DPO and SPIN where their theory says they converge (docs/RESULTS.md: how the learning rates and λ were chosen)
    out.append(("DPO does not displace likelihood: the chosen responses' log π rises", "log π(chosen) change",
                "displacement.dpo.chosen", lambda r: _need(r, "displacement", "dpo", "chosen")[-1]))
    out.append(("SPIN from an under-trained π_SFT (spin_short) lowers its forward KL", "forward KL",
                "forward_kl[sft_short] − forward_kl[spin_short]",
                lambda r: fkl(r, "sft_short") - fkl(r, "spin_short")))
    out.append(("SFT's own further steps (π_SFT) do better on forward KL than SPIN from the under-trained π_SFT",
                "forward KL", "forward_kl[spin_short] − forward_kl[sft]",
                lambda r: fkl(r, "spin_short") - fkl(r, "sft")))
    # why Best-of-N by Init-SFT stops at the demonstrators' level, and what gets past them (docs/RESULTS.md)
    out.append(("mechanism: Best-of-16 by the exact Init-SFT optimum picks off-support responses more often than "
                "π_SFT's samples", "off-support rate", "bon.init_sft_optimum.off_support[N=16] − the same at N=1",
                lambda r: _bon_at(r, "init_sft_optimum", 16, "off_support")
                - _bon_at(r, "init_sft_optimum", 1, "off_support")))
    plausible = lambda r, n: _bon_at(r, "init_sft", n, table="bon_plausible")
    for n in PREREGISTERED_N:
        out.append(("plausible extrapolation: Best-of-N by the learned Init-SFT reward model among the plausible "
                    "candidates beats the demonstrations", f"N = {n}",
                    f"bon_plausible.init_sft[N={n}] − demonstrations",
                    lambda r, n=n: plausible(r, n) - _need(r, "demonstrations", "gold_reward")))
    for n in PREREGISTERED_N:
        out.append(("plausible extrapolation: the learned Init-SFT reward model among the plausible candidates "
                    "beats π_SFT's likelihood alone", f"N = {n}",
                    f"bon_plausible.init_sft[N={n}] − bon.sft_likelihood[N={n}]",
                    lambda r, n=n: plausible(r, n) - _bon_at(r, "sft_likelihood", n)))
    alpha = f"extrapolated_{ALPHA_JUDGED:g}"
    out.append((f"extrapolation without a reward model: π_α at α = {ALPHA_JUDGED:g} has a higher gold reward than "
                "π_SFT", "gold reward", f"gold_reward[{alpha}] − gold_reward[sft]",
                lambda r: pol(r, alpha, "gold_reward") - pol(r, "sft", "gold_reward")))
    for m in ADVERSARIAL:   # a discriminator worth its name learned the log-ratio it estimates: judged on the part
        # it learned (log q_φ − log π_SFT against log β − log π_SFT), not on h, which shares −log π with its target
        out.append((f"calibration: what {m}'s discriminator learned ranks its policy's samples like its target",
                    "Spearman ρ > 0", f"calibration.{m}.spearman_learned",
                    lambda r, m=m: _need(r, "calibration", m, "spearman_learned")))
    out.append(("RL on the Init-SFT reward model ends above π_SFT's gold reward", "gold reward",
                "gold_reward[rl_init_sft] − gold_reward[sft]",
                lambda r: pol(r, "rl_init_sft", "gold_reward") - pol(r, "sft", "gold_reward")))
    for prefix, world in [("heterogeneity", main), *in_control("control world")]:
        # reward models trained against demonstrations learn their fingerprint
        for ref, rm, what in [("init_sft", "init_demo", "the Init-Demo reward model than with the Init-SFT one"),
                              ("init_sft", "sft_demo", "the SFT-Demo reward model than with the Init-SFT one"),
                              ("init_sft_optimum", "init_demo_optimum", "the Init-Demo optimum than with Init-SFT's"),
                              ("init_sft_optimum", "sft_demo_optimum", "the SFT-Demo optimum than with Init-SFT's")]:
            for n in PREREGISTERED_N:
                out.append((f"{prefix}: Best-of-N gains less with {what}", f"N = {n}",
                            f"bon.{ref}[N={n}] − bon.{rm}[N={n}]",
                            lambda r, world=world, ref=ref, rm=rm, n=n:
                            _bon_at(world(r), ref, n) - _bon_at(world(r), rm, n)))
    if has_control:
        for n in PREREGISTERED_N:
            out.append(("the Init-SFT advantage shrinks without the demonstrator's signature", f"N = {n}",
                        f"gap − control gap, gap = bon.init_sft[N={n}] − max(bon.init_demo, bon.sft_demo)",
                        lambda r, n=n: _rm_gap(r, n) - _rm_gap(control(r), n)))
    return out

def _combine(verdicts):
    if "not checked" in verdicts:
        return "not checked"
    if "indicative" in verdicts:
        return "indicative"
    if all(v == "holds" for v in verdicts):
        return "holds"
    return "does not hold" if "does not hold" in verdicts else "inconclusive"

def effects(runs):
    """The expected effects judged over the K seeds in runs: a list of
        {effect, condition, difference, verdict, seeds_holding, seeds, diff_mean, ci95, diffs}
    one per condition, then one with condition "all conditions" for each effect that has several
    (its verdict holds only if every condition holds; seeds_holding counts the seeds on which all
    differences are positive). verdict is holds / does not hold / inconclusive (the 95% interval
    excludes 0 above / below / contains it), indicative (K < 3: no interval), or not checked (an
    input is missing). This is the one place effects are computed: metrics.json, report.md and the
    README's table all take them from here."""
    runs = list(runs)
    rows, by_effect = [], {}
    for effect, condition, difference, d in effect_conditions(all("control" in r for r in runs)):
        row = {"effect": effect, "condition": condition, "difference": difference, "seeds": len(runs)}
        try:
            diffs = [float(d(r)) for r in runs]
        except _Missing as e:
            row.update(verdict="not checked", seeds_holding=0, diff_mean=None, ci95=None, diffs=None,
                       missing=str(e))
        else:
            row.update(verdict=verdict(diffs), seeds_holding=int(sum(x > 0 for x in diffs)),
                       diff_mean=float(np.mean(diffs)), ci95=paired_interval(diffs), diffs=diffs)
        rows.append(row)
        by_effect.setdefault(effect, []).append(row)
    for effect, conds in by_effect.items():
        if len(conds) > 1:
            all_pos = [all(c["diffs"][s] > 0 for c in conds) for s in range(len(runs))] \
                if all(c["diffs"] is not None for c in conds) else [False]
            rows.append({"effect": effect, "condition": "all conditions", "difference": None,
                         "verdict": _combine([c["verdict"] for c in conds]),
                         "seeds_holding": int(sum(all_pos)), "seeds": len(runs), "diff_mean": None,
                         "ci95": None, "diffs": None})
    order = list(by_effect)   # each effect's conditions together, its combined row last
    return sorted(rows, key=lambda r: order.index(r["effect"]))


# -----------------------------------------------------------------------------
# a sweep: the effects at every point

def sweep_metrics(points, tops):
    """sweep.json: for each point of a sweep (cli.sweep_points: (folder, {knob: value})) and its top-level
    metrics, every effect's verdict, mean paired difference and interval there."""
    keep = ("effect", "condition", "verdict", "diff_mean", "ci95", "seeds_holding", "seeds")
    return {"knobs": list(points[0][1]) if points else [],
            "points": [{"folder": name, "values": values, "seeds": top["seeds"],
                        "effects": [{k: e[k] for k in keep} for e in top["effects"]]}
                       for (name, values), top in zip(points, tops)]}


# -----------------------------------------------------------------------------
# the regime map (--study=regimes): when each method shines
#
# At every point of the study (a knob moved alone from the defaults) each method is compared with π_SFT of the same
# seed; along a knob, the papers' answer to "when" is judged as the change of that advantage between the knob's two
# ends, paired by seed (a difference of differences). docs/RESULTS.md, "When each method shines".

REGIME_METHODS = ("rkl_seq", "rkl_tok", "js", "rkl_oracle", "pg_control", "pg_frozen")   # the ceiling, the floor
REGIME_MEASURES = {   # measure: (which way is better: +1 higher, -1 lower, 0 neither), its label
    "reverse_kl_on": (-1, "KL on the support, KL(π(·|on) ‖ β(·|on))"),
    "off_support": (-1, "P(off-support)"),
    "mode_entropy": (0, "mode entropy (nats)"),
    "gold_reward": (1, "gold reward"),
}
DEV_SEEDS, HELDOUT_SEEDS = tuple(range(0, 5)), tuple(range(5, 10))   # chose on 0-4; judged on 5-9

# Written before any run of the study (docs/RESULTS.md): (knob, the end where the advantage over π_SFT is predicted
# larger, the other end, the papers' claim). Ends are indices into the knob's points (Study.knobs).
REGIME_PREDICTIONS = [
    ("demonstrations", 0, 2, "with fewer demonstrations the advantage over π_SFT grows"),
    ("capacity", 0, 2, "with a smaller model the advantage over π_SFT grows"),
    ("open-endedness", 2, 0, "with a more open-ended task the advantage over π_SFT grows (close-ended: none)"),
]
PREDICTED_METHODS = ("rkl_seq", "rkl_tok", "js", "rkl_oracle")
PREDICTED_MEASURES = ("reverse_kl_on", "off_support", "gold_reward")


def regime_diff(run, method, key):
    """A method's measure minus π_SFT's, in one seed's run."""
    return run["policies"][method][key] - run["policies"]["sft"][key]


def regime_map(regimes, seeds=None):
    """{point: {method: {measure: {mean, ci95, diffs}}}}: the paired difference method − π_SFT over the seeds
    (those in `seeds`, else all) at every point of the study."""
    out = {}
    for folder, point in regimes["points"].items():
        runs = [r for r in point["runs"] if seeds is None or r["seed"] in seeds]
        out[folder] = {m: {key: (lambda d: {"mean": float(np.mean(d)) if d else None, "ci95": paired_interval(d),
                                            "diffs": d})([regime_diff(r, m, key) for r in runs])
                           for key in REGIME_MEASURES} for m in REGIME_METHODS}
    return out


def regime_predictions(regimes, seeds=None):
    """Each prediction of REGIME_PREDICTIONS for each method and measure, judged over the seeds run at both ends
    (those in `seeds`, else all): per seed, the advantage (the measure's better direction × (method − π_SFT)) at
    the end predicted larger minus that at the other end; its mean, 95% interval, verdict (stats.verdict)."""
    rows = []
    for knob, hi, lo, claim in REGIME_PREDICTIONS:
        ends = [regimes["knobs"][knob][i] for i in (hi, lo)]
        by_seed = [{r["seed"]: r for r in regimes["points"][e]["runs"]} for e in ends]
        common = sorted(s for s in by_seed[0] if s in by_seed[1] and (seeds is None or s in seeds))
        for m in PREDICTED_METHODS:
            for key in PREDICTED_MEASURES:
                better = REGIME_MEASURES[key][0]
                diffs = [better * (regime_diff(by_seed[0][s], m, key) - regime_diff(by_seed[1][s], m, key))
                         for s in common]
                rows.append({"knob": knob, "claim": claim, "method": m, "measure": key, "larger_at": ends[0],
                             "smaller_at": ends[1], "seeds": common, "diffs": diffs,
                             "diff_mean": float(np.mean(diffs)) if diffs else None, "ci95": paired_interval(diffs),
                             "verdict": verdict(diffs) if diffs else "not checked",
                             "seeds_holding": int(sum(d > 0 for d in diffs))})
    return rows

# -----------------------------------------------------------------------------------------------------------
# The smallest model that learns the task (--study=smallest, afd_mini.SMALLEST_SIZES): for a class on slow laptops.
# The rule was fixed before the study ran.

LEARNS_BELOW = 0.15   # π_SFT learns the task: its off-support rate P(off-support) below this


def smallest_learner(study, threshold=LEARNS_BELOW):
    """study: {"knobs": {"size": [point, ...]} from fewest parameters up, "points": {point: {"runs": [...]}}}.
    Chosen on seeds 0-4: the first point whose π_SFT has a mean off-support rate below threshold. Judged on
    seeds 5-9: threshold − off-support per seed, stats.verdict (holds: the 95% interval of the mean lies below the
    threshold). Every point's mean and interval on 0-4, 5-9 and 0-9 in rows."""
    rows = []
    for point in study["knobs"]["size"]:
        off = {r["seed"]: r["policies"]["sft"]["off_support"] for r in study["points"][point]["runs"]}
        row = {"point": point}
        for name, seeds in (("dev", DEV_SEEDS), ("heldout", HELDOUT_SEEDS), ("all", None)):
            x = [v for s, v in sorted(off.items()) if seeds is None or s in seeds]
            ci = paired_interval(x)
            row[name] = {"mean": float(np.mean(x)) if x else None, "ci95": ci, "seeds": len(x)}
        rows.append(row)
    chosen = next((r for r in rows if r["dev"]["seeds"] and r["dev"]["mean"] < threshold), None)
    if chosen is None:
        return {"threshold": threshold, "chosen": None, "verdict": "none learns on seeds 0-4", "rows": rows}
    held = [threshold - r["policies"]["sft"]["off_support"] for r in study["points"][chosen["point"]]["runs"]
            if r["seed"] in HELDOUT_SEEDS]
    return {"threshold": threshold, "chosen": chosen["point"],
            "verdict": verdict(held) if held else "not judged (no seed of 5-9)", "rows": rows}
