"""The regime map (--study=regimes): its points, the predictions' arithmetic on hand-made numbers, the figure, and
(slow) a tiny study end to end: every point's folder and numbers, pretraining shared by the points that differ only
in their demonstrations, a rerun with another discriminator option recomputing only the stages that read it, and
the figure and verdicts redrawn from regimes.json alone."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import afd_mini
import cli
import figures
import metrics
import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = afd_mini.STUDIES["regimes"]


def test_the_study_has_each_point_once_and_every_knob_brackets_the_default():
    names = [name for name, _ in STUDY.points]
    assert len(names) == len(set(names)) == 7 and "default" in names
    for knob, points in STUDY.knobs.items():
        assert len(points) >= 3 and points[1] == "default", knob   # a value below the default and one above
        assert set(points) <= set(names)
    cfg = afd_mini.Config()
    for _, values in STUDY.points:   # every point is a valid run
        cli.validate(dataclasses.replace(cfg, **values), afd_mini.STAGE_NAMES)


def test_the_study_runs_only_its_policies_stages_and_evaluates_them():
    stages = [s.name for s in STUDY.stages]
    assert stages[-1] == "evaluate" and stages[:2] == ["pretrain", "sft"]
    assert set(stages) == {"pretrain", "sft", "evaluate"} | {p for p in afd_mini.REGIME_POLICIES
                                                             if afd_mini.POLICY[p].checkpoint and p != "init"}
    assert set(metrics.REGIME_METHODS) <= set(afd_mini.REGIME_POLICIES)


def key(stage, **options):
    """A stage's fingerprint key (runner.stage_key) in a run of the default options moved by `options`."""
    cfg = dataclasses.replace(afd_mini.Config(), **options)
    run = type("R", (), {"cfg": cfg, "seed": 0, "device": __import__("torch").device("cpu")})()
    keys = {}
    for s in afd_mini.STAGES:
        keys[s.name] = runner.stage_key(s, run, keys, afd_mini.EVERY_STAGE)
        if s.name == stage:
            return keys[s.name]


def test_pretraining_is_shared_by_runs_that_differ_only_in_their_datasets():
    assert key("pretrain", n_demo=250) == key("pretrain") == key("pretrain", n_pref=100, n_eval=64)
    assert key("pretrain", n_base=1000) != key("pretrain")   # its own corpus
    assert key("pretrain", n_modes=1) != key("pretrain")     # the world
    for stage in ("sft", "rkl_seq", "evaluate"):              # every later stage reads the datasets
        assert key(stage, n_demo=250) != key(stage), stage


def fake_regimes(advantage):
    """Ten seeds at every point: every measure of every policy a seed's jitter (which cancels in the pairing), but
    π_SFT's off-support 0.1 + jitter and rkl_seq's 0.1 + jitter − advantage[point] − a little noise."""
    points = {}
    for point in {p for ps in STUDY.knobs.values() for p in ps}:
        runs = []
        for seed in range(10):
            jitter = 0.01 * seed
            pol = {m: {k: jitter for k in metrics.REGIME_MEASURES} for m in ("sft", *metrics.REGIME_METHODS)}
            pol["sft"]["off_support"] = 0.1 + jitter
            pol["rkl_seq"]["off_support"] = 0.1 + jitter - advantage.get(point, 0.0) - 0.001 * (seed % 3)
            runs.append({"seed": seed, "policies": pol, "stage_seconds": {"pretrain": 1.0}})
        points[point] = {"config": {"n_demo": 1, "out_dir": point}, "runs": runs}
    return {"knobs": STUDY.knobs, "points": points}


def test_a_prediction_holds_where_the_advantage_is_larger_at_the_predicted_end():
    few, many = STUDY.knobs["demonstrations"][0], STUDY.knobs["demonstrations"][-1]
    rows = metrics.regime_predictions(fake_regimes({few: 0.05, many: 0.01}))
    row = next(r for r in rows if (r["knob"], r["method"], r["measure"]) == ("demonstrations", "rkl_seq", "off_support"))
    assert row["verdict"] == "holds" and row["seeds_holding"] == 10
    assert row["diff_mean"] == pytest.approx(0.04)   # lower off-support is better: π_SFT's minus the method's
    flipped = metrics.regime_predictions(fake_regimes({few: 0.01, many: 0.05}))
    assert next(r for r in flipped if r["knob"] == "demonstrations" and r["method"] == "rkl_seq"
                and r["measure"] == "off_support")["verdict"] == "does not hold"
    held_out = metrics.regime_predictions(fake_regimes({few: 0.05}), metrics.HELDOUT_SEEDS)
    assert all(r["seeds"] == list(metrics.HELDOUT_SEEDS) for r in held_out)


def test_the_map_is_each_method_minus_sft_paired_by_seed():
    few = STUDY.knobs["demonstrations"][0]
    cell = metrics.regime_map(fake_regimes({few: 0.05}))[few]["rkl_seq"]["off_support"]
    assert cell["mean"] == pytest.approx(-0.05 - 0.001 * np.mean([s % 3 for s in range(10)]))
    assert cell["ci95"][1] < 0 and cell["ci95"][1] - cell["ci95"][0] < 0.01   # the seed's jitter cancels


