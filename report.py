"""
report.py: report.md and its figures, from the per-seed metrics of afd_mini.py (metrics.py assembles, aggregates
and judges them; figures.py draws). Also the summary a run prints at the end.

Rebuild a report from saved metrics with: python report.py OUT_DIR
Pool a class's runs (each student's --seed) into one report: python report.py pool OUT_DIR RUN_DIR ... (pool)
"""
import glob
import json
import math
import os
import sys

import numpy as np

import console
import exercises
import figures
import metrics
from figures import CAPTIONS, RM_LABELS, RM_NAMES, _policy_order, policy_label
from methods import ADVERSARIAL, LEARNED_VS_OPTIMUM, REWARD_MODEL
from metrics import (DEV_SEEDS, HELDOUT_SEEDS, PREREGISTERED_N, REGIME_MEASURES, REGIME_METHODS, _bon_at, _is_number,
                     _Missing, aggregate, effects, fmt, get, regime_map, regime_predictions)
from stats import paired_interval, t_quantile_975

def _write_text(path, text):
    """path holds text, UTF-8, or is untouched: written under a temporary name, then renamed."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


QUICK_NOTE = ("--quick is a smoke test: its models are too small to learn the task, so these numbers mean nothing; "
              "run without --quick for numbers")   # the summary's last line after a --quick run


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
    if get(metrics, "config", "preset") == "quick":
        lines.append(QUICK_NOTE)
    return "\n".join(lines)

# -----------------------------------------------------------------------------
# report.md

def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]

def _bon_table(world, world_std, title, tau):
    """The Best-of-N section for one world (the main one or the control): each reward's gold reward at every N,
    unconstrained and among the plausible candidates, and what its picks are."""
    demo = fmt(world["demonstrations"]["gold_reward"], get(world_std, "demonstrations", "gold_reward"))
    lines = [f"## {title}", "", "Gold reward of the response ranked best among N samples of π_SFT "
             f"(KL(Best-of-N ‖ π_SFT) in closed form: `best_of_n_kl`). Demonstrations: {demo}. *exact*: computed from exact "
             "log-probabilities (the world's, or the models' own); *learned*: a trained reward model's.", ""]
    for table, what in [("bon", "every candidate"),
                        ("bon_plausible", "the plausible candidates only (within τ nats of the likeliest of the N; "
                                          f"τ = {tau})")]:
        bon = world.get(table)
        if not bon:
            continue
        rms = [r for r in RM_NAMES if r in bon] + [r for r in bon if r not in RM_NAMES]
        ns = bon[rms[0]]["n"]
        rows = [[RM_LABELS.get(r, r), "exact" if REWARD_MODEL.get(r, None) and REWARD_MODEL[r].exact else "learned",
                 *[fmt(g, e) for g, e in zip(bon[r]["gold_reward"],
                                             get(world_std, table, r, "gold_reward") or [None] * len(ns))]]
                for r in rms]
        lines += [f"Among {what}:", ""] + _table(["reward", "", *[f"N = {n}" for n in ns]], rows) + [""]
    bon = world["bon"]
    n = max(bon["gold"]["n"])
    keys = [k for k in bon["gold"] if k not in ("n", "kl", "gold_reward")]
    rows = [[RM_LABELS.get(r, r), *[f"{bon[r][k][0]:.2f} → {bon[r][k][-1]:.2f}" for k in keys]]
            for r in [r for r in RM_NAMES if r in bon]]
    return lines + [f"What the picks are, at N = 1 (π_SFT's samples) → N = {n}: off-support rate, mean length "
                    "(tokens), signature rate, and each expert mode's share.", ""] + \
        _table(["reward", *keys], rows) + [""]


def _learned_vs_optimum(runs, world, name):
    """Each learned classifier against its exact optimum, in one world: how well it ranks like the optimum on
    the Best-of-N samples, and the gold reward each reaches at the pre-registered N, with the paired interval
    of optimum − learned over seeds."""
    rows = []
    for rm, opt in LEARNED_VS_OPTIMUM.items():
        corr = [get(world(r), "reward_models", f"{rm}_vs_optimum") for r in runs]
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
                ("reverse_kl_on", "KL on the support"), ("off_support", "off-support"),
                ("mode_entropy", "mode entropy"), ("gold_reward", "gold reward"), ("kl_sft", "KL(π‖π_SFT)"),
                ("distinct", "distinct"), ("length", "length")]
        rows = [[f"{policy_label(p, mean)} (`{p}`)"] +
                [fmt(pol[p][c], get(std, "policies", p, c)) if c in pol[p] else "—" for c, _ in cols]
                for p in _policy_order(pol)]
        lines += ["## Policies", "", "On held-out prompts, exact by enumeration of the expert's support "
                  "(evaluation.py): the off-support rate, the KL on the support KL(π(·|on) ‖ β(·|on)), the mode "
                  "entropy and the forward KL's support share; the reverse KL's and gold reward's off-support "
                  "remainder, the forward KL's floor share, KL(π‖π_SFT), distinct (the fraction of distinct "
                  "responses per prompt) and length (tokens) from samples. KLs in nats per response.", ""]
        lines += _table(["policy"] + [label for _, label in cols], rows) + [""]

    lines += _effects_section(effects, k)
    cal = mean.get("calibration", {})
    if cal:
        names = [m for m in ADVERSARIAL if m in cal] + sorted(m for m in cal if m not in ADVERSARIAL)
        rows = [[f"{policy_label(m, mean)} (`{m}`)"] +
                [fmt(get(cal, m, k), get(std, "calibration", m, k))
                 for k in ("spearman_learned", "spearman", "spearman_untrained", "auc_off_support")]
                for m in names]
        lines += ["## Discriminator calibration", "",
                  "On each final policy's samples. Learned: what the discriminator learned, log q_φ − log π_SFT, "
                  "against its target log β − log π_SFT (a scalar head: h against log β − log π). h: the whole "
                  "logit log q_φ − log π against log β − log π; both contain −log π, so an untrained "
                  "discriminator (q_φ = π_SFT) already ranks them (untrained). AUC: how well h separates the "
                  "policy's on-support samples (higher) from its off-support ones; 0.5 is chance.", ""]
        lines += _table(["method", "Spearman ρ, learned", "Spearman ρ, h", "Spearman ρ, untrained",
                         "AUC on/off support"], rows) + [""]

    if mean.get("bon") and mean.get("demonstrations"):
        lines += _bon_table(mean, std, "Best-of-N", get(mean, "config", "bon_plausibility"))
        lines += _learned_vs_optimum(runs, lambda r: r, "the signed world")
    if get(mean, "control", "bon") and get(mean, "control", "demonstrations"):
        lines += _bon_table(mean["control"], get(std, "control"),
                            "Best-of-N, control world (no demonstrator signature)", get(mean, "config", "bon_plausibility"))
        lines += _learned_vs_optimum(runs, lambda r: r.get("control", {}), "the control world")

    lines += ["## Figures", ""]
    bars = f" Error bars: {err_label}." if k > 1 else ""
    for name in figures:
        lines += [f"![{name}]({name})", "", f"*What to see:* {CAPTIONS[name]}{bars}", ""]

    stages = mean.get("stage_seconds", {})
    if stages:
        rows = [[st, fmt(sec, get(std, "stage_seconds", st))] for st, sec in stages.items()]
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

VERDICT_WORDS = {"holds": "**holds**", "does not hold": "**does not hold**", "inconclusive": "*inconclusive*",
                 "indicative": "indicative", "not checked": "*not checked*"}   # as the tables print them


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
    rows = []
    for e in effects:
        if e["verdict"] == "not checked":
            detail = ["—", "—", "—", f"{e.get('missing', 'an input')} missing"]
        elif e["condition"] == "all conditions":
            detail = ["", "", "", f"{e['seeds_holding']}/{e['seeds']} seeds (all conditions)"]
        else:
            detail = [f"`{e['difference']}`", f"{e['diff_mean'] + 0.0:+.3g}", _ci_text(e["ci95"]),
                      f"{e['seeds_holding']}/{e['seeds']} seeds"]
        rows.append([e["effect"], e["condition"], *detail, VERDICT_WORDS[e["verdict"]]])
    return lines + _table(["effect", "condition", "difference (expected > 0)", "mean", "95% CI", "positive on",
                           "verdict"], rows) + [""]

def write_report(out_dir, runs):
    """Aggregate the runs, judge the effects, draw the figures and write out_dir/report.md. Returns its path."""
    runs = sorted(runs, key=lambda r: r.get("seed", 0))
    mean, std = aggregate(runs)
    if len(runs) == 1:
        std = None  # one seed: no spread anywhere
    err, err_label = error_bars(std, len(runs))
    os.makedirs(out_dir, exist_ok=True)
    drawn, notes = [], []
    draw = [("fig_intuition.png", lambda p: figures.fig_intuition(p), []),
            ("fig_modes.png", lambda p: figures.fig_modes(p, mean, err), ["policies"]),
            ("fig_divergence_plane.png", lambda p: figures.fig_divergence_plane(p, mean, err), ["policies"]),
            ("fig_plane_slide.png", lambda p: figures.fig_divergence_plane(p, mean, err, only=figures.SLIDE_POLICIES),
             ["policies"]),
            ("fig_bon.png", lambda p: figures.fig_bon(p, mean, err), ["bon", "demonstrations"]),
            ("fig_bon_picks.png", lambda p: figures.fig_bon_picks(p, mean, err), ["bon", "demonstrations"]),
            ("fig_extrapolation.png", lambda p: figures.fig_extrapolation(p, mean, err), ["policies"]),
            ("fig_calibration.png",
             lambda p: figures.fig_calibration(p, mean, err, runs[0]["calibration_points"]),
             ["calibration_points"]),
            ("fig_curves.png", lambda p: figures.fig_curves(p, mean, err, err_label), ["curves"]),
            ("fig_displacement.png", lambda p: figures.fig_displacement(p, mean, err), ["curves", "displacement"])]
    for name, draw_fn, needs in draw:
        missing = [k for k in needs if not mean.get(k)]
        if missing:
            notes.append(f"{name} skipped: {', '.join(missing)} missing from the metrics.")
            continue
        try:
            draw_fn(os.path.join(out_dir, name))
        except NotImplementedError as e:   # a student copy: fig_intuition needs exercise 13
            if exercises.not_written(e) is None:
                raise
            notes.append(f"{name} skipped: {exercises.not_written(e)}.")
            continue
        drawn.append(name)
    if "control" not in mean:
        notes.append("No control world in the metrics: the signature comparison is not made.")
    judged = effects(runs)
    path = os.path.join(out_dir, "report.md")
    _write_text(path, _markdown(runs, mean, std, judged, drawn, notes, err_label))
    return path

def write_sweep(out_dir, sweep):
    """The sweep's figure: every effect's paired interval at every point (figures.fig_sweep)."""
    figures.fig_sweep(os.path.join(out_dir, "fig_sweep.png"), sweep)


def sweep_summary(sweep, out_dir):
    """The lines a sweep prints at the end: each effect's verdict at every point."""
    names = [p["folder"] for p in sweep["points"]]
    lines = ["verdicts at " + " | ".join(names) + f" ({len(sweep['points'][0]['seeds'])} seeds each):"]
    rows = {}
    for p in sweep["points"]:
        last = {e["effect"]: e for e in p["effects"]}   # an effect's combined row comes last
        for effect, e in last.items():
            rows.setdefault(effect, []).append(e["verdict"])
    lines += [f"  {' | '.join(verdicts)}   {effect}" for effect, verdicts in rows.items()]
    return "\n".join(lines + [f"outputs: {out_dir}/sweep.json, {out_dir}/fig_sweep.png, each point's folder"])


