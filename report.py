"""
The report: turns the per-seed metrics of afd_mini.py into report.md and six figures.

afd_mini.py runs K seeds and calls assemble for each: the layout of metrics.json lives here. Then it calls
write_report(out_dir, runs). This file
  0. assembles one seed's metrics.json from its stages' results, and prints the run's summary,
  1. aggregates the seeds (mean and sample standard deviation of every number),
  2. judges the effects the two papers predict on paired differences over seeds (a 95% interval
     of the mean difference: holds, does not hold, or inconclusive),
  3. draws the figures and writes report.md beside them.
Rebuild a report from saved metrics with: python report.py OUT_DIR

Notation as in the README: π_β the expert (demonstrator), π_init the pretrained model,
π_SFT the model fine-tuned on demonstrations. KL(β ‖ π) is the forward KL (minimised by SFT,
mass-covering), KL(π ‖ β) the reverse KL (minimised by adversarial imitation, mode-seeking).
All KLs are in nats per response.
"""

import copy
import glob
import json
import math
import os
import sys

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no global state, no display, Agg by default
from matplotlib.lines import Line2D

from methods import ADVERSARIAL, LEARNED_VS_OPTIMUM, MODE_SEEKING, POLICIES, REWARD_MODELS, STAGES
from objectives import generalized_jsd

# every method, label and style comes from the one table, methods.py
POLICY_LABELS = {p.name: p.label for p in POLICIES}
POLICY_STYLE = {p.name: p.style for p in POLICIES}   # (colour, marker), the same in every figure
RM_NAMES = [r.name for r in REWARD_MODELS]
RM_LABELS = {r.name: r.label for r in REWARD_MODELS}
RM_STYLE = {r.name: r.style for r in REWARD_MODELS}   # Init-SFT stands out; gold is the dotted ceiling
DPI = 120

# -----------------------------------------------------------------------------
# one seed's metrics.json, and the summary printed at the end of a run

def assemble(stage, seed, world_seconds, demo_gold_reward, config):
    """One seed's metrics.json from its stages' results: stage(name) → <name>.json's dict."""
    ev, bon, rm, control = stage("evaluate"), stage("best_of_n"), stage("reward_models"), stage("control")
    adversarial = {p.name: stage(p.name)["curve"] for p in POLICIES if p.kind in ("adversarial", "oracle", "rm_rl")}
    return {
        "seed": seed,
        "policies": ev["policies"],
        "demonstrations": {"gold_reward": demo_gold_reward},
        "bon": bon["bon"],
        "reward_models": {**bon["reward_models"],
                          "final_loss": {k: v["loss"][-1] for k, v in rm["curves"].items()},
                          "heldout_loss": {k: v["heldout_loss"] for k, v in rm["curves"].items()}},
        "calibration": ev["calibration"],
        "calibration_points": ev["calibration_points"],
        "curves": {"pretrain_loss": stage("pretrain")["curve"], "sft_loss": stage("sft")["curve"],
                   "adversarial": adversarial},
        "stage_seconds": {"world": world_seconds, **{s: stage(s)["seconds"] for s in STAGES}},
        "config": config,
        **({"control": {k: control[k] for k in ("bon", "reward_models", "demonstrations")}}
           if "bon" in control else {}),
    }


def summary(metrics, out_dir):
    """The lines afd_mini.py prints at the end: every policy, Best-of-N, and the verdict on every effect."""
    w = max(len(name) for name in [*metrics["policies"], *metrics["bon"]]) + 1
    lines = [f"{'policy':<{w}} {'KL(β‖π)':>9} {'KL(π‖β)':>9} {'off-supp':>9} {'gold':>6} {'length':>7}"]
    for name, p in metrics["policies"].items():
        lines.append(f"{name:<{w}} {p['forward_kl']:9.2f} {p['reverse_kl']:9.2f} {p['off_support']:9.2f} "
                     f"{p['gold_reward']:6.3f} {p['length']:7.1f}")
    lines.append(f"demonstrations' gold reward {metrics['demonstrations']['gold_reward']:.3f}; Best-of-N gold "
                 "reward at N = " + ", ".join(str(n) for n in metrics["bon"]["init_sft"]["n"]) + ":")
    for name, b in metrics["bon"].items():
        lines.append(f"  {name:<{w}} " + " ".join(f"{g:.3f}" for g in b["gold_reward"]))
    final = {e["effect"]: e for e in metrics["effects"]}   # an effect's combined row comes last
    k = len(metrics["seeds"])
    lines.append(f"expected effects over {k} seed{'s' * (k > 1)}"
                 + (" (paired 95% intervals):" if k >= 3 else " (indicative only; run --seeds=5):"))
    for e in final.values():
        lines.append(f"  {e['verdict']:<14} {e['effect']} ({e['seeds_holding']}/{e['seeds']} seeds)")
    lines.append(f"outputs: {out_dir}/metrics.json, {out_dir}/report.md")
    return "\n".join(lines)

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