def test_the_regime_map_renders(tmp_path):
    path = tmp_path / "fig.png"
    regimes = fake_regimes({STUDY.knobs["capacity"][0]: 0.03})
    for p in regimes["points"].values():
        p["config"] = {"n_demo": 2000, "n_layer": 4, "n_embd": 64, "n_modes": 3}
    figures.fig_regimes(str(path), regimes)
    assert path.stat().st_size > 10_000


@pytest.mark.parametrize("args, words", [(["--study=regime"], ["--study=regime", "regimes"]),
                                         (["--study=regimes", "--sweep=q=0.5,0.7"], ["--study=regimes", "--sweep"])])
def test_a_bad_study_is_one_line(tmp_path, capsys, args, words):
    assert afd_mini.main([*args, f"--out_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert not (tmp_path / "out").exists()


TINY = ["--quick", "--pretrain_steps=20", "--n_base=300", "--sft_steps=5", "--n_eval=16", "--rl_iters=1",
        "--eval_samples=1", "--progress=false"]


@pytest.mark.slow
def test_a_tiny_study_end_to_end(tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "study"
    assert afd_mini.main(["--study=regimes", f"--out_dir={out}", f"--cache={cache}", *TINY]) == 0
    log = capsys.readouterr().err
    regimes = json.loads((out / "regimes.json").read_text(encoding="utf-8"))
    assert set(regimes["points"]) == {name for name, _ in STUDY.points}
    for name, values in STUDY.points:
        point = regimes["points"][name]
        assert all(point["config"][k] == v for k, v in values.items()), name
        (run,) = point["runs"]
        assert set(run["policies"]) == set(afd_mini.REGIME_POLICIES)
        assert all(np.isfinite(run["policies"][m][k]) for m in run["policies"] for k in metrics.REGIME_MEASURES)
    assert (out / "fig_regimes.png").stat().st_size > 10_000
    # the points that differ only in the demonstrations share π_init: pretrained once, reused twice
    assert log.count("pretrain: reused") == 2, log
    # another discriminator option: only the stages that read it (and evaluate) run again
    assert afd_mini.main(["--study=regimes", f"--out_dir={tmp_path / 'other'}", f"--cache={cache}", "--disc_steps=2",
                          *TINY]) == 0
    log = capsys.readouterr().err
    for stage in ("pretrain", "sft", "rkl_oracle", "pg_frozen"):
        assert log.count(f"{stage}: reused") == 7, (stage, log)
    for stage in ("rkl_seq", "rkl_tok", "js", "pg_control", "evaluate"):
        assert log.count(f"{stage}: reused") == 0, (stage, log)
    # the figure and the verdicts from the JSON alone
    res = subprocess.run([sys.executable, os.path.join(ROOT, "report.py"), "--regimes", str(out / "regimes.json"),
                          str(tmp_path / "again.png")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "| demonstrations | `rkl_seq` | off_support |" in res.stdout and (tmp_path / "again.png").exists()


# --study=smallest: the smallest model whose π_SFT learns the task (a class on slow laptops)

def _smallest(off_by_point):
    """A smallest-model study from {point: [off-support rate of seed 0, 1, ...]}."""
    return {"knobs": {"size": list(off_by_point)},
            "points": {p: {"runs": [{"seed": s, "policies": {"sft": {"off_support": x}}, "stage_seconds": {}}
                                    for s, x in enumerate(xs)]} for p, xs in off_by_point.items()}}


def test_smallest_study_sizes_are_below_the_default_in_order_of_parameters():
    import model   # the models' own parameter counts (GPTConfig's vocabulary: the order holds for any)
    count = lambda n_layer, n_embd: sum(p.numel() for p in model.GPT(model.GPTConfig(n_layer=n_layer,
                                                                                     n_embd=n_embd)).parameters())
    sizes, cfg = afd_mini.SMALLEST_SIZES, afd_mini.Config()
    params = [count(s["n_layer"], s["n_embd"]) for s in sizes]
    assert params == sorted(params) and max(params) < count(cfg.n_layer, cfg.n_embd)
    stages = [s.name for s in afd_mini.STUDIES["smallest"].stages]
    assert stages == ["pretrain", "sft", "evaluate"]


def test_smallest_learner_chooses_on_seeds_0_to_4_and_judges_on_5_to_9():
    dev_low = [0.10, 0.12, 0.11, 0.13, 0.12]
    s = metrics.smallest_learner(_smallest({"a": [0.3] * 10, "b": dev_low + [0.10, 0.11, 0.12, 0.10, 0.11],
                                            "c": [0.05] * 10}))
    assert s["chosen"] == "b" and s["verdict"] == "holds"   # "a" fails, "c" is larger: b is the first below
    s = metrics.smallest_learner(_smallest({"b": dev_low + [0.20, 0.21, 0.19, 0.22, 0.20]}))
    assert s["chosen"] == "b" and s["verdict"] == "does not hold"   # held-out seeds above the threshold
    s = metrics.smallest_learner(_smallest({"b": dev_low + [0.10, 0.20, 0.12, 0.19, 0.14]}))
    assert s["verdict"] == "inconclusive"
    s = metrics.smallest_learner(_smallest({"a": [0.3] * 5 + [0.01] * 5}))   # only held-out seeds learn
    assert s["chosen"] is None
    rows = metrics.smallest_learner(_smallest({"a": [0.3] * 5 + [0.01] * 5}))["rows"]
    assert rows[0]["dev"]["mean"] == pytest.approx(0.3) and rows[0]["heldout"]["mean"] == pytest.approx(0.01)