# -----------------------------------------------------------------------------------------------------------
# a study (--study=regimes): its per-seed numbers in one small JSON, its figure and its verdicts, which can be
# redrawn from that JSON alone: python report.py --regimes docs/regimes.json docs/fig_regimes.png

def _rounded(x, digits=6):
    if isinstance(x, float):
        return float(f"{x:.{digits}g}")
    if isinstance(x, dict):
        return {k: _rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v, digits) for v in x]
    return x


def regimes_json(runs, knobs):
    """The study's per-seed numbers: {knobs: {knob: [point, ...]}, points: {point: {config, runs}}}."""
    return {"knobs": knobs, "points": {
        point: {"config": {k: v for k, v in rs[0]["config"].items() if k != "out_dir"},
                "runs": [_rounded({k: r[k] for k in ("seed", "policies", "stage_seconds")}) for r in rs]}
        for point, rs in runs.items() if rs}}


SEED_SETS = [("0–4", DEV_SEEDS), ("5–9", HELDOUT_SEEDS), ("0–9", None)]   # development, held out, all


def judged_on_seed_sets(regimes):
    """Each prediction's rows (metrics.regime_predictions) on every set of SEED_SETS, one tuple per prediction."""
    return list(zip(*(regime_predictions(regimes, seeds) for _, seeds in SEED_SETS)))


