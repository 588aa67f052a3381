"""
figures.py: the eight figures of the report, from the aggregated metrics (metrics.py) of a run. report.py calls
them; each takes the output path, the mean tree and the tree of error-bar half-widths (report.error_bars).

  fig_intuition          forward vs reverse KL on a toy 1-D problem (needs no metrics)
  fig_modes              where each policy puts its mass: the expert's modes and off-support
  fig_divergence_plane   every policy's forward KL against its reverse KL
  fig_bon                Best-of-N's gold reward against its KL, for every reward
  fig_bon_picks          what Best-of-N picks as N grows, and the selection rules that get past the demonstrations
  fig_extrapolation      the extrapolated policy π_α: gold reward and KL to the expert against α
  fig_calibration        each discriminator's logit against the exact log β − log π
  fig_curves             the training curves
  fig_displacement       DPO and SPIN: the chosen and rejected log-likelihoods per step, and the exact probe

and a sweep's figure, fig_sweep: every effect's paired interval at every point of the sweep (report.write_sweep).
"""
import math
import os

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no global state, no display, Agg by default
from matplotlib.lines import Line2D

from methods import ADVERSARIAL, ALPHAS, PAPER_REWARDS, POLICIES, POLICY, REWARD_MODELS
from metrics import REGIME_MEASURES, REGIME_METHODS, fmt, get, regime_map
from objectives import generalized_jsd

# every method, label and style comes from the one table, methods.py
POLICY_LABELS = {p.name: p.label for p in POLICIES}
POLICY_STYLE = {p.name: p.style for p in POLICIES}   # (colour, marker), the same in every figure
RM_NAMES = [r.name for r in REWARD_MODELS]
RM_LABELS = {r.name: r.label for r in REWARD_MODELS}
RM_STYLE = {r.name: r.style for r in REWARD_MODELS}   # Init-SFT stands out; gold is the dotted ceiling
DPI = 120

# -----------------------------------------------------------------------------
# fig_intuition: forward vs reverse KL on a toy 1-D problem (needs no metrics)

def fit_gaussian(target_probs, grid, direction, steps=200, lr=0.2):
    """
    Fit a Gaussian discretised on `grid` to `target_probs` by gradient descent on (mean, log std).
    direction "forward" minimises KL(target ‖ fit) (what SFT does), "reverse" KL(fit ‖ target)
    (what adversarial imitation does), a number w in [0, 1] the generalised JSD_w(target ‖ fit) between
    them (0.5: the Jensen–Shannon divergence of GAIL, exercise 13). All start at the same point: narrow and
    right of centre, so that a symmetric target does not leave the reverse fit balanced between two modes.
    Returns (mu, sigma) as floats.
    """
    w = {"forward": 0.0, "reverse": 1.0}[direction] if isinstance(direction, str) else float(direction)
    grid = torch.as_tensor(grid, dtype=torch.float64)
    target_logits = torch.as_tensor(target_probs, dtype=torch.float64).clamp_min(1e-300).log()
    span = float(grid.max() - grid.min())
    params = torch.tensor([float(grid.mean()) + 0.1 * span, math.log(0.05 * span)],
                          dtype=torch.float64, requires_grad=True)  # (mu, log sigma)
    for _ in range(steps):
        mu, sigma = params[0], params[1].exp()
        fit_logits = -0.5 * ((grid - mu) / sigma) ** 2  # softmax normalises on the grid
        # generalized_jsd(p, q, w=0) = KL(p ‖ q), w=1: KL(q ‖ p); p = target, q = fit
        loss = generalized_jsd(target_logits[None], fit_logits[None], w).mean()
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
# the other seven, from the aggregated metrics (and fig_sweep, from a sweep's sweep.json). err is the tree of
# error-bar half-widths (report.error_bars)

def _policy_order(policies):
    known = [p for p in POLICY_LABELS if p in policies]
    return known + sorted(p for p in policies if p not in known)