# -----------------------------------------------------------------------------
# the expected effects, judged on paired differences over seeds
#
# Every comparison the papers predict is between two policies (or reward models) trained from the
# same seed's π_init and π_SFT, so it is a paired comparison: for each seed s take the difference
# d_s that decides it, arranged so that the expected direction is d_s > 0, and judge the K
# differences, not the two means. Seed-to-seed variation that moves both sides together (a better
# π_SFT lifts everything) then cancels.

def _get(tree, *keys):
    for k in keys:
        if not isinstance(tree, dict) or k not in tree:
            return None
        tree = tree[k]
    return tree

def _fmt(x, s=None):
    if x is None:
        return "n/a"
    text = f"{x + 0.0:.3g}"  # + 0.0 turns −0.0 into 0
    return text if s is None else f"{text} ± {s:.2g}"

PREREGISTERED_N = (4, 16)  # Best-of-N effects are judged at these N, fixed in advance: no best N after looking

# Student's t, 97.5% quantile (two-sided 95%), for 1..30 degrees of freedom (any table of t).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042]

def t_quantile_975(df):
    """t_{0.975, df}. Past the table, the Cornish–Fisher expansion of t around the normal quantile
    z = 1.95996 (Abramowitz & Stegun 26.7.5), accurate to 1e-3 for df > 30."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be ≥ 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3

def paired_interval(diffs):
    """95% confidence interval of the mean of K paired differences (Student's t, K − 1 df):
        d̄ ± t_{0.975, K−1} · s / √K,   s the sample standard deviation (ddof = 1).
    Returns [lo, hi], or None for K < 3 (two seeds give one degree of freedom: t = 12.7, no interval
    worth the name)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 3:
        return None
    half = t_quantile_975(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return [float(d.mean() - half), float(d.mean() + half)]

def judge(diffs):
    """The verdict on K paired differences whose expected sign is positive."""
    ci = paired_interval(diffs)
    if ci is None:
        return "indicative"
    return "holds" if ci[0] > 0 else "does not hold" if ci[1] < 0 else "inconclusive"

class _Missing(Exception):
    pass

def _need(run, *keys):
    value = _get(run, *keys)
    if value is None:
        raise _Missing(".".join(map(str, keys)))
    return value

def _bon_at(world, rm, n):
    ns = _need(world, "bon", rm, "n")
    if n not in ns:
        raise _Missing(f"bon.{rm} at N = {n}")
    return _need(world, "bon", rm, "gold_reward")[ns.index(n)]

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
    for p in MODE_SEEKING:   # reverse KL is mode-seeking: less KL(π ‖ β), less off-support, fewer modes
        effect = f"mode-seeking: {p} has lower reverse KL, off-support rate and mode entropy than π_SFT"
        for key, label in [("reverse_kl", "reverse KL"), ("off_support", "off-support rate"),
                           ("mode_entropy", "mode entropy")]:
            out.append((effect, label, f"{key}[sft] − {key}[{p}]",
                        lambda r, p=p, key=key: pol(r, "sft", key) - pol(r, p, key)))
    main, control = (lambda r: r), (lambda r: _need(r, "control"))   # the signed world and the control world
    in_control = lambda prefix: [(prefix, control)] if has_control else []
    for prefix, world in [("extrapolation", main), *in_control("control world: extrapolation")]:
        # extrapolation: Best-of-N on the Init-SFT reward goes past the demonstrator
        for n in PREREGISTERED_N:
            out.append((f"{prefix}: Best-of-{n} with the Init-SFT reward model beats the demonstrations",
                        f"N = {n}", f"bon.init_sft[N={n}] − demonstrations",
                        lambda r, world=world, n=n: _bon_at(world(r), "init_sft", n)
                        - _need(world(r), "demonstrations", "gold_reward")))
    for m in ADVERSARIAL:   # a discriminator worth its name orders responses like the log-ratio it estimates
        out.append((f"calibration: {m}'s discriminator logit ranks its policy's samples like log β − log π",
                    "Spearman ρ > 0", f"calibration.{m}.spearman",
                    lambda r, m=m: _need(r, "calibration", m, "spearman")))
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
            row.update(verdict=judge(diffs), seeds_holding=int(sum(x > 0 for x in diffs)),
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
# figure 1: forward vs reverse KL on a toy 1-D problem (needs no metrics)

def fit_gaussian(target_probs, grid, direction, steps=200, lr=0.2):
    """
    Fit a Gaussian discretised on `grid` to `target_probs` by gradient descent on (mean, log std).
    direction "forward" minimises KL(target ‖ fit) (what SFT does), "reverse" KL(fit ‖ target)
    (what adversarial imitation does). Both start at the same point: narrow and right of centre,
    so that a symmetric target does not leave the reverse fit balanced between two modes.
    Returns (mu, sigma) as floats.
    """
    beta = {"forward": 0.0, "reverse": 1.0}[direction]
    grid = torch.as_tensor(grid, dtype=torch.float64)
    target_logits = torch.as_tensor(target_probs, dtype=torch.float64).clamp_min(1e-300).log()
    span = float(grid.max() - grid.min())
    params = torch.tensor([float(grid.mean()) + 0.1 * span, math.log(0.05 * span)],
                          dtype=torch.float64, requires_grad=True)  # (mu, log sigma)
    for _ in range(steps):
        mu, sigma = params[0], params[1].exp()
        fit_logits = -0.5 * ((grid - mu) / sigma) ** 2  # softmax normalises on the grid
        # generalized_jsd(p, q, beta=0) = KL(p ‖ q), beta=1: KL(q ‖ p); p = target, q = fit
        loss = generalized_jsd(target_logits[None], fit_logits[None], beta).mean()
        grad, = torch.autograd.grad(loss, params)
        with torch.no_grad():
            # steps no longer than lr: from a narrow start that misses a whole mode, the forward
            # KL's first gradients are huge and a plain step would throw sigma far away
            params -= lr * grad / max(1.0, grad.norm().item())
    return params[0].item(), params[1].exp().item()

def _gaussian_on_grid(grid, mu, sigma):
    p = np.exp(-0.5 * ((grid - mu) / sigma) ** 2)
    return p / p.sum()

def bimodal_target(grid, modes=(-2.0, 2.0), width=0.6):
    return 0.5 * _gaussian_on_grid(grid, modes[0], width) + 0.5 * _gaussian_on_grid(grid, modes[1], width)

def fig_intuition(path):
    grid = np.linspace(-6, 6, 241)
    target = bimodal_target(grid)
    fig = Figure(layout="constrained", figsize=(7, 3.8))
    ax = fig.subplots()
    ax.fill_between(grid, target, color="0.8", label="target (expert β), two modes")
    for direction, color, what in [("forward", "C0", "forward KL(β‖q): covers both modes"),
                                   ("reverse", "C3", "reverse KL(q‖β): picks one mode")]:
        mu, sigma = fit_gaussian(target, grid, direction)
        ax.plot(grid, _gaussian_on_grid(grid, mu, sigma), color=color, lw=2,
                label=f"{what} (μ={mu:.2f}, σ={sigma:.2f})")
    ax.set(title="One Gaussian q fitted to a two-mode target", xlabel="response (1-D stand-in)",
           ylabel="probability per grid cell")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.35)  # room for the legend above the curves
    _save(fig, path)

# -----------------------------------------------------------------------------
# figures 2-6: from the aggregated metrics. err is the tree of error-bar half-widths (error_bars)

def _policy_order(policies):
    known = [p for p in POLICY_LABELS if p in policies]
    return known + sorted(p for p in policies if p not in known)

DISC_FORM = {"disc": "AIRL-form"}   # what a label's {disc} reads: the run's --disc, set by write_report

def _policy_label(p):
    if p in POLICY_LABELS:
        return POLICY_LABELS[p].format(**DISC_FORM)
    if p.startswith("bon_") and "@" in p:  # e.g. bon_init_sft@16
        rm, n = p[4:].split("@")
        return f"Best-of-{n}, {RM_LABELS.get(rm, rm)} RM"
    return p

def _policy_style(p, i=0):
    return POLICY_STYLE.get(p, (["C9", "C8", "C6", "C7"][i % 4], "X"))

def fig_modes(path, mean, err):
    pol = mean["policies"]
    names = _policy_order(pol)[::-1]  # barh draws bottom-up; the expert goes on top
    modes = list(pol.get("expert", pol[names[-1]])["mode_freq"])
    colors = [f"C{i % 10}" for i in range(len(modes))]
    fig = Figure(layout="constrained", figsize=(8.5, 0.45 * len(names) + 1.6))
    ax = fig.subplots()
    y = np.arange(len(names))
    left = np.zeros(len(names))
    for mode, color in zip(modes, colors):
        w = np.array([pol[p]["mode_freq"].get(mode, 0.0) for p in names])
        ax.barh(y, w, left=left, color=color, label=mode)
        left += w
    off = np.array([pol[p]["off_support"] for p in names])
    ax.barh(y, off, left=left, color="white", edgecolor="0.3", hatch="///", label="off-support")
    for i, p in enumerate(names):
        h, hs = pol[p]["mode_entropy"], _get(err, "policies", p, "mode_entropy")
        ax.text(1.02, i, f"H = {_fmt(h, hs)}", va="center", fontsize=8)
    ax.set_yticks(y, [_policy_label(p) for p in names])
    ax.set(xlim=(0, 1), xlabel="fraction of sampled responses",
           title="Where each policy puts its mass (H = mode entropy, nats)")
    ax.legend(ncol=min(len(modes) + 1, 5), fontsize=8, frameon=False, title="expert's modes",
              title_fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    _save(fig, path)

def fig_divergence_plane(path, mean, err, linthresh=0.1):
    pol = mean["policies"]
    fig = Figure(layout="constrained", figsize=(9, 5.5))
    ax = fig.subplots()
    hi = 1.0
    for i, p in enumerate(_policy_order(pol)):
        x, y = pol[p]["forward_kl"], pol[p]["reverse_kl"]
        xe, ye = _get(err, "policies", p, "forward_kl"), _get(err, "policies", p, "reverse_kl")
        color, marker = _policy_style(p, i)
        ax.errorbar(x, y, xerr=xe, yerr=ye, fmt=marker, color=color, capsize=3,
                    ms=11 if marker == "*" else 8, alpha=0.85, label=_policy_label(p))
        hi = max(hi, x, y)
    # symlog: logarithmic above linthresh, linear (and squeezed) around 0, where the expert's
    # own Monte Carlo estimates land, possibly slightly negative
    ax.set_xscale("symlog", linthresh=linthresh, linscale=0.4)
    ax.set_yscale("symlog", linthresh=linthresh, linscale=0.4)
    lim = (-0.5 * linthresh, hi * 3)
    ax.plot(lim, lim, color="0.8", lw=1, zorder=0)
    ax.set(xlim=lim, ylim=lim, xlabel="forward KL(β ‖ π)  (nats, symlog)",
           ylabel="reverse KL(π ‖ β)  (nats, symlog)", title="Each policy's distance to the expert")
    # x = forward KL, y = reverse KL: low forward / high reverse KL is upper left
    ax.text(0.03, 0.97, "mass-covering\n(low forward KL)", transform=ax.transAxes,
            va="top", color="C0", fontsize=10)
    ax.text(0.97, 0.03, "mode-seeking\n(low reverse KL)", transform=ax.transAxes,
            ha="right", va="bottom", color="C3", fontsize=10)
    fig.legend(loc="outside right center", fontsize=8, frameon=False)
    _save(fig, path)

def _bon_panel(ax, bon, bon_err, demo, demo_err, sft_gold=None, rl_point=None, title=""):
    for rm in [r for r in RM_NAMES if r in bon] + [r for r in bon if r not in RM_NAMES]:
        err = _get(bon_err, rm, "gold_reward")
        ax.errorbar(bon[rm]["kl"], bon[rm]["gold_reward"], yerr=err, capsize=2, ms=5,
                    label=RM_LABELS.get(rm, rm), **RM_STYLE.get(rm, {}))
    ax.axhline(demo, color="C1", ls="--", lw=1,
               label="demonstrations (mean, band = error bar)" if demo_err else "demonstrations (mean)")
    if demo_err:
        ax.axhspan(demo - demo_err, demo + demo_err, color="C1", alpha=0.12, lw=0)
    if sft_gold is not None:
        ax.axhline(sft_gold, color="C0", ls=":", lw=1, label="π_SFT (mean)")
    if rl_point is not None:
        ax.errorbar(*rl_point[:2], xerr=rl_point[2], yerr=rl_point[3], fmt="*", ms=14,
                    color="C2", label="RL on Init-SFT reward")
    # top axis: the N behind each KL, KL(Best-of-N ‖ π_SFT) = log N − (N−1)/N
    any_rm = next(iter(bon.values()))
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    top.set_xticks(any_rm["kl"], [str(n) for n in any_rm["n"]], fontsize=7)
    top.set_xlabel("N", fontsize=8)
    ax.set(xlabel="KL(Best-of-N ‖ π_SFT)  (nats, analytic)", ylabel="gold reward (mean)")
    ax.set_title(title, fontsize=10)

def fig_bon(path, mean, err):
    control = mean.get("control")
    panels = 2 if control and "bon" in control else 1
    fig = Figure(layout="constrained", figsize=(6.5 * panels, 5))
    axes = np.atleast_1d(fig.subplots(1, panels, sharey=True))
    rl = _get(mean, "policies", "rl_init_sft")
    rl_point = None
    if rl and rl.get("kl_sft") is not None:
        rl_point = (rl["kl_sft"], rl["gold_reward"], _get(err, "policies", "rl_init_sft", "kl_sft"),
                    _get(err, "policies", "rl_init_sft", "gold_reward"))
    _bon_panel(axes[0], mean["bon"], _get(err, "bon"), mean["demonstrations"]["gold_reward"],
               _get(err, "demonstrations", "gold_reward"), _get(mean, "policies", "sft", "gold_reward"),
               rl_point, "with the demonstrator's signature" if _get(mean, "config", "signature_p") != 0
               else "no demonstrator signature (signature_p = 0)")
    if panels == 2:
        _bon_panel(axes[1], control["bon"], _get(err, "control", "bon"),
                   control["demonstrations"]["gold_reward"],
                   _get(err, "control", "demonstrations", "gold_reward"),
                   title="control: signature switched off")
        axes[1].tick_params(labelleft=True)
    handles = {}  # one legend entry per label, whichever panel drew it
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=5, fontsize=8,
               frameon=False)
    fig.suptitle("Best-of-N on π_SFT samples, ranked by each reward model", fontsize=12)
    _save(fig, path)

def fig_calibration(path, mean, err, points):
    methods = [m for m in ADVERSARIAL if m in points and points[m].get("logit")]
    fig = Figure(layout="constrained", figsize=(4.2 * len(methods), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(methods)))
    for ax, m in zip(axes, methods):
        x, y = np.asarray(points[m]["true"]), np.asarray(points[m]["logit"])
        ax.scatter(x, y, s=8, alpha=0.5, color="C3", lw=0)
        # axline does not stretch the axes: the points fill the panel even when far from y = x
        ax.axline((0, 0), slope=1, color="0.3", lw=1, ls="--", label="y = x (perfect)")
        c, ce = _get(mean, "calibration", m) or {}, _get(err, "calibration", m) or {}
        ax.set_title(f"{_policy_label(m)}\nSpearman ρ = {_fmt(c.get('spearman'), ce.get('spearman'))}, "
                     f"Pearson r = {_fmt(c.get('pearson'), ce.get('pearson'))}", fontsize=9)
        ax.set(xlabel="exact log β(y) − log π(y)  (nats)", ylabel="discriminator logit  (nats)")
        ax.legend(fontsize=8, loc="best", frameon=False)
    fig.suptitle("Does the discriminator's logit estimate log β − log π? (first seed's samples)",
                 fontsize=11)
    _save(fig, path)

def _curve(ax, y, ys, **style):
    y = np.asarray(y, dtype=float)
    if len(y) == 0:
        return
    x = np.arange(len(y))
    ax.plot(x, y, **style)
    if ys is not None and np.any(np.asarray(ys) > 0):
        ys = np.asarray(ys, dtype=float)
        ax.fill_between(x, y - ys, y + ys, color=style.get("color"), alpha=0.2, lw=0)

def fig_curves(path, mean, err, err_label=""):
    curves, cerr = mean["curves"], _get(err, "curves") or {}
    adv, adv_err = curves.get("adversarial", {}), cerr.get("adversarial") or {}
    methods = [m for m in POLICY_LABELS if m in adv] + sorted(m for m in adv if m not in POLICY_LABELS)
    colors = {m: _policy_style(m, i)[0] for i, m in enumerate(methods)}
    fig = Figure(layout="constrained", figsize=(13, 7))
    axes = fig.subplots(2, 3)
    for ax, key, title in [(axes[0, 0], "pretrain_loss", "pretraining loss"),
                           (axes[0, 1], "sft_loss", "SFT loss (∝ forward KL + const)")]:
        _curve(ax, curves.get(key, []), cerr.get(key), color="C0")
        ax.set(title=title, xlabel="step", ylabel="cross-entropy (nats/token)")
    panels = [(axes[0, 2], "disc_acc_expert", "discriminator accuracy", "accuracy"),
              (axes[1, 0], "reward", "policy's mean reward", "reward per response (nats)"),
              (axes[1, 1], "kl_ref", "KL to the reference π_SFT", "KL(π ‖ π_SFT)  (nats)")]
    for ax, key, title, ylabel in panels:
        for m in methods:
            s = adv_err.get(m) or {}
            _curve(ax, adv[m].get(key, []), s.get(key), color=colors[m], label=_policy_label(m))
            if key == "disc_acc_expert":  # on policy samples: same colour, dashed
                _curve(ax, adv[m].get("disc_acc_policy", []), s.get("disc_acc_policy"),
                       color=colors[m], ls="--")
        ax.set(title=title, xlabel="iteration", ylabel=ylabel)
    axes[0, 2].axhline(0.5, color="0.7", lw=1)  # chance: the discriminator is fooled
    axes[0, 2].legend([Line2D([], [], color="0.3"), Line2D([], [], color="0.3", ls="--")],
                      ["on expert samples", "on policy samples"], fontsize=8, frameon=False)
    handles, labels = axes[1, 0].get_legend_handles_labels()
    axes[1, 2].axis("off")
    axes[1, 2].legend(handles, labels, loc="center", frameon=False, title="adversarial / RL run")
    fig.suptitle("Training curves" + (f" (mean over seeds, band = {err_label})" if err else ""),
                 fontsize=12)
    _save(fig, path)

def _save(fig, path):
    tmp = path + ".tmp"
    fig.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight")
    os.replace(tmp, path)  # atomic: an interrupted report never leaves half an image

# -----------------------------------------------------------------------------
# report.md

CAPTIONS = {  # what to look for; the effect checks above say whether this run shows it
    "fig_intuition.png": "a toy 1-D world: the forward-KL fit (what SFT does) spreads over both "
        "modes and puts mass between them; the reverse-KL fit (adversarial imitation) sits on one.",
    "fig_modes.png": "expected: π_SFT spreads over the expert's modes and leaks off-support "
        "(hatched); the reverse-KL policies concentrate on fewer modes, with less off-support.",
    "fig_divergence_plane.png": "expected: π_SFT upper left (low forward KL), the reverse-KL "
        "policies lower right (low reverse KL). Symlog axes, linear within ±0.1 nats, so the "
        "expert's own ≈ 0 (possibly slightly negative) Monte Carlo estimates sit at the origin.",
    "fig_bon.png": "expected: Init-SFT keeps rising past the demonstrations (orange line) as N "
        "grows, the reward models trained against demonstrations gain less, and in the control "
        "panel (no signature) that gap shrinks.",
    "fig_calibration.png": "points on the dashed y = x line mean the discriminator's logit is "
        "the exact log β − log π; the axes are not to the same scale, the titles give the rank and "
        "linear correlations (mean over seeds). The AIRL-form discriminators (log q_φ − log π) beside "
        "the scalar-head ablation: same objective, different discriminator.",
    "fig_curves.png": "a discriminator near 0.5 accuracy is being fooled; the policy's reward "
        "should rise while its KL to π_SFT stays bounded.",
}

def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]

def _bon_table(world, world_std, title):
    """The Best-of-N section for one world (the main one or the control)."""
    bon, bon_std = world["bon"], _get(world_std, "bon")
    rms = [r for r in RM_NAMES if r in bon] + [r for r in bon if r not in RM_NAMES]
    demo = _fmt(world["demonstrations"]["gold_reward"], _get(world_std, "demonstrations", "gold_reward"))
    lines = [f"## {title}", "", "Gold reward of the response ranked best among N samples of π_SFT, "
             f"KL(Best-of-N ‖ π_SFT) = log N − (N−1)/N. Demonstrations: {demo}.", ""]
    rows = []
    for i, (n, kl) in enumerate(zip(bon[rms[0]]["n"], bon[rms[0]]["kl"])):
        errs = [_get(bon_std, r, "gold_reward") for r in rms]
        rows.append([n, f"{kl:.3g}"] + [_fmt(bon[r]["gold_reward"][i], e[i] if e else None)
                                        for r, e in zip(rms, errs)])
    return lines + _table(["N", "KL (nats)"] + [RM_LABELS.get(r, r) for r in rms], rows) + [""]

def _learned_vs_optimum(runs, world, name):
    """Each learned classifier against its exact optimum, in one world: how well it ranks like the optimum on
    the Best-of-N samples, and the gold reward each reaches at the pre-registered N, with the paired interval
    of optimum − learned over seeds."""
    rows = []
    for rm, opt in LEARNED_VS_OPTIMUM.items():
        corr = [_get(world(r), "reward_models", f"{rm}_vs_optimum") for r in runs]
        if any(c is None for c in corr):
            continue
        sp = np.array([c["spearman"] for c in corr])
        cells = [f"{sp.mean():.2f}" + (f" ± {sp.std(ddof=1):.2f}" if len(sp) > 1 else "")]
        for n in PREREGISTERED_N:
            try:
                learned = [_bon_at(world(r), rm, n) for r in runs]
                optimum = [_bon_at(world(r), opt, n) for r in runs]
            except _Missing:
                cells.append("—")
                continue
            d = np.array(optimum) - np.array(learned)
            cells.append(f"{np.mean(learned):.3f} vs {np.mean(optimum):.3f}: {d.mean():+.3f} "
                         f"{_ci_text(paired_interval(d))}")
        rows.append([RM_LABELS.get(rm, rm), RM_LABELS.get(opt, opt), *cells])
    if not rows:
        return []
    return [f"Learned reward models against their exact optimum, {name}: Spearman ρ on the Best-of-N samples "
            "(mean ± std over seeds), and Best-of-N's gold reward, learned vs optimum: optimum − learned "
            "[paired 95% interval].", ""] + _table(
        ["learned", "its optimum", "Spearman ρ"] + [f"N = {n}" for n in PREREGISTERED_N], rows) + [""]

def _config_lines(config, width=100):
    """The resolved configuration as wrapped --key=value flags (empty values left out)."""
    lines, line = [], "python afd_mini.py"
    for key, value in config.items():
        if value is None or value == "":
            continue
        flag = f"--{key}={value}"
        if len(line) + len(flag) + 3 > width:
            lines.append(line + " \\")
            line = "   "
        line += " " + flag
    return lines + [line]

def _markdown(runs, mean, std, effects, figures, notes, err_label):
    k = len(runs)
    seeds = ", ".join(str(r.get("seed", "?")) for r in runs)
    lines = ["# afd-mini report", "",
             f"Seeds {seeds} (K = {k}). " + ("Every value in the tables is the mean ± sample standard "
             f"deviation (ddof = 1) over seeds; error bars and bands in the figures are {err_label}."
             if k > 1 else "One seed: no error bars."), "",
             "The resolved configuration (the first seed's); `python report.py OUT_DIR` rebuilds "
             "this report from the saved metrics.", "",
             "```", *_config_lines(runs[0].get("config", {})), "```", ""]

    pol = mean.get("policies", {})
    if pol:
        cols = [("forward_kl", "forward KL(β‖π)"), ("reverse_kl", "reverse KL(π‖β)"),
                ("kl_sft", "KL(π‖π_SFT)"), ("off_support", "off-support"),
                ("mode_entropy", "mode entropy"), ("distinct", "distinct"),
                ("gold_reward", "gold reward"), ("length", "length")]
        rows = [[f"{_policy_label(p)} (`{p}`)"] +
                [_fmt(pol[p][c], _get(std, "policies", p, c)) if c in pol[p] else "—" for c, _ in cols]
                for p in _policy_order(pol)]
        lines += ["## Policies", "", "Sampled on held-out prompts. KLs are exact-likelihood Monte "
                  "Carlo estimates in nats per response; mode entropy in nats; distinct = fraction of "
                  "distinct responses per prompt; length in tokens.", ""]
        lines += _table(["policy"] + [label for _, label in cols], rows) + [""]

    lines += _effects_section(effects, k)
    cal = mean.get("calibration", {})
    if cal:
        names = [m for m in ADVERSARIAL if m in cal] + sorted(m for m in cal if m not in ADVERSARIAL)
        rows = [[f"{_policy_label(m)} (`{m}`)"] +
                [_fmt(_get(cal, m, k), _get(std, "calibration", m, k)) for k in ("spearman", "pearson",
                                                                                  "auc_off_support")]
                for m in names]
        lines += ["## Discriminator calibration", "",
                  "The discriminator's logit h on its final policy's samples against the exact log β − log π "
                  "(summed over tokens for a token-level D). AUC: how well h separates the policy's on-support "
                  "samples (higher) from its off-support ones; 0.5 is chance.", ""]
        lines += _table(["method", "Spearman ρ", "Pearson r", "AUC on/off support"], rows) + [""]

    if mean.get("bon") and mean.get("demonstrations"):
        lines += _bon_table(mean, std, "Best-of-N")
        lines += _learned_vs_optimum(runs, lambda r: r, "the signed world")
    if _get(mean, "control", "bon") and _get(mean, "control", "demonstrations"):
        lines += _bon_table(mean["control"], _get(std, "control"),
                            "Best-of-N, control world (no demonstrator signature)")
        lines += _learned_vs_optimum(runs, lambda r: r.get("control", {}), "the control world")

    lines += ["## Figures", ""]
    bars = f" Error bars: {err_label}." if k > 1 else ""
    for name in figures:
        lines += [f"![{name}]({name})", "", f"*What to see:* {CAPTIONS[name]}{bars}", ""]

    stages = mean.get("stage_seconds", {})
    if stages:
        rows = [[st, _fmt(sec, _get(std, "stage_seconds", st))] for st, sec in stages.items()]
        rows.append(["**total**", f"{sum(stages.values()):.3g}"])
        lines += ["## Stage times", "", "Wall-clock seconds per seed.", ""]
        lines += _table(["stage", "seconds"], rows) + [""]

    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)