def regimes_summary(regimes, where=""):
    """The lines a study prints: each prediction's verdict on seeds 0–4, 5–9 and 0–9, and the study's cost."""
    lines = ["predictions (docs/RESULTS.md), the advantage over π_SFT at one end minus the other; verdict on seeds "
             + " | ".join(name for name, _ in SEED_SETS) + ":"]
    for rows in judged_on_seed_sets(regimes):
        r = rows[-1]
        verdicts = " | ".join(f"{x['verdict']} ({x['seeds_holding']}/{len(x['seeds'])})" for x in rows)
        lines.append(f"  {verdicts}   "
                     f"{r['knob']}: {r['method']}, {r['measure']} ({r['larger_at']} vs {r['smaller_at']}; "
                     f"all seeds {fmt(r['diff_mean'])})")
    seconds = sum(sum(r["stage_seconds"].values()) for p in regimes["points"].values() for r in p["runs"])
    lines.append(f"the study's stages took {seconds / 3600:.2f} h of process time (one process's, summed)")
    return "\n".join(lines + ([f"outputs: {where}/regimes.json, regimes.md, fig_regimes.png, each point's folder"]
                              if where else []))


def regimes_markdown(regimes):
    """The study's tables: each knob's map (each method's paired difference from π_SFT, mean and 95% interval over
    all seeds, at each point) and every prediction's verdict on seeds 0-4, 5-9 and all."""
    table = regime_map(regimes)
    out = []
    for knob, points in regimes["knobs"].items():
        out += [f"**{knob}** (method − π_SFT; mean over seeds, paired 95% interval)", "",
                "| method | measure | " + " | ".join(points) + " |", "|---|---|" + "---|" * len(points)]
        for m in REGIME_METHODS:
            for key in REGIME_MEASURES:
                cells = [table[p][m][key] for p in points]
                out.append(f"| `{m}` | {key} | " + " | ".join(
                    fmt(c["mean"]) + (f" [{fmt(c['ci95'][0])}, {fmt(c['ci95'][1])}]" if c["ci95"] else "")
                    for c in cells) + " |")
        out.append("")
    out += ["| knob | method | measure | advantage at one end − at the other | "
            + " | ".join(f"seeds {n}" for n, _ in SEED_SETS) + " |", "|---|---|---|---|" + "---|" * len(SEED_SETS)]
    for rows in judged_on_seed_sets(regimes):
        r = rows[-1]
        ci = f" [{fmt(r['ci95'][0])}, {fmt(r['ci95'][1])}]" if r["ci95"] else ""
        out.append(f"| {r['knob']} | `{r['method']}` | {r['measure']} | {r['larger_at']} − {r['smaller_at']}: "
                   f"{fmt(r['diff_mean'])}{ci} | " + " | ".join(
                       f"{x['verdict']} ({x['seeds_holding']}/{len(x['seeds'])})" for x in rows) + " |")
    return "\n".join(out) + "\n"


