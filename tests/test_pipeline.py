"""End-to-end tests of afd_mini.py: the --quick run, resuming, reusing cached stages, several seeds, bad input and
corrupt files.

The quick run is shared by the tests of this module (one pipeline run, then a resume), so the whole file
costs about two quick runs.

test_policies_are_far_from_the_expert_both_ways guards the KL estimators' wiring in stage_evaluate: an argument
swap or a sign flip makes a reported KL negative. (It replaces a test that the expert is at KL zero from
itself, which could not fail: stage_evaluate passes one tensor as both arguments for the expert.) The wiring
of each piece on hand-made inputs is in test_afd_mini.py."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import afd_mini
import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow   # every test runs afd_mini.py (most in a subprocess): the full suite only (pytest.ini)
POLICY_KEYS = ["forward_kl", "reverse_kl", "reverse_kl_support", "reverse_kl_off", "reverse_kl_on", "forward_kl_floor",
               "off_support", "mode_freq", "mode_entropy", "distinct", "gold_reward", "length", "se", "sampled"]


def afd(*args, cwd=ROOT, env=None, stdout=subprocess.PIPE):
    """afd_mini.py in a subprocess; env: variables to set in its environment; stdout: where its output goes."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "afd_mini.py"), *args], cwd=cwd, stdout=stdout,
                          stderr=subprocess.PIPE, encoding="utf-8", timeout=600, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """--quick, stopped after SFT, then rerun to the end: (out_dir, mtimes after the first call, second call).
    The second call shows progress as a log file gets it (stderr is a pipe here), and runs as on a Windows
    console of code page cp1252 with its output redirected to a file (`> stdout.log`, in out_dir): cp1252 streams
    (PYTHONIOENCODING), stdout a file. Both fill the test session's stage cache (conftest.py)."""
    out = str(tmp_path_factory.mktemp("quick"))
    first = afd("--quick", f"--out_dir={out}", "--stop_after=sft", "--progress=false")
    assert first.returncode == 0, first.stderr
    seed_dir = os.path.join(out, "seed_0")
    mtimes = {f: os.stat(os.path.join(seed_dir, f)).st_mtime_ns for f in os.listdir(seed_dir)}
    with open(os.path.join(out, "stdout.log"), "wb") as log:
        second = afd("--quick", f"--out_dir={out}", env={"PYTHONIOENCODING": "cp1252"}, stdout=log)
    assert second.returncode == 0, second.stderr
    return out, mtimes, second


def printed(out):
    """What the quick run's second call printed (its stdout.log), read as UTF-8."""
    with open(os.path.join(out, "stdout.log"), encoding="utf-8") as f:
        return f.read().splitlines()


def test_a_cp1252_console_redirected_to_a_file_gets_utf8(quick_run):
    """On Windows (cp1252) writing report.md and printing the summary into a file (`> runs.log`) raised
    UnicodeEncodeError, after the whole run. Here the run ends with status 0 (quick_run), and what it printed
    and report.md are UTF-8."""
    out, _, _ = quick_run
    assert "KL(β‖π)" in printed(out)[0] and "  init_sft " in "\n".join(printed(out))
    with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
        assert "π_SFT" in f.read()


def test_quick_ends_saying_its_numbers_are_a_smoke_test(quick_run):
    out, _, _ = quick_run
    assert printed(out)[-1] == report.QUICK_NOTE


def test_progress_off_a_terminal_is_a_few_plain_lines(quick_run):
    _, _, second = quick_run
    assert "\r" not in second.stderr, "carriage-return progress bars in a log file"
    assert "  pretrain:" not in second.stderr                   # skipped stages show nothing
    assert "  rkl_seq: " in second.stderr and len(second.stderr.splitlines()) < 200