def _map(tree, fn):
    if isinstance(tree, dict):
        return {k: _map(v, fn) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map(v, fn) for v in tree]
    return fn(tree) if _is_number(tree) else tree

def error_bars(std, k):
    """The figures' error bars from the std tree over k seeds, and what they are in words:
    for k ≥ 3 the half-width of the 95% confidence interval of the mean, t_{0.975, k−1} · std / √k;
    for k = 2 the standard deviation (one degree of freedom gives no useful interval); none for k = 1."""
    if k < 2:
        return None, "none (one seed)"
    if k == 2:
        return std, "± one sample standard deviation over 2 seeds"
    scale = t_quantile_975(k - 1) / math.sqrt(k)
    return _map(std, lambda s: s * scale), f"95% confidence intervals of the mean over {k} seeds (Student's t)"

def _ci_text(ci):
    return "—" if ci is None else f"[{ci[0] + 0.0:.3g}, {ci[1] + 0.0:.3g}]"

def _effects_section(effects, k):
    lines = ["## Expected effects", "",
             "Each effect is judged on paired differences: for every seed, the difference between the two "
             "sides trained from that seed's π_SFT, written so that the expected direction is positive. "
             "**holds** when the 95% confidence interval of the mean difference (Student's t, K − 1 degrees "
             "of freedom) excludes 0 on the positive side, **does not hold** when it excludes 0 on the "
             "negative side, *inconclusive* when it contains 0. An effect with several conditions holds only "
             "if each does. \"seeds\" counts the seeds on which the difference is positive. Best-of-N effects "
             f"are judged at N = {', '.join(map(str, PREREGISTERED_N))}, fixed in advance.", ""]
    if k < 3:
        lines += [f"**{'One seed' if k == 1 else 'Two seeds'}: indicative only; run --seeds=5 for intervals.**", ""]
    word = {"holds": "**holds**", "does not hold": "**does not hold**", "inconclusive": "*inconclusive*",
            "indicative": "indicative", "not checked": "*not checked*"}
    rows = []
    for e in effects:
        if e["verdict"] == "not checked":
            detail = ["—", "—", "—", f"{e.get('missing', 'an input')} missing"]
        elif e["condition"] == "all conditions":
            detail = ["", "", "", f"{e['seeds_holding']}/{e['seeds']} seeds (all conditions)"]
        else:
            detail = [f"`{e['difference']}`", f"{e['diff_mean'] + 0.0:+.3g}", _ci_text(e["ci95"]),
                      f"{e['seeds_holding']}/{e['seeds']} seeds"]
        rows.append([e["effect"], e["condition"], *detail, word[e["verdict"]]])
    return lines + _table(["effect", "condition", "difference (expected > 0)", "mean", "95% CI", "positive on",
                           "verdict"], rows) + [""]