def smallest_markdown(study):
    """The smallest-model study's table: π_SFT's off-support rate at each size, on each set of seeds, its cost."""
    s = metrics.smallest_learner(study)
    lines = [f"π_SFT learns the task where its off-support rate is below {s['threshold']}: chosen on seeds 0–4, "
             "the smallest size that does; judged on 5–9 (holds: the 95% interval lies below).", "",
             "| size | " + " | ".join(f"off-support, seeds {n}" for n, _ in SEED_SETS)
             + " | pretraining + SFT (s per seed) |", "|---|" + "---|" * (len(SEED_SETS) + 1)]
    for row in s["rows"]:
        runs = study["points"][row["point"]]["runs"]
        secs = np.mean([r["stage_seconds"].get("pretrain", 0) + r["stage_seconds"].get("sft", 0) for r in runs])
        cells = [f"{fmt(row[k]['mean'])} {_ci_text(row[k]['ci95'])}" if row[k]["ci95"] else fmt(row[k]["mean"])
                 for k in ("dev", "heldout", "all")]
        lines.append(f"| {row['point']} | " + " | ".join(cells) + f" | {secs:.0f} |")
    lines += ["", f"Chosen on seeds 0–4: {s['chosen'] or 'none'}; on seeds 5–9: {s['verdict']}."]
    return "\n".join(lines) + "\n"