def policy_label(p, metrics=None):
    """A policy's label in figures and tables; {disc} becomes the discriminator form of the run (its --disc, read
    from the metrics' config)."""
    if p in POLICY_LABELS:
        return POLICY_LABELS[p].format(disc={"scalar": "scalar-head"}.get(get(metrics, "config", "disc"), "AIRL-form"))
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
        h, hs = pol[p]["mode_entropy"], get(err, "policies", p, "mode_entropy")
        ax.text(1.02, i, f"H = {fmt(h, hs)}", va="center", fontsize=8)
    ax.set_yticks(y, [policy_label(p, mean) for p in names])
    ax.set(xlim=(0, 1), xlabel="fraction of sampled responses",
           title="Where each policy puts its mass (H = mode entropy, nats)")
    ax.legend(ncol=min(len(modes) + 1, 5), fontsize=8, frameon=False, title="expert's modes",
              title_fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    _save(fig, path)

SLIDE_POLICIES = ("expert", "init", "sft", "rkl_seq", "js", "rkl_oracle", "pg_control")   # the handout's plane


def fig_divergence_plane(path, mean, err, linthresh=0.1, only=None):
    """Each policy's forward KL against its reverse KL; only: those policies (fig_plane_slide.png: SLIDE_POLICIES,
    slide-sized, the legend inside)."""
    pol = mean["policies"]
    fig = Figure(layout="constrained", figsize=(9, 5.5) if only is None else (6.4, 4.8))
    ax = fig.subplots()
    hi = 1.0
    for i, p in enumerate(p for p in _policy_order(pol) if only is None or p in only):
        x, y = pol[p]["forward_kl"], pol[p]["reverse_kl"]
        xe, ye = get(err, "policies", p, "forward_kl"), get(err, "policies", p, "reverse_kl")
        color, marker = _policy_style(p, i)
        ax.errorbar(x, y, xerr=xe, yerr=ye, fmt=marker, color=color, capsize=3,
                    ms=11 if marker == "*" else 8, alpha=0.85, label=policy_label(p, mean))
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
    if only is None:
        fig.legend(loc="outside right center", fontsize=8, frameon=False)
    else:
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.14), fontsize=9, frameon=False)   # the empty corner
    _save(fig, path)

