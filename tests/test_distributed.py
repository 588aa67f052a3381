"""Many runs at once (runner.Ranks, runner.launch, cli.sweep_points): seeds spread over torchrun's processes give
exactly the numbers of one process with the same thread count per process, a failing rank stops the run with its
one line, and a sweep runs every value × every seed, reusing the stages that do not read its knob."""
import json
import os
import subprocess
import sys

import pytest

import afd_mini

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow   # every test starts afd_mini.py in a subprocess: the full suite only (pytest.ini)
QUICK = ["--quick", "--progress=false"]


def afd(*args, env=None, launcher=()):
    return subprocess.run([*launcher, sys.executable if not launcher else os.path.join(ROOT, "afd_mini.py"),
                           *([os.path.join(ROOT, "afd_mini.py")] if not launcher else []), *args], cwd=ROOT,
                          capture_output=True, encoding="utf-8", timeout=600, env={**os.environ, **(env or {})})


TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")


def without_timing(path):
    m = json.load(open(path, encoding="utf-8"))
    m.pop("stage_seconds", None)
    m.get("std", {}).pop("stage_seconds", None)
    m["config"] = {k: v for k, v in m["config"].items() if k != "out_dir"}
    return m


def test_two_processes_write_the_numbers_of_one_process_with_their_thread_count(tmp_path):
    """torchrun --nproc_per_node=2 on this CPU gives each rank half the cores (one thread on 2 cores); one process
    with OMP_NUM_THREADS=1 computes with the same thread count, so every number agrees, per seed and aggregated."""
    threads = max(1, (os.cpu_count() or 1) // 2)
    one = afd(*QUICK, "--seeds=2", f"--out_dir={tmp_path / 'one'}", "--cache=off", env={"OMP_NUM_THREADS": str(threads)})
    assert one.returncode == 0, one.stderr
    two = afd(*QUICK, "--seeds=2", f"--out_dir={tmp_path / 'two'}", "--cache=off", launcher=TORCHRUN)
    assert two.returncode == 0, two.stderr
    for f in ["seed_0/metrics.json", "seed_1/metrics.json", "metrics.json"]:
        assert without_timing(tmp_path / "one" / f) == without_timing(tmp_path / "two" / f), f
    assert two.stdout.count("outputs:") == 1, "rank 0 alone writes the summary"
    assert (tmp_path / "two" / "report.md").exists()


def test_a_failing_rank_stops_the_run_with_its_one_line(tmp_path):
    """Seed 1 (rank 1's) has a corrupt π_init; seed 0 (rank 0's) is fine. The run ends, with exit status 1 and
    rank 1's one line, instead of rank 0 waiting for it for ever."""
    out = tmp_path / "out"
    first = afd(*QUICK, "--seeds=2", f"--out_dir={out}", "--stop_after=pretrain", "--cache=off", launcher=TORCHRUN)
    assert first.returncode == 0, first.stderr
    with open(out / "seed_1" / "pretrain.pt", "r+b") as f:
        f.truncate(20)
    res = afd(*QUICK, "--seeds=2", f"--out_dir={out}", "--cache=off", launcher=TORCHRUN)
    lines = [line for line in res.stderr.splitlines() if line.startswith("afd_mini:")]
    assert res.returncode == 1 and len(lines) == 1, res.stderr[-3000:]
    assert "seed_1" in lines[0] and "pretrain.pt" in lines[0] and "(rank 1 of 2)" in lines[0], lines[0]
    # torchrun reports a child's non-zero exit with a traceback of its own launcher; none comes from our code
    assert f'File "{ROOT}' not in res.stderr and "StageError" not in res.stderr


def test_a_sweep_runs_every_value_and_seed_and_reuses_what_the_knob_does_not_change(tmp_path):
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    res = afd(*QUICK, "--seeds=2", "--sweep=eval_samples=1,2", f"--out_dir={out}", f"--cache={cache}")
    assert res.returncode == 0, res.stderr
    sweep = json.load(open(out / "sweep.json", encoding="utf-8"))
    assert sweep["knobs"] == ["eval_samples"] and [p["values"] for p in sweep["points"]] == \
        [{"eval_samples": 1}, {"eval_samples": 2}]
    for p in sweep["points"]:
        top = json.load(open(out / p["folder"] / "metrics.json", encoding="utf-8"))
        assert p["seeds"] == [0, 1] and top["config"]["eval_samples"] == p["values"]["eval_samples"]
        assert [e["verdict"] for e in p["effects"]] == [e["verdict"] for e in top["effects"]]
    assert (out / "fig_sweep.png").stat().st_size > 1000 and "verdicts at eval_samples=1 | eval_samples=2" in res.stdout
    # the second value recomputes evaluate alone: the only stage that reads eval_samples
    first = str(out / "eval_samples=1")
    for seed in (0, 1):
        for stage in ["pretrain", "sft", "rkl_seq", "spin", "reward_models", "control_best_of_n"]:
            assert f"seed {seed} · {stage}: reused, same inputs as {first}/seed_{seed}" in res.stderr, (seed, stage)
        assert f"seed {seed} · evaluate: reused" not in res.stderr
    again = afd(*QUICK, "--seeds=2", "--sweep=eval_samples=1,2", f"--out_dir={out}", f"--cache={cache}")
    assert again.returncode == 0 and again.stderr.count("done earlier, skipped") == 2 * 2 * len(afd_mini.STAGES), again.stderr[-2000:]


@pytest.mark.parametrize("sweep, words", [
    ("eval_smaples=1,2", ["eval_smaples", "not an option", "did you mean eval_samples"]),
    ("q=0.5,high", ["--q=high", "float"]),
    ("progress=true,false", ["--progress changes no result"]),
    ("q=0.5", ["two or more different values"]),
    ("q=0.5,1.5", ["--q=1.5", "probability"]),
    ("q=0.5,0.6/q=0.7,0.8", ["two or more different values once"]),
])
def test_a_bad_sweep_is_one_line_before_any_work(tmp_path, sweep, words):
    res = afd(*QUICK, f"--sweep={sweep}", f"--out_dir={tmp_path / 'out'}")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "out").exists()