def write_study(name, out_dir, runs, knobs):
    """A study's outputs in out_dir (runs: {point: [each seed's summary]}); the lines to print."""
    assert name in ("regimes", "smallest"), name
    study = regimes_json(runs, knobs)
    _write_text(os.path.join(out_dir, f"{name}.json"), json.dumps(study, separators=(",", ":")))
    if name == "smallest":
        table = smallest_markdown(study)
        _write_text(os.path.join(out_dir, "smallest.md"), table)
        return table + f"outputs: {out_dir}/smallest.json, smallest.md, each size's folder"
    figures.fig_regimes(os.path.join(out_dir, "fig_regimes.png"), study)
    _write_text(os.path.join(out_dir, "regimes.md"), regimes_markdown(study))
    return regimes_summary(study, out_dir)


# -----------------------------------------------------------------------------------------------------------
# docs/RESULTS.md's tables from a ten-seed run (python report.py --results OUT_DIR): the policies, every effect on
# seeds 0-4, 5-9 and 0-9, the stage times

RESULTS_COLUMNS = [("KL(β‖π)", "forward_kl", 2), ("KL(π‖β)", "reverse_kl", 2), ("KL on the support", "reverse_kl_on", 2),
                   ("off-support", "off_support", 3), ("mode entropy", "mode_entropy", 2),
                   ("gold reward", "gold_reward", 3), ("length", "length", 1), ("KL(π‖π_SFT)", "kl_sft", 2)]


def _effect_cell(e):
    word = VERDICT_WORDS[e["verdict"]]
    if e["condition"] == "all conditions" or e["diff_mean"] is None:
        return f"{word}, {e['seeds_holding']}/{e['seeds']}"
    lo, hi = e["ci95"]
    return f"{word} {e['diff_mean']:+.3g} [{lo:+.3g}, {hi:+.3g}], {e['seeds_holding']}/{e['seeds']}"