def _bon_panel(ax, bon, bon_err, demo, demo_err, sft_gold=None, rl_point=None, title=""):
    for rm in [r for r in PAPER_REWARDS if r in bon]:   # the papers' reward models; the baselines: fig_bon_picks
        err = get(bon_err, rm, "gold_reward")
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
    # top axis: the N behind each KL, KL(Best-of-N ‖ π_SFT) = best_of_n_kl(N)
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
    rl = get(mean, "policies", "rl_init_sft")
    rl_point = None
    if rl and rl.get("kl_sft") is not None:
        rl_point = (rl["kl_sft"], rl["gold_reward"], get(err, "policies", "rl_init_sft", "kl_sft"),
                    get(err, "policies", "rl_init_sft", "gold_reward"))
    _bon_panel(axes[0], mean["bon"], get(err, "bon"), mean["demonstrations"]["gold_reward"],
               get(err, "demonstrations", "gold_reward"), get(mean, "policies", "sft", "gold_reward"),
               rl_point, "with the demonstrator's signature" if get(mean, "config", "signature_p") != 0
               else "no demonstrator signature (signature_p = 0)")
    if panels == 2:
        _bon_panel(axes[1], control["bon"], get(err, "control", "bon"),
                   control["demonstrations"]["gold_reward"],
                   get(err, "control", "demonstrations", "gold_reward"),
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

# the selection rules fig_bon_picks follows: (table, reward, label, colour); the plausible ones dashed
PICK_RULES = [("bon", "init_sft", "learned Init-SFT", "C0"), ("bon", "init_sft_optimum", "Init-SFT optimum (exact)", "C3"),
              ("bon", "sft_likelihood", "log π_SFT alone (exact)", "C2"), ("bon", "gold", "gold reward (ceiling)", "black"),
              ("bon_plausible", "init_sft", "learned Init-SFT, plausible only", "C0"),
              ("bon_plausible", "init_sft_optimum", "Init-SFT optimum, plausible only", "C3")]

def fig_bon_picks(path, mean, err):
    """What Best-of-N picks as N grows, per selection rule: the picks' gold reward, off-support rate, length,
    signature rate and share of the expert's long steps mode. The mechanism behind fig_bon's curves."""
    keys = [("gold_reward", "gold reward of the picks"), ("off_support", "off-support rate of the picks"),
            ("length", "length of the picks (tokens)"), ("signature", "signature rate of the picks"),
            ("mode_steps", "share of the steps mode"), ("mode_terse", "share of the terse mode")]
    fig = Figure(layout="constrained", figsize=(13, 7.5))
    for ax, (key, title) in zip(fig.subplots(2, 3).flat, keys):
        for table, rm, label, color in PICK_RULES:
            curve = get(mean, table, rm)
            if not curve or key not in curve:
                continue
            ax.errorbar(curve["n"], curve[key], yerr=get(err, table, rm, key), capsize=2, ms=4, lw=1.5, marker="o",
                        color=color, ls="--" if table == "bon_plausible" else "-", label=label)
        if key == "gold_reward":
            ax.axhline(mean["demonstrations"]["gold_reward"], color="C1", ls=":", lw=1, label="demonstrations")
        ax.set_xscale("log", base=2)
        ax.set(title=title, xlabel="N (candidates from π_SFT)")
    handles = {}
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    tau = get(mean, "config", "bon_plausibility")
    fig.suptitle(f"What Best-of-N picks as N grows (dashed: among candidates within τ = {tau} nats of the likeliest)",
                 fontsize=12)
    _save(fig, path)

def fig_extrapolation(path, mean, err):
    """The extrapolated policy π_α ∝ π_SFT^{1+α} π_init^{−α} (no reward model, no training) against α: α = 0 is
    π_SFT. Does the expert lie beyond π_SFT along the direction π_init → π_SFT, and how far?"""
    pol, pol_err = mean["policies"], get(err, "policies") or {}
    names = ["sft"] + [f"extrapolated_{a:g}" for a in ALPHAS if f"extrapolated_{a:g}" in pol]
    alphas = [0.0] + [a for a in ALPHAS if f"extrapolated_{a:g}" in pol]
    fig = Figure(layout="constrained", figsize=(13, 4))
    panels = [(["gold_reward"], "gold reward"), (["forward_kl", "reverse_kl"], "KL to the expert (nats)"),
              (["off_support"], "off-support rate")]
    for ax, (keys, ylabel) in zip(fig.subplots(1, 3), panels):
        for key in keys:
            ax.errorbar(alphas, [pol[p][key] for p in names], yerr=[get(pol_err, p, key) or 0 for p in names],
                        marker="o", capsize=3, label={"forward_kl": "forward KL(β ‖ π_α)",
                                                      "reverse_kl": "reverse KL(π_α ‖ β)"}.get(key, key))
            if key in pol.get("expert", {}) and key != "reverse_kl":
                ax.axhline(pol["expert"][key], color="black", ls=":", lw=1, label="expert")
        if keys == ["gold_reward"]:
            ax.axhline(mean["demonstrations"]["gold_reward"], color="C1", ls="--", lw=1, label="demonstrations")
        ax.set(xlabel="α (0 = π_SFT)", ylabel=ylabel)
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle("Extrapolating past π_SFT without a reward model: π_α ∝ π_SFT^(1+α) · π_init^(−α), token by token",
                 fontsize=12)
    _save(fig, path)

def fig_sweep(path, sweep):
    """Each effect's mean paired difference and 95% interval (expected > 0) against the swept knob, one panel per
    effect, one line per condition (and per value of a second knob)."""
    knob, *second = sweep["knobs"]
    effects = list(dict.fromkeys(e["effect"] for e in sweep["points"][0]["effects"] if e["condition"] != "all conditions"))
    cols = 4
    rows = -(-len(effects) // cols)
    fig = Figure(layout="constrained", figsize=(4.2 * cols, 2.6 * rows))
    axes = list(np.atleast_1d(fig.subplots(rows, cols)).flat)
    groups = {}
    for i, p in enumerate(sweep["points"]):
        groups.setdefault(tuple(p["values"][k] for k in second), []).append(p)
    for ax, effect in zip(axes, effects):
        for g, (other, points) in enumerate(groups.items()):
            xs = list(range(len(points)))
            conds = [e["condition"] for e in points[0]["effects"]
                     if e["effect"] == effect and e["condition"] != "all conditions"]
            for c, cond in enumerate(conds):
                rows_ = [next(e for e in p["effects"] if e["effect"] == effect and e["condition"] == cond) for p in points]
                y = [r["diff_mean"] if r["diff_mean"] is not None else np.nan for r in rows_]
                lo = [y_ - r["ci95"][0] if r["ci95"] else 0 for y_, r in zip(y, rows_)]
                hi = [r["ci95"][1] - y_ if r["ci95"] else 0 for y_, r in zip(y, rows_)]
                label = cond + (f", {', '.join(f'{k}={v}' for k, v in zip(second, other))}" if second else "")
                ax.errorbar(np.array(xs) + 0.06 * (c + len(conds) * g), y, yerr=[lo, hi], marker="o", capsize=3,
                            label=label)
            ax.set_xticks(xs, [str(p["values"][knob]) for p in points])
        ax.axhline(0, color="0.5", lw=1)
        ax.set_title(effect if len(effect) < 60 else effect[:57] + "...", fontsize=7)
        ax.set_xlabel(knob, fontsize=8)
        ax.legend(fontsize=6, frameon=False)
    for ax in axes[len(effects):]:   # the panels left over
        ax.axis("off")
    fig.suptitle(f"Every expected effect against {knob} (mean paired difference over seeds, 95% interval; > 0: "
                 "the effect's expected direction)", fontsize=11)
    _save(fig, path)

def fig_calibration(path, mean, err, points):
    methods = [m for m in ADVERSARIAL if m in points and points[m].get("logit")]
    fig = Figure(layout="constrained", figsize=(4.2 * len(methods), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(methods)))
    for ax, m in zip(axes, methods):
        x, y = np.asarray(points[m].get("target", points[m]["true"])), np.asarray(points[m].get("learned",
                                                                                                  points[m]["logit"]))
        ax.scatter(x, y, s=8, alpha=0.5, color="C3", lw=0)
        # axline does not stretch the axes: the points fill the panel even when far from y = x
        ax.axline((0, 0), slope=1, color="0.3", lw=1, ls="--", label="y = x (perfect)")
        c, ce = get(mean, "calibration", m) or {}, get(err, "calibration", m) or {}
        ax.set_title(f"{policy_label(m, mean)}\nlearned: Spearman ρ = "
                     f"{fmt(c.get('spearman_learned'), ce.get('spearman_learned'))} (whole logit: "
                     f"{fmt(c.get('spearman'), ce.get('spearman'))})", fontsize=9)
        scalar = points[m].get("learned") == points[m]["logit"]   # a scalar head: all of h is learned
        ax.set(xlabel=f"target: exact log β(y) − log {'π' if scalar else 'π_SFT'}(y)  (nats)",
               ylabel="learned: h(y)" if scalar else "learned: log q_φ(y) − log π_SFT(y)")
        ax.legend(fontsize=8, loc="best", frameon=False)
    fig.suptitle("What did the discriminator learn? log q_φ − log π_SFT against its target log β − log π_SFT "
                 "(first seed's samples; a scalar head: h against log β − log π)", fontsize=11)
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
    curves, cerr = mean["curves"], get(err, "curves") or {}
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
            _curve(ax, adv[m].get(key, []), s.get(key), color=colors[m], label=policy_label(m, mean))
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

def fig_displacement(path, mean, err):
    """DPO's loss and the likelihoods: per step, how far log π has moved from the reference on the chosen (solid)
    and rejected (dashed) responses, for dpo and for each SPIN iteration (from its own π_t); and the exact probe
    (off-support rate, the support's share of the forward KL) before and after each run."""
    curves, cerr = mean["curves"], get(err, "curves") or {}
    disp, derr = mean["displacement"], get(err, "displacement") or {}
    fig = Figure(layout="constrained", figsize=(13, 7))
    axes = fig.subplots(2, 2)
    for ax, names, title in [(axes[0, 0], ["dpo"], "DPO on the preference pairs"),
                             (axes[0, 1], ["spin", "spin_short"], "SPIN: demonstration vs own sample")]:
        for m in names:
            c, e = curves.get(m, {}), cerr.get(m) or {}
            color = POLICY_STYLE[m][0]
            _curve(ax, c.get("chosen", []), e.get("chosen"), color=color, label=f"{POLICY_LABELS[m]}: chosen")
            _curve(ax, c.get("rejected", []), e.get("rejected"), color=color, ls="--", label="rejected")
            n, total = c.get("steps_per_run", 0), len(c.get("chosen", []))
            for x in range(n, total, n or total + 1):   # a new iteration: a new reference π_t
                ax.axvline(x, color="0.8", lw=1)
        ax.axhline(0, color="0.6", lw=1)
        ax.set(title=title, xlabel="step", ylabel="log π − log π_ref (nats)")
        ax.legend(fontsize=7, frameon=False)
    for ax, key, ylabel in [(axes[1, 0], "off_support", "P(off-support), exact"),
                            (axes[1, 1], "forward_kl_support", "forward KL on the support (nats)")]:
        for m in ("dpo", "spin", "spin_short"):
            y, ys = get(disp, m, "probe", key), get(derr, m, "probe", key)
            if y:
                ax.errorbar(range(len(y)), y, yerr=ys, color=POLICY_STYLE[m][0], marker=POLICY_STYLE[m][1],
                            capsize=3, label=POLICY_LABELS[m])
        ax.set(title="the exact probe, before and after each run", xlabel="run (SPIN: iteration)", ylabel=ylabel)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Likelihood displacement: DPO's loss on the chosen and rejected responses", fontsize=12)
    _save(fig, path)

def _save(fig, path):
    tmp = path + ".tmp"
    fig.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight")
    os.replace(tmp, path)  # atomic: an interrupted report never leaves half an image


CAPTIONS = {  # what to look for; the effect checks above say whether this run shows it
    "fig_intuition.png": "a toy 1-D world: the forward-KL fit (what SFT does) spreads over both "
        "modes and puts mass between them; the reverse-KL fit (adversarial imitation) sits on one.",
    "fig_modes.png": "expected: π_SFT spreads over the expert's modes and leaks off-support "
        "(hatched); the reverse-KL policies concentrate on fewer modes, with less off-support.",
    "fig_divergence_plane.png": "expected: π_SFT upper left (low forward KL), the reverse-KL "
        "policies lower right (low reverse KL). Symlog axes, linear within ±0.1 nats, so the "
        "expert's own ≈ 0 (possibly slightly negative) Monte Carlo estimates sit at the origin.",
    "fig_plane_slide.png": "the divergence plane for a slide: the expert, π_init, π_SFT, two reverse-KL "
        "policies and GAIL (learned), the exact-reward ceiling and the control (fig_divergence_plane has every policy).",
    "fig_bon.png": "the papers predict: Init-SFT rises past the demonstrations (orange line) as N "
        "grows, the reward models trained against demonstrations gain less, and in the control "
        "panel (no signature) that gap shrinks. A curve that peaks and then falls is over-optimisation: "
        "fig_bon_picks shows what the larger N picks.",
    "fig_bon_picks.png": "as N grows, Best-of-N by a log-ratio reward picks longer, signed and off-support "
        "responses; among the plausible candidates only it does not.",
    "fig_extrapolation.png": "where the expert lies along the direction π_init → π_SFT: a gold reward that "
        "rises with α means the expert lies beyond π_SFT; the KLs say how far π_α moves from the expert.",
    "fig_calibration.png": "what each discriminator learned, log q_φ − log π_SFT, against its target "
        "log β − log π_SFT (a scalar head: its logit against log β − log π): points on the dashed y = x line "
        "mean it learned the exact log-ratio. The whole logit log q_φ − log π shares −log π with its target, so "
        "its rank correlation (in the title) is high even for a discriminator that learned nothing.",
    "fig_displacement.png": "both log-likelihoods falling while their margin grows is likelihood displacement: "
        "the mass goes elsewhere, often off the support (the probe, exact, below).",
    "fig_curves.png": "a discriminator near 0.5 accuracy is being fooled; the policy's reward "
        "should rise while its KL to π_SFT stays bounded.",
}


def knob_labels(regimes, knob):
    """Each point's label along a knob: the options that change along it (e.g. n_embd=128), '(default)' marked."""
    points = regimes["knobs"][knob]
    configs = [regimes["points"][p]["config"] for p in points]
    keys = [k for k in configs[0] if k != "out_dir" and len({str(c[k]) for c in configs}) > 1]
    return ["\n".join(f"{k}={c[k]}" for k in keys) + ("\n(default)" if p == "default" else "")
            for p, c in zip(points, configs)]


def fig_regimes(path, regimes, seeds=None):
    """The regime map: for each knob (column) and measure (row), each method's paired difference from π_SFT (mean
    over seeds, 95% interval) at each of the knob's values; 0 is π_SFT. rkl_oracle is the ceiling, the controls the
    floor."""
    table = regime_map(regimes, seeds)
    knobs = list(regimes["knobs"])
    fig = Figure(layout="constrained", figsize=(4.4 * len(knobs), 2.7 * len(REGIME_MEASURES)))
    axes = fig.subplots(len(REGIME_MEASURES), len(knobs), squeeze=False)
    for c, knob in enumerate(knobs):
        points = regimes["knobs"][knob]
        for r, (key, (better, label)) in enumerate(REGIME_MEASURES.items()):
            ax = axes[r][c]
            for i, m in enumerate(REGIME_METHODS):
                cells = [table[p][m][key] for p in points]
                y = np.array([x["mean"] if x["mean"] is not None else np.nan for x in cells])
                lo = [y_ - x["ci95"][0] if x["ci95"] else 0 for y_, x in zip(y, cells)]
                hi = [x["ci95"][1] - y_ if x["ci95"] else 0 for y_, x in zip(y, cells)]
                colour, marker = POLICY_STYLE[m]
                ax.errorbar(np.arange(len(points)) + 0.07 * (i - len(REGIME_METHODS) / 2), y, yerr=[lo, hi],
                            color=colour, marker=marker, ms=4, capsize=2, lw=1,
                            ls="--" if POLICY[m].kind in ("control", "oracle") else "-",
                            label=policy_label(m, regimes["points"][points[0]]))
            ax.axhline(0, color="C0", lw=1.2)   # π_SFT
            ax.set_xticks(range(len(points)), knob_labels(regimes, knob), fontsize=7)
            if c == 0:
                ax.set_ylabel(f"{label}\n− π_SFT's" + {1: " (↑ better)", -1: " (↓ better)", 0: ""}[better],
                              fontsize=8)
            if r == 0:
                ax.set_title(knob, fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    k = sorted({r["seed"] for p in regimes["points"].values() for r in p["runs"] if seeds is None or r["seed"] in seeds})
    fig.suptitle(f"When each method shines: each method minus π_SFT (the blue line) as one knob moves "
                 f"(mean over {len(k)} seeds, paired 95% interval)", fontsize=11)
    _save(fig, path)