def finite_leaves(tree, path="metrics"):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from finite_leaves(v, f"{path}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from finite_leaves(v, f"{path}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


def test_quick_run_writes_the_metrics_contract(quick_run):
    out, _, _ = quick_run
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        m = json.load(f)
    for name in ["expert", "init", "sft", "rkl_seq", "rkl_tok", "js", "rkl_seq_scalar", "rkl_oracle", "js_oracle",
                 "pg_control", "pg_frozen", "fkl_fairl", "fkl_iw", "fkl_oracle", "fkl_iw_oracle", "dpo", "spin",
                 "sft_short", "spin_short", "rl_init_sft", "extrapolated_0.5"]:
        assert name in m["policies"], f"policy {name} missing"
        for key in POLICY_KEYS:
            assert key in m["policies"][name], f"policies.{name}.{key} missing"
        assert 0.0 <= m["policies"][name]["off_support"] <= 1.0
    for world, scalar in [(m, ["pairwise_bt", "init_sft_scalar"]), (m["control"], [])]:
        for rm in ["init_sft", "init_demo", "sft_demo", *scalar, "init_sft_optimum", "init_demo_optimum",
                   "sft_demo_optimum", "gold"]:
            assert set(world["bon"][rm]) >= {"n", "kl", "gold_reward"}, f"bon.{rm} incomplete"
        for rm in ["init_sft", "init_demo", "sft_demo", *scalar[1:]]:
            assert set(world["reward_models"][f"{rm}_vs_optimum"]) == {"pearson", "spearman"}
    assert set(m["calibration"]) == {"rkl_seq", "rkl_tok", "js", "rkl_seq_scalar", "fkl_fairl", "fkl_iw"}
    for name in ("fkl_fairl", "fkl_iw", "fkl_oracle", "fkl_iw_oracle"):   # the forward-KL policies' weights' ESS
        ess = m["curves"]["adversarial"][name]["ess"]
        assert len(ess) == m["config"]["rl_iters"] and all(0 < e <= 1 for e in ess)
    for name in ("dpo", "spin", "spin_short"):   # likelihood displacement, and the exact probe before and after
        d = m["displacement"][name]
        runs = 1 if name == "dpo" else m["config"]["spin_iters"]
        assert len(d["chosen"]) == len(d["rejected"]) == runs
        assert all(len(v) == runs + 1 for v in d["probe"].values())
    assert 0 <= m["displacement"]["dpo"]["pairs"]["tied"] <= 1
    for c in m["calibration"].values():
        assert set(c) == {"pearson", "spearman", "auc_off_support", "spearman_learned", "pearson_learned",
                          "spearman_untrained"}
        assert -1 <= c["spearman"] <= 1 and (c["auc_off_support"] is None or 0 <= c["auc_off_support"] <= 1)
    for key in ["demonstrations", "stage_seconds", "config", "seed"]:
        assert key in m
    for path, value in finite_leaves(m):
        assert math.isfinite(value), f"{path} = {value} is not finite"


def kl_bernoulli(a, b):
    """KL(Bernoulli(a) ‖ Bernoulli(b))."""
    return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))


def test_policies_are_far_from_the_expert_both_ways(quick_run):
    """A lower bound on both KLs that the run's own off-support rate gives. Data processing on the indicator
    "off the expert's support" (its two-point push-forward): KL(π ‖ β) ≥ kl(π(off) ‖ β(off)) and
    KL(β ‖ π) ≥ kl(β(off) ‖ π(off)), kl between Bernoullis. β(off) ≤ eps (only the floor puts mass there), and
    π(off) ≥ a_lo, the measured rate minus 4 binomial standard errors over the n evaluation samples. For
    β(off) < π(off) both bounds fall as β(off) grows and rise with π(off), so kl(a_lo ‖ eps) and
    kl(eps ‖ a_lo) are lower bounds. A sign flip or an argument swap makes the reported KL negative."""
    out, _, _ = quick_run
    with open(os.path.join(out, "seed_0", "metrics.json"), encoding="utf-8") as f:
        m = json.load(f)
    eps, n = m["config"]["eps"], m["config"]["n_eval"] * m["config"]["eval_samples"]
    checked = []
    for name, p in m["policies"].items():
        a = p["off_support"]
        a_lo = a - 4 * math.sqrt(a * (1 - a) / n)
        if name == "expert" or a_lo <= eps:   # too close to the expert for this bound to say anything
            continue
        assert p["reverse_kl"] > kl_bernoulli(a_lo, eps), (name, p["reverse_kl"], a)
        assert p["forward_kl"] > kl_bernoulli(eps, a_lo), (name, p["forward_kl"], a)
        checked.append(name)
    assert "init" in checked, "test has no teeth: π_init (a base model) should be off the expert's support"


def test_best_of_n_by_gold_reward_never_decreases(quick_run):
    out, _, _ = quick_run
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        gold = json.load(f)["bon"]["gold"]
    assert gold["n"][0] == 1 and len(gold["n"]) >= 3
    assert all(b >= a - 1e-12 for a, b in zip(gold["gold_reward"], gold["gold_reward"][1:])), gold


def test_resume_skips_finished_stages(quick_run):
    out, mtimes, second = quick_run
    seed_dir = os.path.join(out, "seed_0")
    for f in ["pretrain.pt", "pretrain.json", "sft.pt", "sft.json"]:
        assert os.stat(os.path.join(seed_dir, f)).st_mtime_ns == mtimes[f], f"{f} was recomputed"
    assert "pretrain: done earlier, skipped" in second.stderr
    assert "sft: done earlier, skipped" in second.stderr
    assert "rkl_seq.json" not in mtimes and os.path.exists(os.path.join(seed_dir, "rkl_seq.json"))