def results_tables(runs):
    """RESULTS.md's policy table (mean ± std over the runs), effect table (seeds 0–4, 5–9, 0–9) and the mean ± std
    of each stage's seconds, as markdown."""
    from methods import POLICIES
    mean, std = aggregate(runs)
    cell = lambda p, k, d: f"{mean['policies'][p][k]:.{d}f} ± {std['policies'][p][k]:.{d}f}"
    lines = _table(["policy"] + [c for c, _, _ in RESULTS_COLUMNS],
                   [[f"{pol.label.replace('{disc}', 'AIRL-form')} (`{pol.name}`)"]
                    + ["—" if pol.name == "expert" and k == "kl_sft" else cell(pol.name, k, d)
                       for _, k, d in RESULTS_COLUMNS] for pol in POLICIES if pol.name in mean["policies"]])
    judged = [effects([r for r in runs if seeds is None or r["seed"] in seeds]) for _, seeds in SEED_SETS]
    lines += [""] + _table(["effect", "condition"] + [f"seeds {name}" for name, _ in SEED_SETS],
                           [[rows[-1]["effect"], rows[-1]["condition"], *map(_effect_cell, rows)]
                            for rows in zip(*judged)])
    secs, secs_sd = mean["stage_seconds"], std["stage_seconds"]
    lines += [""] + _table(["stage", f"{len(runs)} seeds (s)"],
                           [[f"`{s}`", f"{secs[s]:.1f} ± {secs_sd[s]:.1f}"] for s in secs]
                           + [["total", f"{sum(secs.values()):.1f}"]])   # the mean of the sums, a sum of the means
    return "\n".join(lines) + "\n"


def load_runs(out_dir):
    """The per-seed metrics dicts saved under out_dir/seed_*/metrics.json."""
    runs = []
    for path in glob.glob(os.path.join(out_dir, "seed_*", "metrics.json")):
        with open(path, encoding="utf-8") as f:
            runs.append(json.load(f))
    return sorted(runs, key=lambda r: r.get("seed", 0))

# -----------------------------------------------------------------------------------------------------------
# a class's runs pooled (python report.py pool OUT_DIR RUN_DIR ...): each student runs --seed=K, their number, and
# the class's K seeds make one report with paired intervals, where one seed's verdict is a coin flip

class PoolError(Exception):
    """Run directories that cannot be pooled: one line on stderr, exit status 2."""


def _has_runs(directory):
    return bool(glob.glob(os.path.join(glob.escape(directory), "seed_*", "metrics.json")))


def run_dirs(args):
    """The RUN_DIR arguments as directories. A glob pattern (runs/*) is expanded here, for the shells that leave it
    as it is (PowerShell, cmd), to its matches that hold a finished run: not the pooled folder of an earlier
    pooling (runs/class), which holds none; a directory named twice counts once."""
    dirs = []
    for arg in args:
        if not any(c in arg for c in "*?["):
            dirs.append(arg)
            continue
        found = [d for d in sorted(glob.glob(arg)) if _has_runs(d)]
        if not found:
            raise PoolError(f"{arg}: matches no directory that holds a finished run (seed_*/metrics.json)")
        dirs += found
    once = {}
    for d in dirs:
        once.setdefault(os.path.realpath(d), d)
    return list(once.values())


