"""The command line and the run's guards: every option's bad value caught before any work (cli.py), stage
fingerprints (what a stage's result depends on), the output directory's lock."""
import dataclasses
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import afd_mini
import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One invalid value for every option of Config: a new option without one fails
# test_every_option_has_an_invalid_example, so that its checks are written with it.
A_FILE = "__a_file__"   # replaced by the path of an existing file
INVALID = dict(
    out_dir=A_FILE, seed="-1", seeds="0", device="tpu", preset="huge", quick="maybe", redo="sfft", control="maybe",
    stop_after="sfft", progress="maybe", cache=A_FILE, clear_cache="maybe", q="1.5", q_base="-0.1",
    base_signature_p="2", signature_p="1.5", eps="0", letters="", min_len="0", max_len="1", max_operand="-1",
    n_base="0", n_demo="8", n_pref="8", n_eval="0", max_new_tokens="5", n_layer="0", n_head="3", n_embd="30",
    pretrain_steps="0", pretrain_batch="0", pretrain_lr="0", sft_steps="0", sft_batch="0", sft_lr="-1",
    rl_iters="0", rl_prompts="0", group_size="1", ppo_epochs="0", clip_eps="0", pg_lr="0", kl_coef="-1",
    rm_kl_coef="-0.5", disc="mlp", disc_steps="0", disc_lr="0", disc_warmup="-1", rm_samples="0", rm_steps="0",
    rm_batch="1", rm_lr="0", bon_prompts="300", bon_max_n="3", eval_samples="0")
FIELDS = [f.name for f in dataclasses.fields(afd_mini.Config)]


def test_every_option_has_an_invalid_example():
    assert set(INVALID) == set(FIELDS)


@pytest.mark.parametrize("key", FIELDS)
def test_every_bad_option_is_one_line_exit_2_and_writes_nothing(key, tmp_path, capsys):
    """afd_mini.main with one bad value: exit status 2, exactly one line on stderr naming the option, nothing on
    stdout, no exception escaping (no traceback), no output directory. Constraints between options included:
    --group_size=1 and --rm_batch=1 used to pass and fail minutes later inside a stage."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    out = tmp_path / "out"
    value = str(a_file) if INVALID[key] == A_FILE else INVALID[key]
    argv = [f"--{key}={value}"] + ([f"--out_dir={out}"] if key != "out_dir" else [])
    assert afd_mini.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and captured.out == "", captured.err
    assert lines[0].startswith("afd_mini: error: ") and f"--{key}" in lines[0], lines[0]
    assert not out.exists()


def test_a_bad_option_from_the_shell_has_no_traceback(tmp_path):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "afd_mini.py"), "--rm_batch=1",
                          f"--out_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# -----------------------------------------------------------------------------
# fingerprints: what each stage's result depends on

def keys_of(cfg, seed=0):
    run = SimpleNamespace(cfg=cfg, seed=seed, device=torch.device("cpu"))
    keys = {}
    for stage in afd_mini.STAGES:
        keys[stage] = afd_mini.stage_key(run, stage, keys)
    return keys


def changed(**change):
    default = afd_mini.Config()
    a, b = keys_of(default), keys_of(dataclasses.replace(default, **change))
    return {s for s in afd_mini.STAGES if a[s] != b[s]}


RL = {"rkl_seq", "rkl_tok", "js", "rkl_seq_scalar", "rkl_oracle", "js_oracle"}


@pytest.mark.parametrize("change, stages", [
    (dict(kl_coef=0.5), RL | {"evaluate"}),
    (dict(rm_kl_coef=0.5), {"rl_init_sft", "evaluate"}),
    (dict(eval_samples=4), {"evaluate"}),
    (dict(bon_max_n=16), {"best_of_n", "control"}),
    (dict(rm_steps=10), {"reward_models", "best_of_n", "rl_init_sft", "control", "evaluate"}),
    (dict(disc="scalar"), {"rkl_seq", "rkl_tok", "js", "reward_models", "best_of_n", "rl_init_sft", "control",
                           "evaluate"}),
    (dict(sft_steps=10), set(afd_mini.STAGES) - {"pretrain"}),
    (dict(q=0.5), set(afd_mini.STAGES)),
    (dict(n_layer=2), set(afd_mini.STAGES)),
    (dict(control=False), {"control"}),
    (dict(progress=False, out_dir="elsewhere", seeds=3, redo="sft", cache="off"), set()),
])
def test_changing_an_option_changes_exactly_the_stages_that_read_it_and_those_downstream(change, stages):
    assert changed(**change) == stages


def test_every_option_that_changes_results_is_in_some_stage_fingerprint():
    """An option a stage reads but reads() does not declare would let a stale result be reused: every option
    outside RUN_ONLY (but the device and the seed, which the key takes from the run) must change some key."""
    default = afd_mini.Config()
    for f in dataclasses.fields(afd_mini.Config):
        if f.name in afd_mini.RUN_ONLY | {"device", "seed"}:   # the seed: run.seed, checked below
            continue
        other = {bool: lambda v: not v, str: lambda v: v + "x", int: lambda v: v + 2, float: lambda v: v / 2}
        value = other[type(f.default)](getattr(default, f.name))
        assert changed(**{f.name: value}), f"--{f.name} is in no stage's fingerprint (afd_mini.reads)"
    assert keys_of(default, seed=1)["pretrain"] != keys_of(default)["pretrain"]


# -----------------------------------------------------------------------------
# one run at a time in an output directory

def test_a_second_run_on_a_locked_output_directory_is_refused_and_a_crash_leaves_no_lock(tmp_path):
    held = cli.lock_out_dir(str(tmp_path))
    res = subprocess.run([sys.executable, os.path.join(ROOT, "afd_mini.py"), f"--out_dir={tmp_path}", "--quick"],
                         capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "in use by another afd_mini run" in lines[0], res.stderr
    assert not (tmp_path / "seed_0").exists()
    held.close()
    crash = subprocess.run([sys.executable, "-c", f"import cli, os; cli.lock_out_dir({str(tmp_path)!r}); "
                            "os.kill(os.getpid(), 9)"], cwd=ROOT, timeout=120)
    assert crash.returncode != 0                      # killed while holding the lock ...
    cli.lock_out_dir(str(tmp_path)).close()           # ... which the system released


def test_a_finished_run_releases_its_lock_in_the_same_process(tmp_path):
    """main() called twice on one output directory (a notebook, a script): the first call's lock is gone."""
    argv = [f"--out_dir={tmp_path}", "--quick", "--stop_after=pretrain", "--progress=false", "--cache=off"]
    assert afd_mini.main(argv) == 0
    assert afd_mini.main(argv) == 0