def metrics_without_timing(out):
    """seed 0's metrics.json but its stage times and the options that change no number (afd_mini.Config.RUN_ONLY)."""
    with open(os.path.join(out, "seed_0", "metrics.json"), encoding="utf-8") as f:
        m = json.load(f)
    del m["stage_seconds"]
    m["config"] = {k: v for k, v in m["config"].items() if k not in afd_mini.Config.RUN_ONLY}
    return m


def test_same_seed_same_metrics_and_resuming_changes_nothing(quick_run, tmp_path):
    """An uninterrupted run with the same seed reproduces the interrupted-and-resumed one exactly."""
    out, _, _ = quick_run
    res = afd("--quick", f"--out_dir={tmp_path}", "--progress=false", "--cache=off")
    assert res.returncode == 0, res.stderr
    assert metrics_without_timing(out) == metrics_without_timing(str(tmp_path))


def test_a_run_of_reused_stages_writes_the_metrics_of_a_fresh_run(quick_run, tmp_path):
    """Another output directory, the same options: every stage comes from the cache, and metrics.json is the
    fresh run's (test_same_seed_same_metrics_and_resuming_changes_nothing: the resumed run equals a fresh one)."""
    out, _, _ = quick_run
    res = afd("--quick", f"--out_dir={tmp_path}", "--progress=false")
    assert res.returncode == 0, res.stderr
    for stage in ["pretrain", "sft", "rkl_seq", "reward_models", "control_sft", "control_best_of_n", "evaluate"]:
        assert f"seed 0 · {stage}: reused, same inputs as {out}" in res.stderr, res.stderr
    assert metrics_without_timing(str(tmp_path)) == metrics_without_timing(out)


def entry_of(cache, stage_json):
    """The cache entry holding the result that stage_json (a finished stage's .json) records."""
    with open(stage_json, encoding="utf-8") as f:
        fp = json.load(f)["fingerprint"]
    for name in os.listdir(cache):
        path = os.path.join(cache, name, "entry.json")
        if os.path.exists(path) and json.load(open(path, encoding="utf-8"))["fingerprint"] == fp:
            return os.path.join(cache, name)
    raise AssertionError(f"no cache entry for {stage_json}")


def test_corrupt_or_other_code_cache_entries_are_ignored_with_a_notice(quick_run, tmp_path):
    out, _, _ = quick_run
    cache = str(tmp_path / "cache")
    shutil.copytree(os.environ["AFD_MINI_CACHE"], cache)
    pretrain = entry_of(cache, os.path.join(out, "seed_0", "pretrain.json"))
    sft = entry_of(cache, os.path.join(out, "seed_0", "sft.json"))
    with open(os.path.join(pretrain, "pretrain.pt"), "r+b") as f:
        f.truncate(100)
    meta = json.load(open(os.path.join(sft, "entry.json"), encoding="utf-8"))
    with open(os.path.join(sft, "entry.json"), "w", encoding="utf-8") as f:
        json.dump({**meta, "fingerprint": "0" * 16}, f)   # as an entry written by other code looks
    res = afd("--quick", f"--out_dir={tmp_path / 'out'}", f"--cache={cache}", "--stop_after=sft", "--progress=false")
    assert res.returncode == 0, res.stderr
    assert f"seed 0 · pretrain: cache entry {pretrain} is corrupt, ignored" in res.stderr, res.stderr
    assert f"seed 0 · sft: cache entry {sft} is from another code version, ignored" in res.stderr, res.stderr
    assert "reused" not in res.stderr
    recomputed, original = (json.load(open(os.path.join(d, "seed_0", "sft.json"), encoding="utf-8"))
                            for d in (tmp_path / "out", out))
    assert recomputed["curve"] == original["curve"]


@pytest.mark.parametrize("name, stage", [("sft.pt", "sft"), ("rkl_seq.json", "rkl_seq"), ("rm_init_sft.pt",
                                                                                           "reward_models")])
def test_a_corrupt_result_file_is_one_line_naming_it_and_the_fix(quick_run, tmp_path, name, stage):
    out, _, _ = quick_run
    copy = tmp_path / "out"
    shutil.copytree(os.path.join(out, "seed_0"), copy / "seed_0")
    with open(copy / "seed_0" / name, "r+b") as f:
        f.truncate(20)
    res = afd("--quick", f"--out_dir={copy}", "--progress=false")
    lines = [line for line in res.stderr.strip().splitlines() if "done earlier" not in line]
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert name in lines[0] and f"--redo={stage}" in lines[0] and "Traceback" not in res.stderr, lines[0]