def config_differences(a, b):
    """The options in which two runs' configurations differ, in order: those that change results (runner.RunOptions.
    RUN_ONLY, the device and the seed left out) and the preset, which names the difference of a --quick run."""
    import runner   # here, not at the top: runner imports this module
    ignored = (runner.RunOptions.RUN_ONLY - {"preset"}) | {"device", "seed"}
    a, b = ({k: v for k, v in run.get("config", {}).items() if k not in ignored} for run in (a, b))
    return [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def pooled_runs(dirs):
    """Every finished seed of dirs, sorted by seed: each seed once, all of one configuration (config_differences);
    else PoolError naming the seed, or the option and the two directories."""
    runs, where = [], {}
    for d in dirs:
        try:
            found = load_runs(d)
        except (OSError, ValueError) as e:
            raise PoolError(f"{d}: a seed_*/metrics.json does not load ({type(e).__name__}: {e})") from None
        if not found:
            raise PoolError(f"{d}: no finished run in it (seed_*/metrics.json); finish that run, or leave it out")
        for run in found:
            if run["seed"] in where:
                raise PoolError(f"seed {run['seed']} is in both {where[run['seed']]} and {d}: each student runs "
                                "their own --seed=K")
            differ = config_differences(runs[0], run) if runs else []
            if differ:
                k, more = differ[0], len(differ) - 1
                raise PoolError(f"{where[runs[0]['seed']]} and {d} are runs of different configurations (--{k}="
                                f"{runs[0]['config'].get(k)} and --{k}={run['config'].get(k)}"
                                + f", and {more} more option{'s' * (more > 1)}" * (more > 0)
                                + "): pool runs of one configuration")
            where[run["seed"]] = d
            runs.append(run)
    return sorted(runs, key=lambda r: r["seed"])


def pool(out_dir, args):
    """A class's runs (args: directories or glob patterns, run_dirs) pooled into out_dir as one run of their seeds:
    out_dir/metrics.json (metrics.combine) and report.md (write_report), with paired intervals over the students'
    seeds. out_dir must not hold a run of its own (it would be overwritten). Returns the summary to print."""
    import runner
    if _has_runs(out_dir):
        raise PoolError(f"{out_dir} holds a run of its own (seed_*/metrics.json); pool into a new directory")
    runs = pooled_runs(run_dirs(args))
    os.makedirs(out_dir, exist_ok=True)
    top = metrics.combine(runs)
    runner.write_json(os.path.join(out_dir, "metrics.json"), top)
    write_report(out_dir, runs)
    return summary(top, out_dir)


def pool_command(args):
    """python report.py pool OUT_DIR RUN_DIR ...: prints the pooled summary; the exit status (2: refused, in one
    line on stderr)."""
    try:
        if len(args) < 2:
            raise PoolError("usage: python report.py pool OUT_DIR RUN_DIR ... (directories, or a pattern: runs/*)")
        print(pool(args[0], args[1:]))
        return 0
    except PoolError as e:
        print(f"report: error: {e}", file=sys.stderr)
    except OSError as e:   # OUT_DIR under a file, a read-only disk
        print(f"report: error: {e.filename}: cannot write there ({e.strerror}); use another OUT_DIR", file=sys.stderr)
    return 2

if __name__ == "__main__":
    console.utf8_output()
    if sys.argv[1:2] == ["pool"]:   # python report.py pool OUT_DIR RUN_DIR ...
        sys.exit(pool_command(sys.argv[2:]))
    if sys.argv[1:2] == ["--regimes"]:   # python report.py --regimes REGIMES.json [FIGURE.png]
        with open(sys.argv[2], encoding="utf-8") as f:
            regimes = json.load(f)
        if len(sys.argv) > 3:
            figures.fig_regimes(sys.argv[3], regimes)
        print(regimes_markdown(regimes))
        sys.exit(0)
    if sys.argv[1:2] == ["--results"] and len(sys.argv) == 3:   # python report.py --results OUT_DIR
        runs = load_runs(sys.argv[2])
        if not runs:
            sys.exit(f"python report.py --results {sys.argv[2]}: no seed_*/metrics.json under {sys.argv[2]}")
        print(results_tables(runs))
        sys.exit(0)
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python report.py OUT_DIR, or python report.py pool OUT_DIR RUN_DIR ..., or "
                 "python report.py --regimes REGIMES.json [FIG.png], or python report.py --results OUT_DIR")
    runs = load_runs(sys.argv[1])
    if not runs:
        sys.exit(f"python report.py {sys.argv[1]}: no seed_*/metrics.json under {sys.argv[1]}; give the --out_dir "
                 "of a run")
    print(write_report(sys.argv[1], runs))
