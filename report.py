"""
The report: turns the per-seed metrics of afd_mini.py into report.md and six figures.

afd_mini.py runs K seeds, writes <out_dir>/seed_<s>/metrics.json for each and then calls
write_report(out_dir, runs). This file
  1. aggregates the seeds (mean and sample standard deviation of every number),
  2. checks the effects the two papers predict, from the numbers, and says whether each holds,
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

from objectives import generalized_jsd

# the reverse-KL (mode-seeking) family; rkl_oracle is trained on the exact log β − log π
MODE_SEEKING = ["rkl_seq", "rkl_tok", "js", "rkl_oracle"]
ADVERSARIAL = ["rkl_seq", "rkl_tok", "js"]  # the ones with a learned discriminator
REWARD_MODELS = ["init_sft", "closed_form", "init_demo", "sft_demo", "pairwise_bt", "gold"]

POLICY_LABELS = {
    "expert": "expert π_β",
    "init": "π_init",
    "sft": "π_SFT (forward KL)",
    "rkl_seq": "reverse KL, sequence disc.",
    "rkl_tok": "reverse KL, token disc.",
    "js": "Jensen–Shannon (GAIL)",
    "rkl_oracle": "reverse KL, exact reward",
    "rl_init_sft": "RL on Init-SFT reward",
}
RM_LABELS = {
    "init_sft": "Init-SFT",
    "closed_form": "Init-SFT, closed form",
    "init_demo": "Init-Demo",
    "sft_demo": "SFT-Demo",
    "pairwise_bt": "preference (Bradley–Terry)",
    "gold": "gold reward (oracle)",
}
RM_STYLE = {  # Init-SFT stands out; the gold reward is the ceiling, drawn as a dotted reference
    "init_sft": dict(color="C0", lw=2.5, marker="o"),
    "closed_form": dict(color="C0", lw=1.2, marker="o", ls="--", mfc="white"),
    "init_demo": dict(color="C1", lw=1.5, marker="s"),
    "sft_demo": dict(color="C3", lw=1.5, marker="^"),
    "pairwise_bt": dict(color="C2", lw=1.5, marker="D"),
    "gold": dict(color="black", lw=1.2, marker=".", ls=":"),
}
DPI = 120

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
# the expected effects, checked from the numbers

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

def _effect(name, holds, detail):
    return {"name": name, "holds": holds, "detail": detail}

def _skipped(name, missing):
    # holds=None: the inputs were not in the metrics, so nothing was checked
    return _effect(name, None, f"not checked: {missing} missing from the metrics")

def _bon_gain(world, world_std, rm):
    """gain = max over N of the gold reward − the gold reward at the smallest N (N = 1, i.e. π_SFT).
    world is the metrics tree (or its "control" part). Returns (gain, detail) or None."""
    n, g = _get(world, "bon", rm, "n"), _get(world, "bon", rm, "gold_reward")
    if not n or not g:
        return None
    gs = _get(world_std, "bon", rm, "gold_reward") or [None] * len(g)
    best = int(np.argmax(g))
    detail = (f"{RM_LABELS.get(rm, rm)}: {_fmt(g[best], gs[best])} at N={n[best]} − "
              f"{_fmt(g[0], gs[0])} at N={n[0]} = {g[best] - g[0]:+.3g}")
    return g[best] - g[0], detail

def _gain_checks(world, world_std, prefix):
    """Init-Demo and SFT-Demo gain less than Init-SFT. Returns (checks, gap), gap = how much more
    Init-SFT gains than the better of the two demonstration-based reward models."""
    checks, gains, ref = [], [], _bon_gain(world, world_std, "init_sft")
    for rm in ["init_demo", "sft_demo"]:
        name = f"{prefix}: the {RM_LABELS[rm]} reward model gains less than Init-SFT under Best-of-N"
        other = _bon_gain(world, world_std, rm)
        if ref is None or other is None:
            checks.append(_skipped(name, f"bon.init_sft or bon.{rm}"))
            continue
        gains.append(other[0])
        checks.append(_effect(name, bool(other[0] < ref[0]), f"{other[1]}; {ref[1]}"))
    gap = ref[0] - max(gains) if len(gains) == 2 else None
    return checks, gap

def check_effects(mean, std=None):
    """
    The effects the papers predict, each judged on the mean over seeds. Returns a list of
    {name, holds, detail}: holds is True / False, or None when its inputs are missing;
    detail prints the numbers used (mean ± std when std is given).
    """
    pol = mean.get("policies", {})
    s = (lambda *k: _get(std, *k)) if std is not None else (lambda *k: None)
    effects = []

    # forward KL is mass-covering: SFT, its minimiser, has the lowest KL(β ‖ π)
    for p in MODE_SEEKING:
        name = f"mass-covering: π_SFT has lower forward KL than {p}"
        if "sft" not in pol or p not in pol:
            effects.append(_skipped(name, f"policies.sft or policies.{p}"))
            continue
        a, b = pol["sft"]["forward_kl"], pol[p]["forward_kl"]
        effects.append(_effect(name, bool(a < b),
            f"KL(β‖π): sft {_fmt(a, s('policies', 'sft', 'forward_kl'))} vs "
            f"{p} {_fmt(b, s('policies', p, 'forward_kl'))} nats"))

    # reverse KL is mode-seeking: less KL(π ‖ β), fewer responses off the expert's support,
    # and the mass concentrated on fewer modes (lower mode entropy) than SFT
    props = [("reverse_kl", "KL(π‖β)", " nats"), ("off_support", "off-support", ""),
             ("mode_entropy", "mode entropy", " nats")]
    for p in MODE_SEEKING:
        name = f"mode-seeking: {p} has lower reverse KL, off-support rate and mode entropy than π_SFT"
        if "sft" not in pol or p not in pol:
            effects.append(_skipped(name, f"policies.sft or policies.{p}"))
            continue
        parts, holds = [], True
        for key, label, unit in props:
            a, b = pol[p][key], pol["sft"][key]
            holds = holds and a < b
            parts.append(f"{label} {_fmt(a, s('policies', p, key))} vs "
                         f"{_fmt(b, s('policies', 'sft', key))}{unit} ({'yes' if a < b else 'no'})")
        effects.append(_effect(name, bool(holds), "; ".join(parts)))

    # extrapolation: Best-of-N (N ≥ 2; N = 1 is π_SFT itself) on the Init-SFT reward model goes
    # past the demonstrator
    name = "extrapolation: Best-of-N with the Init-SFT reward model beats the demonstrations"
    n, g = _get(mean, "bon", "init_sft", "n"), _get(mean, "bon", "init_sft", "gold_reward")
    demo = _get(mean, "demonstrations", "gold_reward")
    if not n or not g or demo is None:
        effects.append(_skipped(name, "bon.init_sft or demonstrations.gold_reward"))
    else:
        gs = s("bon", "init_sft", "gold_reward") or [None] * len(g)
        best = max((i for i in range(len(n)) if n[i] > 1), key=lambda i: g[i], default=0)
        above = [nn for nn, gg in zip(n, g) if nn > 1 and gg > demo]
        detail = (f"gold reward {_fmt(g[best], gs[best])} at N={n[best]} (its best) vs "
                  f"demonstrations {_fmt(demo, s('demonstrations', 'gold_reward'))}: "
                  f"{g[best] - demo:+.3g}")
        detail += f"; above them from N={above[0]}" if above else "; never above them for N ≥ 2"
        effects.append(_effect(name, bool(above), detail))

    # heterogeneity: reward models trained against the demonstrations learn their signature
    checks, gap = _gain_checks(mean, std, "heterogeneity")
    effects += checks
    if "control" in mean:
        checks, control_gap = _gain_checks(mean["control"], _get(std, "control"), "control world")
        effects += checks
        name = "the Init-SFT advantage shrinks without the demonstrator's signature"
        if gap is None or control_gap is None:
            effects.append(_skipped(name, "a Best-of-N gain"))
        else:
            effects.append(_effect(name, bool(control_gap < gap),
                f"Init-SFT's gain − the better demonstration-based gain: {gap:+.3g} with the "
                f"signature, {control_gap:+.3g} without"))
    return effects

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
# figures 2-6: from the aggregated metrics

def _policy_order(policies):
    known = [p for p in ["expert", "init", "sft", *MODE_SEEKING, "rl_init_sft"] if p in policies]
    return known + sorted(p for p in policies if p not in known)

def _policy_label(p):
    if p in POLICY_LABELS:
        return POLICY_LABELS[p]
    if p.startswith("bon_") and "@" in p:  # e.g. bon_init_sft@16
        rm, n = p[4:].split("@")
        return f"Best-of-{n}, {RM_LABELS.get(rm, rm)} RM"
    return p

POLICY_STYLE = {  # (colour, marker), the same in every figure
    "expert": ("black", "*"), "init": ("0.55", "o"), "sft": ("C0", "o"), "rkl_seq": ("C3", "s"),
    "rkl_tok": ("C1", "^"), "js": ("C4", "D"), "rkl_oracle": ("C5", "v"), "rl_init_sft": ("C2", "P"),
}

def _policy_style(p, i=0):
    return POLICY_STYLE.get(p, (["C9", "C8", "C6", "C7"][i % 4], "X"))

def fig_modes(path, mean, std):
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
        h, hs = pol[p]["mode_entropy"], _get(std, "policies", p, "mode_entropy")
        ax.text(1.02, i, f"H = {_fmt(h, hs)}", va="center", fontsize=8)
    ax.set_yticks(y, [_policy_label(p) for p in names])
    ax.set(xlim=(0, 1), xlabel="fraction of sampled responses",
           title="Where each policy puts its mass (H = mode entropy, nats)")
    ax.legend(ncol=min(len(modes) + 1, 5), fontsize=8, frameon=False, title="expert's modes",
              title_fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    _save(fig, path)

def fig_divergence_plane(path, mean, std, linthresh=0.1):
    pol = mean["policies"]
    fig = Figure(layout="constrained", figsize=(9, 5.5))
    ax = fig.subplots()
    hi = 1.0
    for i, p in enumerate(_policy_order(pol)):
        x, y = pol[p]["forward_kl"], pol[p]["reverse_kl"]
        xe, ye = _get(std, "policies", p, "forward_kl"), _get(std, "policies", p, "reverse_kl")
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

def _bon_panel(ax, bon, bon_std, demo, demo_std, sft_gold=None, rl_point=None, title=""):
    for rm in [r for r in REWARD_MODELS if r in bon] + [r for r in bon if r not in REWARD_MODELS]:
        err = _get(bon_std, rm, "gold_reward")
        ax.errorbar(bon[rm]["kl"], bon[rm]["gold_reward"], yerr=err, capsize=2, ms=5,
                    label=RM_LABELS.get(rm, rm), **RM_STYLE.get(rm, {}))
    ax.axhline(demo, color="C1", ls="--", lw=1,
               label="demonstrations (mean ± std)" if demo_std else "demonstrations (mean)")
    if demo_std:
        ax.axhspan(demo - demo_std, demo + demo_std, color="C1", alpha=0.12, lw=0)
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

def fig_bon(path, mean, std):
    control = mean.get("control")
    panels = 2 if control and "bon" in control else 1
    fig = Figure(layout="constrained", figsize=(6.5 * panels, 5))
    axes = np.atleast_1d(fig.subplots(1, panels, sharey=True))
    rl = _get(mean, "policies", "rl_init_sft")
    rl_point = None
    if rl and rl.get("kl_sft") is not None:
        rl_point = (rl["kl_sft"], rl["gold_reward"], _get(std, "policies", "rl_init_sft", "kl_sft"),
                    _get(std, "policies", "rl_init_sft", "gold_reward"))
    _bon_panel(axes[0], mean["bon"], _get(std, "bon"), mean["demonstrations"]["gold_reward"],
               _get(std, "demonstrations", "gold_reward"), _get(mean, "policies", "sft", "gold_reward"),
               rl_point, "with the demonstrator's signature" if _get(mean, "config", "signature_p") != 0
               else "no demonstrator signature (signature_p = 0)")
    if panels == 2:
        _bon_panel(axes[1], control["bon"], _get(std, "control", "bon"),
                   control["demonstrations"]["gold_reward"],
                   _get(std, "control", "demonstrations", "gold_reward"),
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

def fig_calibration(path, mean, std, points):
    methods = [m for m in ADVERSARIAL if m in points and points[m].get("logit")]
    fig = Figure(layout="constrained", figsize=(4.2 * len(methods), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(methods)))
    for ax, m in zip(axes, methods):
        x, y = np.asarray(points[m]["true"]), np.asarray(points[m]["logit"])
        ax.scatter(x, y, s=8, alpha=0.5, color="C3", lw=0)
        # axline does not stretch the axes: the points fill the panel even when far from y = x
        ax.axline((0, 0), slope=1, color="0.3", lw=1, ls="--", label="y = x (perfect)")
        r, rs = _get(mean, "calibration", m), _get(std, "calibration", m)
        ax.set_title(f"{_policy_label(m)}\nPearson r = {_fmt(r, rs)}", fontsize=10)
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

def fig_curves(path, mean, std):
    curves, cstd = mean["curves"], _get(std, "curves") or {}
    adv, adv_std = curves.get("adversarial", {}), cstd.get("adversarial") or {}
    methods = [m for m in [*MODE_SEEKING, "rl_init_sft"] if m in adv] + \
              sorted(m for m in adv if m not in MODE_SEEKING + ["rl_init_sft"])
    colors = {m: _policy_style(m, i)[0] for i, m in enumerate(methods)}
    fig = Figure(layout="constrained", figsize=(13, 7))
    axes = fig.subplots(2, 3)
    for ax, key, title in [(axes[0, 0], "pretrain_loss", "pretraining loss"),
                           (axes[0, 1], "sft_loss", "SFT loss (∝ forward KL + const)")]:
        _curve(ax, curves.get(key, []), cstd.get(key), color="C0")
        ax.set(title=title, xlabel="step", ylabel="cross-entropy (nats/token)")
    panels = [(axes[0, 2], "disc_acc_expert", "discriminator accuracy", "accuracy"),
              (axes[1, 0], "reward", "policy's mean reward", "reward per response (nats)"),
              (axes[1, 1], "kl_ref", "KL to the reference π_SFT", "KL(π ‖ π_SFT)  (nats)")]
    for ax, key, title, ylabel in panels:
        for m in methods:
            s = adv_std.get(m) or {}
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
    fig.suptitle("Training curves" + (" (mean over seeds, band = ± std)" if std else ""),
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
        "the exact log β − log π; the axes are not to the same scale, the title gives the "
        "correlation (over seeds).",
    "fig_curves.png": "a discriminator near 0.5 accuracy is being fooled; the policy's reward "
        "should rise while its KL to π_SFT stays bounded.",
}

def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]

def _bon_table(world, world_std, title):
    """The Best-of-N section for one world (the main one or the control)."""
    bon, bon_std = world["bon"], _get(world_std, "bon")
    rms = [r for r in REWARD_MODELS if r in bon] + [r for r in bon if r not in REWARD_MODELS]
    demo = _fmt(world["demonstrations"]["gold_reward"], _get(world_std, "demonstrations", "gold_reward"))
    lines = [f"## {title}", "", "Gold reward of the response ranked best among N samples of π_SFT, "
             f"KL(Best-of-N ‖ π_SFT) = log N − (N−1)/N. Demonstrations: {demo}.", ""]
    rows = []
    for i, (n, kl) in enumerate(zip(bon[rms[0]]["n"], bon[rms[0]]["kl"])):
        errs = [_get(bon_std, r, "gold_reward") for r in rms]
        rows.append([n, f"{kl:.3g}"] + [_fmt(bon[r]["gold_reward"][i], e[i] if e else None)
                                        for r, e in zip(rms, errs)])
    return lines + _table(["N", "KL (nats)"] + [RM_LABELS.get(r, r) for r in rms], rows) + [""]

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

def _markdown(runs, mean, std, effects, figures, notes):
    k = len(runs)
    seeds = ", ".join(str(r.get("seed", "?")) for r in runs)
    lines = ["# afd-mini report", "",
             f"Seeds {seeds} (K = {k}). " + ("Every value is the mean ± sample standard deviation "
             "(ddof = 1) over seeds; error bars and bands in the figures are the same std."
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

    verdict = {True: "**holds**", False: "**does not hold**", None: "*not checked*"}
    lines += ["## Expected effects", "", "Each judged on the means; the numbers used follow it.", ""]
    lines += [f"- {verdict[e['holds']]}: {e['name']}. {e['detail']}." for e in effects] + [""]

    if mean.get("bon") and mean.get("demonstrations"):
        lines += _bon_table(mean, std, "Best-of-N")
        corr = _get(mean, "reward_models", "init_sft_vs_closed_form_corr")
        if corr is not None:
            lines += ["The learned Init-SFT reward model against its closed form log π_SFT − log π_init "
                      f"on the same samples: Pearson r = "
                      f"{_fmt(corr, _get(std, 'reward_models', 'init_sft_vs_closed_form_corr'))}.", ""]
    if _get(mean, "control", "bon") and _get(mean, "control", "demonstrations"):
        lines += _bon_table(mean["control"], _get(std, "control"),
                            "Best-of-N, control world (no demonstrator signature)")

    lines += ["## Figures", ""]
    for name in figures:
        lines += [f"![{name}]({name})", "", f"*What to see:* {CAPTIONS[name]}", ""]

    stages = mean.get("stage_seconds", {})
    if stages:
        rows = [[st, _fmt(sec, _get(std, "stage_seconds", st))] for st, sec in stages.items()]
        rows.append(["**total**", f"{sum(stages.values()):.3g}"])
        lines += ["## Stage times", "", "Wall-clock seconds per seed.", ""]
        lines += _table(["stage", "seconds"], rows) + [""]

    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)

def write_report(out_dir, runs):
    """Aggregate the runs, draw the figures and write out_dir/report.md. Returns its path."""
    runs = sorted(runs, key=lambda r: r.get("seed", 0))
    mean, std = aggregate(runs)
    if len(runs) == 1:
        std = None  # one seed: no error bars anywhere
    os.makedirs(out_dir, exist_ok=True)
    figures, notes = [], []
    draw = [("fig_intuition.png", lambda p: fig_intuition(p), []),
            ("fig_modes.png", lambda p: fig_modes(p, mean, std), ["policies"]),
            ("fig_divergence_plane.png", lambda p: fig_divergence_plane(p, mean, std), ["policies"]),
            ("fig_bon.png", lambda p: fig_bon(p, mean, std), ["bon", "demonstrations"]),
            ("fig_calibration.png",
             lambda p: fig_calibration(p, mean, std, runs[0]["calibration_points"]),
             ["calibration_points"]),
            ("fig_curves.png", lambda p: fig_curves(p, mean, std), ["curves"])]
    for name, draw_fn, needs in draw:
        missing = [k for k in needs if not mean.get(k)]
        if missing:
            notes.append(f"{name} skipped: {', '.join(missing)} missing from the metrics.")
            continue
        draw_fn(os.path.join(out_dir, name))
        figures.append(name)
    if "control" not in mean:
        notes.append("No control world in the metrics: the signature comparison is not made.")
    effects = check_effects(mean, std)
    path = os.path.join(out_dir, "report.md")
    with open(path + ".tmp", "w") as f:
        f.write(_markdown(runs, mean, std, effects, figures, notes))
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