def test_recomputing_a_stage_forgets_the_stages_after_it(tmp_path):
    first = afd("--quick", f"--out_dir={tmp_path}", "--stop_after=pretrain", "--progress=false")
    assert first.returncode == 0, first.stderr
    stale = tmp_path / "seed_0" / "rkl_seq.json"   # a result computed from the π_SFT about to be replaced
    stale.write_text("{}", encoding="utf-8")
    again = afd("--quick", f"--out_dir={tmp_path}", "--redo=pretrain", "--stop_after=pretrain", "--progress=false")
    assert again.returncode == 0, again.stderr
    assert not stale.exists(), "a stage after a recomputed one must not be taken as done"


def test_bench_measures_the_evaluation_noise_and_the_discriminators(quick_run):
    """bench.py --eval_noise evaluates a finished seed again with other samples: what is exact does not move
    (off-support, mode entropy: spread 0), what is sampled does. --discriminators evaluates each q_φ exactly."""
    out, _, _ = quick_run
    bench = [sys.executable, os.path.join(ROOT, "bench.py"), "--json"]
    noise = subprocess.run([*bench, f"--eval_noise={os.path.join(out, 'seed_0')}", "--repeats=2",
                            "--policies=sft,rkl_seq"], capture_output=True, encoding="utf-8", timeout=600)
    assert noise.returncode == 0, noise.stderr
    table = json.loads(noise.stdout)["metrics"]
    for p in ("sft", "rkl_seq"):
        assert table[p]["off_support"]["exact_sd"] < 1e-9 and table[p]["mode_entropy"]["exact_sd"] < 1e-9
        assert table[p]["reverse_kl"]["sampled_sd"] > 0   # other samples, other Monte Carlo estimates
    disc = subprocess.run([*bench, f"--discriminators={os.path.join(out, 'seed_0')}"], capture_output=True,
                          encoding="utf-8", timeout=600)
    assert disc.returncode == 0, disc.stderr
    rows = json.loads(disc.stdout)
    assert set(rows) == {"π_SFT", "q_φ of rkl_seq", "q_φ of rkl_tok", "q_φ of js", "q_φ of fkl_fairl", "q_φ of fkl_iw"}
    assert all(0 <= r["off_support"] <= 1 and r["forward_kl_support"] > 0 for r in rows.values())


def test_report_and_figures(quick_run):
    out, _, _ = quick_run
    report = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    import re
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) >= 6, "report.md should embed every figure"
    for link in links:
        path = os.path.join(out, link)
        assert os.path.exists(path) and os.path.getsize(path) > 1000, f"figure {link} missing or empty"


def test_three_seeds_aggregate_and_judge_the_effects(quick_run):
    out, _, _ = quick_run
    res = afd("--quick", f"--out_dir={out}", "--seeds=3", "--progress=false")   # seed 0 resumes, 1 and 2 run
    assert res.returncode == 0, res.stderr
    runs = [json.load(open(os.path.join(out, f"seed_{s}", "metrics.json"), encoding="utf-8")) for s in (0, 1, 2)]
    top = json.load(open(os.path.join(out, "metrics.json"), encoding="utf-8"))
    assert top["seeds"] == [0, 1, 2]
    fields = {"effect", "condition", "verdict", "seeds_holding", "seeds", "diff_mean", "ci95"}
    judged = [e for e in top["effects"] if e["verdict"] != "not checked"]
    assert len(judged) == len(top["effects"]) > 20
    for e in judged:
        assert fields <= set(e) and e["seeds"] == 3 and 0 <= e["seeds_holding"] <= 3
        assert e["verdict"] in ("holds", "does not hold", "inconclusive")
        if e["condition"] != "all conditions":
            assert e["ci95"][0] <= e["diff_mean"] <= e["ci95"][1]
    mass = next(e for e in top["effects"] if e["effect"].endswith("than rkl_oracle"))
    diffs = [r["policies"]["rkl_oracle"]["forward_kl"] - r["policies"]["sft"]["forward_kl"] for r in runs]
    assert mass["diff_mean"] == pytest.approx(np.mean(diffs), abs=1e-9)
    text = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "/3 seeds" in text and "95% confidence intervals of the mean over 3 seeds" in text
    assert "expected effects over 3 seeds (paired 95% intervals)" in res.stdout
    for name in ["sft", "rkl_oracle"]:
        for key in ["forward_kl", "reverse_kl", "gold_reward"]:
            values = [r["policies"][name][key] for r in runs]
            assert top["policies"][name][key] == pytest.approx(np.mean(values), abs=1e-9)
            assert top["std"]["policies"][name][key] == pytest.approx(np.std(values, ddof=1), abs=1e-9)
    assert runs[0]["policies"]["sft"]["reverse_kl"] != runs[1]["policies"]["sft"]["reverse_kl"]
    assert "indicative" not in text