def write_report(out_dir, runs):
    """Aggregate the runs, judge the effects, draw the figures and write out_dir/report.md. Returns its path."""
    runs = sorted(runs, key=lambda r: r.get("seed", 0))
    mean, std = aggregate(runs)
    DISC_FORM["disc"] = {"scalar": "scalar-head"}.get(_get(mean, "config", "disc"), "AIRL-form")
    if len(runs) == 1:
        std = None  # one seed: no spread anywhere
    err, err_label = error_bars(std, len(runs))
    os.makedirs(out_dir, exist_ok=True)
    figures, notes = [], []
    draw = [("fig_intuition.png", lambda p: fig_intuition(p), []),
            ("fig_modes.png", lambda p: fig_modes(p, mean, err), ["policies"]),
            ("fig_divergence_plane.png", lambda p: fig_divergence_plane(p, mean, err), ["policies"]),
            ("fig_bon.png", lambda p: fig_bon(p, mean, err), ["bon", "demonstrations"]),
            ("fig_calibration.png",
             lambda p: fig_calibration(p, mean, err, runs[0]["calibration_points"]),
             ["calibration_points"]),
            ("fig_curves.png", lambda p: fig_curves(p, mean, err, err_label), ["curves"])]
    for name, draw_fn, needs in draw:
        missing = [k for k in needs if not mean.get(k)]
        if missing:
            notes.append(f"{name} skipped: {', '.join(missing)} missing from the metrics.")
            continue
        draw_fn(os.path.join(out_dir, name))
        figures.append(name)
    if "control" not in mean:
        notes.append("No control world in the metrics: the signature comparison is not made.")
    judged = effects(runs)
    path = os.path.join(out_dir, "report.md")
    with open(path + ".tmp", "w") as f:
        f.write(_markdown(runs, mean, std, judged, figures, notes, err_label))
    os.replace(path + ".tmp", path)
    return path

def load_runs(out_dir):
    """The per-seed metrics dicts saved under out_dir/seed_*/metrics.json."""
    runs = []
    for path in glob.glob(os.path.join(out_dir, "seed_*", "metrics.json")):
        with open(path) as f:
            runs.append(json.load(f))
    return sorted(runs, key=lambda r: r.get("seed", 0))

if __name__ == "__main__":
    assert len(sys.argv) == 2, "usage: python report.py OUT_DIR"
    runs = load_runs(sys.argv[1])
    assert runs, f"no seed_*/metrics.json under {sys.argv[1]}"
    print(write_report(sys.argv[1], runs))