def test_a_config_file_must_be_an_object_of_known_options(tmp_path):
    for text, words in [("[1, 2]", ["JSON object", "list"]), ('{"pretrain_stesp": 3}', ["pretrain_stesp"])]:
        path = tmp_path / "config.json"
        path.write_text(text, encoding="utf-8")
        res = afd(f"--config={path}", f"--out_dir={tmp_path / 'out'}")
        lines = res.stderr.strip().splitlines()
        assert res.returncode != 0 and len(lines) == 1, res.stderr
        assert all(w in lines[0] for w in words), lines[0]
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, words", [
    (["--pretrain_stesp=3"], ["--pretrain_stesp", "did you mean", "--pretrain_steps"]),
    (["--pretrain_steps=many"], ["--pretrain_steps=many", "int"]),
    (["--device=tpu"], ["--device=tpu", "auto, cpu, cuda, mps"]),
    (["--q=1.5"], ["--q=1.5", "probability"]),
    (["--max_new_tokens=5"], ["--max_new_tokens=5", "26 tokens"]),
    (["--redo=sfft"], ["sfft", "stages"]),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, words):
    out = tmp_path / "out"
    res = afd(*args, f"--out_dir={out}")
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    assert not out.exists(), "bad input must not create the output directory"


def test_a_model_with_non_finite_weights_stops_its_stage_in_one_line(quick_run, tmp_path):
    """π_SFT's weights made NaN (as a diverged optimiser leaves them): the first stage that samples it stops with
    one line naming the stage, as a non-finite loss does, instead of torch.multinomial's traceback."""
    out, _, _ = quick_run
    copy = tmp_path / "out"
    shutil.copytree(os.path.join(out, "seed_0"), copy / "seed_0")
    ckpt = torch.load(copy / "seed_0" / "sft.pt", weights_only=False)
    for v in ckpt["state_dict"].values():
        v.fill_(float("nan"))
    torch.save(ckpt, copy / "seed_0" / "sft.pt")
    res = afd("--quick", f"--out_dir={copy}", "--progress=false", "--redo=rkl_seq", "--cache=off")
    lines = [line for line in res.stderr.strip().splitlines() if "done earlier" not in line]
    assert res.returncode == 1 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("afd_mini: stage rkl_seq: non-finite") and "smaller learning rate" in lines[0]


def test_without_the_control_world_its_stages_do_not_run(quick_run, tmp_path):
    res = afd("--quick", f"--out_dir={tmp_path}", "--progress=false", "--control=false")
    assert res.returncode == 0, res.stderr
    m = json.load(open(tmp_path / "seed_0" / "metrics.json", encoding="utf-8"))
    assert "control" not in m and not (tmp_path / "seed_0" / "control").exists()
    assert "control_sft" not in res.stderr and "seed 0 · evaluate: reused" in res.stderr


def test_the_gpu_precision_path_runs_on_a_cpu(tmp_path, monkeypatch):
    """--dtype=bfloat16 forces the GPU path's bf16 autocast on the CPU: every stage of the quick preset must run,
    its models' matmuls in bf16 (a forward hook on the LM head sees bf16), every loss in float32 (a loss computed
    in bf16 would be a precision bug of the GPU path), every number of metrics.json finite."""
    seen, losses = set(), set()
    hook = lambda module, args, out: seen.add(out.dtype)
    original = afd_mini.GPT.__init__

    def hooked_init(self, config):
        original(self, config)
        self.lm_head.register_forward_hook(hook)

    step = afd_mini.optimiser_step
    monkeypatch.setattr(afd_mini.GPT, "__init__", hooked_init)
    monkeypatch.setattr(afd_mini, "optimiser_step", lambda opt, model, loss, *a: losses.add(loss.dtype)
                        or step(opt, model, loss, *a))
    assert afd_mini.main(["--quick", "--dtype=bfloat16", f"--out_dir={tmp_path}", "--progress=false",
                          "--cache=off"]) == 0
    assert torch.bfloat16 in seen, "the models never ran in bf16: the precision path was not exercised"
    assert losses == {torch.float32}, f"a loss in {losses - {torch.float32}}"
    m = json.load(open(tmp_path / "metrics.json", encoding="utf-8"))
    for path, value in finite_leaves(m):
        assert math.isfinite(value), f"{path} = {value} is not finite"
