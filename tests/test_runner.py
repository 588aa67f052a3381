"""Tests of runner.py: what a stage's fingerprint covers (the options it reads, the stages it consumes, the code
it runs), running a stage table (skip, reuse, redo, stop), and the output directory's lock. The pipeline's own
resume, reuse and corrupt-file behaviour, end to end, is in test_pipeline.py."""
import dataclasses
import errno
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import afd_mini
import common
import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -----------------------------------------------------------------------------
# fingerprints of the pipeline's stages: what each stage's result depends on

def keys_of(cfg, seed=0):
    """Every stage's key, as run_seed computes them (the control world's stages on its own options)."""
    keys = {}
    for stage in afd_mini.STAGES:
        c = common.control_config(cfg) if stage.world == "control" else cfg
        run = SimpleNamespace(cfg=c, seed=seed, device=torch.device("cpu"))
        keys[stage.name] = runner.stage_key(stage, run, keys, afd_mini.EVERY_STAGE)
    return keys


def changed(**change):
    default = afd_mini.Config()
    a, b = keys_of(default), keys_of(dataclasses.replace(default, **change))
    return {s for s in afd_mini.STAGE_NAMES if a[s] != b[s]}


RL = {"rkl_seq", "rkl_tok", "js", "rkl_seq_scalar", "rkl_oracle", "js_oracle", "pg_control", "pg_frozen", "fkl_fairl",
      "fkl_iw", "fkl_oracle", "fkl_iw_oracle"}


@pytest.mark.parametrize("change, stages", [
    (dict(kl_coef=0.5), RL | {"evaluate"}),
    (dict(rm_kl_coef=0.5), {"rl_init_sft", "evaluate"}),
    (dict(eval_samples=4), {"evaluate"}),
    (dict(bon_max_n=16), {"best_of_n", "control_best_of_n"}),
    (dict(rm_steps=10), {"reward_models", "best_of_n", "rl_init_sft", "control_reward_models", "control_best_of_n",
                         "evaluate"}),
    (dict(disc="scalar"), {"rkl_seq", "rkl_tok", "js", "pg_control", "fkl_fairl", "fkl_iw", "reward_models", "best_of_n", "rl_init_sft",
                           "control_reward_models", "control_best_of_n", "evaluate"}),
    (dict(dpo_kl_coef=0.5), {"dpo", "evaluate"}),
    (dict(spin_kl_coef=0.5), {"spin", "spin_short", "evaluate"}),
    (dict(dpo_steps=50), {"dpo", "spin", "spin_short", "evaluate"}),
    (dict(spin_iters=3), {"spin", "spin_short", "evaluate"}),
    (dict(sft_short_steps=50), {"sft_short", "spin_short", "evaluate"}),
    (dict(bon_plausibility=2.0), {"best_of_n", "control_best_of_n"}),
    (dict(sft_steps=10), set(afd_mini.STAGE_NAMES) - {"pretrain", "sft_short", "spin_short"}),
    (dict(q=0.5), set(afd_mini.STAGE_NAMES)),
    (dict(signature_p=0.5), set(afd_mini.STAGE_NAMES)),   # the control world: through π_init, which reads the world
    (dict(n_layer=2), set(afd_mini.STAGE_NAMES)),
    (dict(progress=False, out_dir="elsewhere", seeds=3, redo="sft", cache="off", control=False), set()),
])
def test_changing_an_option_changes_exactly_the_stages_that_read_it_and_those_downstream(change, stages):
    assert changed(**change) == stages


def test_every_option_that_changes_results_is_in_some_stage_fingerprint():
    """An option a stage reads but the stage table does not declare would let a stale result be reused: every
    option outside RUN_ONLY must change some key, but the device and the seed (the key takes them from the run,
    checked below) and --control (it chooses which stages run, checked in test_pipeline.py)."""
    default = afd_mini.Config()
    for f in dataclasses.fields(afd_mini.Config):
        if f.name in afd_mini.Config.RUN_ONLY | {"device", "seed", "control"}:
            continue
        other = {bool: lambda v: not v, str: lambda v: v + "x", int: lambda v: v + 2, float: lambda v: v / 2 if v else 1.0}
        value = other[type(f.default)](getattr(default, f.name))
        assert changed(**{f.name: value}), f"--{f.name} is in no stage's fingerprint (afd_mini.STAGES)"
    assert keys_of(default, seed=1)["pretrain"] != keys_of(default)["pretrain"]


def test_a_stage_consumes_only_stages_before_it_and_writes_its_own_files():
    seen, files = set(), {}
    for stage in afd_mini.STAGES:
        assert set(stage.consumes) <= seen, f"{stage.name} consumes a stage that runs after it"
        seen.add(stage.name)
        for f in stage.writes:
            assert (stage.world, f) not in files, f"{f} written by {files[stage.world, f]} and {stage.name}"
            files[stage.world, f] = stage.name


# -----------------------------------------------------------------------------
# the code version: the modules whose code computes the stages' results

def loaded_by(module):
    """The files of this project that `import module` loads, listed by Python itself."""
    listing = subprocess.run([sys.executable, "-c", f"import sys, {module}; print('\\n'.join(sorted(m.__file__ "
                              "for m in list(sys.modules.values()) if getattr(m, '__file__', None))))"],
                             cwd=ROOT, capture_output=True, encoding="utf-8", check=True).stdout.split("\n")
    return {os.path.realpath(f) for f in listing if os.path.isabs(f) and os.path.realpath(f).startswith(ROOT + os.sep)}


@pytest.mark.slow
def test_the_code_hash_covers_the_pipelines_modules_and_not_the_runners_side():
    """runner.code_files follows the pipeline's imports but not the runner's: every module `import afd_mini` loads
    that `import runner` does not is hashed (objectives.py left out would let a student's edited objective reuse
    the results of the old code), and nothing the runner alone needs (the command line, metrics.json, the report,
    its figures, the exercises) is: editing a figure's caption must not recompute a stage."""
    hashed = {os.path.realpath(f) for f in runner.code_files(os.path.join(ROOT, "afd_mini.py"))}
    assert loaded_by("afd_mini") - loaded_by("runner") <= hashed, "imported by the pipeline but not hashed"
    path = lambda *names: {os.path.join(ROOT, n) for n in names}
    assert path("afd_mini.py", "objectives.py", "model.py", "stats.py", "methods.py", "evaluation.py",
                "data/world.py", "data/tokenizer.py") <= hashed, "test has no teeth"
    assert os.path.join(ROOT, "data", "afd.tiktoken") in hashed, "the tokenizer's ranks compute results too"
    assert not path("runner.py", "cli.py", "metrics.py", "report.py", "figures.py", "exercises.py") & hashed


def test_editing_an_objective_changes_the_code_version(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "__pycache__", "out*"))
    version = runner.code_version(str(copy / "afd_mini.py"))
    assert version == runner.code_version(os.path.join(ROOT, "afd_mini.py"))
    with open(copy / "objectives.py", "a", encoding="utf-8") as f:
        f.write("\n# a student's edit\n")
    runner.code_version.cache_clear()
    assert runner.code_version(str(copy / "afd_mini.py")) != version


@pytest.mark.slow
def test_a_caption_or_report_edit_reuses_every_stage_and_an_objectives_edit_recomputes_them(tmp_path):
    """In a copy of the project: a tiny run; a figure's caption, a line of the report and a comment in the command
    line, the runner, metrics.py and the exercises edited, and a run in another output directory reuses every
    stage from the cache; objectives.py edited, and the next recomputes every stage."""
    copy = tmp_path / "copy"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "__pycache__", "out*"))

    def run(out):
        res = subprocess.run([sys.executable, "afd_mini.py", "--quick", "--pretrain_steps=5", "--sft_steps=5",
                              "--stop_after=sft", "--progress=false", f"--cache={tmp_path / 'cache'}",
                              f"--out_dir={tmp_path / out}"], cwd=copy, capture_output=True, encoding="utf-8",
                             timeout=300)
        assert res.returncode == 0, res.stderr
        return res.stderr

    def edit(name, old, new):
        text = (copy / name).read_text(encoding="utf-8")
        assert old in text, f"{name} no longer holds {old!r}: edit something else"
        (copy / name).write_text(text.replace(old, new, 1), encoding="utf-8")

    stages = ["pretrain", "sft"]
    run("first")
    edit("figures.py", '"fig_modes.png": "expected: ', '"fig_modes.png": "expected here: ')
    edit("report.py", '["## Notes", ""]', '["## Notes and caveats", ""]')
    for name in ["cli.py", "runner.py", "metrics.py", "exercises.py"]:
        with open(copy / name, "a", encoding="utf-8") as f:
            f.write("\n# an edit on the runner's side\n")
    err = run("second")
    for stage in stages:
        assert f"seed 0 · {stage}: reused, same inputs as {tmp_path / 'first' / 'seed_0'}" in err, err
    with open(copy / "objectives.py", "a", encoding="utf-8") as f:
        f.write("\n# a student's edit\n")
    err = run("third")
    assert "reused" not in err, err
    for stage in stages:
        assert f"seed 0 · {stage}: cache entry" in err and "is from another code version, ignored" in err, err
        assert re.search(rf"seed 0 · {stage}: [0-9.]+ s$", err, re.M), err


# -----------------------------------------------------------------------------
# running a stage table: a toy pipeline of three stages that count their calls

class ToyRun:
    def __init__(self, out, cfg, seed=0):
        self.cfg, self.seed, self.device, self.dir = cfg, seed, torch.device("cpu"), os.path.join(out, "seed_0")
        self.begun = []

    def begin(self, name):
        self.begun.append(name)


def toy_stages(calls):
    def stage(name, value):
        def fn(run):
            calls.append(name)
            torch.save({"value": value(run.cfg)}, os.path.join(run.dir, name + ".pt"))
            return {"value": value(run.cfg)}
        return fn
    return [runner.Stage("a", stage("a", lambda c: c.x), ("x",), (), ("a.pt",)),
            runner.Stage("b", stage("b", lambda c: c.y), ("y",), ("a",), ("b.pt",)),
            runner.Stage("c", stage("c", lambda c: 0), (), ("b",), ())]


def toy_cfg(**kw):
    return SimpleNamespace(**{"x": 1, "y": 2, "redo": "", "stop_after": "", "cache": "off", **kw})


def toy(out, cfg, calls, lines):
    run = ToyRun(out, cfg)
    return runner.run_seed(toy_stages(calls), lambda s: run, cfg, 0, (), runner.__file__, lines.append)


def test_run_seed_skips_reuses_redoes_and_stops(tmp_path):
    calls, lines = [], []
    out, cache = str(tmp_path / "out"), str(tmp_path / "cache")
    results = toy(out, toy_cfg(cache=cache), calls, lines)
    assert calls == ["a", "b", "c"] and results["b"]["value"] == 2 and "fingerprint" in results["b"]
    toy(out, toy_cfg(cache=cache), calls, lines)                      # the same again: everything skipped
    assert calls == ["a", "b", "c"] and "seed 0 · b: done earlier, skipped" in lines
    toy(out, toy_cfg(cache=cache, y=5), calls, lines)                 # y changes b, and c downstream of it
    assert calls[3:] == ["b", "c"]
    toy(str(tmp_path / "elsewhere"), toy_cfg(cache=cache), calls, lines)   # another directory: from the cache
    assert calls[5:] == [] and f"seed 0 · a: reused, same inputs as {os.path.join(out, 'seed_0')}" in lines
    assert torch.load(tmp_path / "elsewhere" / "seed_0" / "b.pt")["value"] == 2
    toy(out, toy_cfg(redo="b"), calls, lines)                         # --redo=b: b and everything after it
    assert calls[5:] == ["b", "c"]
    assert toy(out, toy_cfg(stop_after="a", redo="all"), calls, lines) is None
    assert calls[7:] == ["a"] and not os.path.exists(os.path.join(out, "seed_0", "b.json"))


def test_a_stage_that_sees_a_non_finite_number_fails_in_one_line(tmp_path):
    def bad(run):
        raise FloatingPointError("non-finite loss (nan) at step 3")
    stage = runner.Stage("bad", bad, (), (), ())
    run = ToyRun(str(tmp_path), toy_cfg())
    with pytest.raises(runner.StageError, match=r"^stage bad: non-finite loss \(nan\) at step 3; try a smaller"):
        runner.run_seed([stage], lambda s: run, toy_cfg(), 0, (), runner.__file__, print)
    assert not os.path.exists(os.path.join(run.dir, "bad.json"))


@pytest.mark.parametrize("where", ["under_a_file", pytest.param("/proc/afd", marks=pytest.mark.skipif(
    not os.path.isdir("/proc/self"), reason="no /proc here"))])
def test_a_cache_that_cannot_be_written_is_one_notice_and_the_run_goes_on(where, tmp_path):
    """It used to be a notice at every stage of every seed (36 lines)."""
    (tmp_path / "a_file").write_text("", encoding="utf-8")
    cache = str(tmp_path / "a_file" / "cache") if where == "under_a_file" else where
    calls, lines = [], []
    for out in ("one", "two"):   # two seeds' worth of stages
        assert toy(str(tmp_path / out), toy_cfg(cache=cache), calls, lines)["b"]["value"] == 2
    notices = [line for line in lines if "cache" in line]
    assert calls == ["a", "b", "c"] * 2 and len(notices) == 1, lines
    assert notices[0].startswith(f"cache {cache} is not writable (") and \
        notices[0].endswith("); finished stages are not cached this run"), notices


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc here")
@pytest.mark.slow
def test_the_pipeline_with_an_unwritable_cache_says_so_once_per_run(tmp_path, capsys):
    argv = [f"--out_dir={tmp_path}", "--quick", "--pretrain_steps=5", "--sft_steps=5", "--stop_after=sft",
            "--progress=false", "--cache=/proc/afd"]
    assert afd_mini.main(argv) == 0
    err = capsys.readouterr().err
    notice = ("cache /proc/afd is not writable ([Errno 2] No such file or directory: '/proc/afd'); finished stages "
              "are not cached this run")
    assert [line for line in err.splitlines() if "cache" in line] == [notice], err
    assert afd_mini.main([*argv, "--redo=sft"]) == 0   # the next run (a notebook's) tries again, and says so again
    assert [line for line in capsys.readouterr().err.splitlines() if "cache" in line] == [notice]


# -----------------------------------------------------------------------------
# one run at a time in an output directory

@pytest.mark.slow
def test_a_second_run_on_a_locked_output_directory_is_refused_and_a_crash_leaves_no_lock(tmp_path):
    held = runner.lock_out_dir(str(tmp_path))
    res = subprocess.run([sys.executable, os.path.join(ROOT, "afd_mini.py"), f"--out_dir={tmp_path}", "--quick"],
                         capture_output=True, encoding="utf-8", timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "in use by another afd_mini run" in lines[0], res.stderr
    assert not (tmp_path / "seed_0").exists()
    held.close()
    crash = subprocess.run([sys.executable, "-c", f"import runner, os; runner.lock_out_dir({str(tmp_path)!r}); "
                            "os.kill(os.getpid(), 9)"], cwd=ROOT, timeout=120)
    assert crash.returncode != 0                      # killed while holding the lock ...
    runner.lock_out_dir(str(tmp_path)).close()        # ... which the system released


@pytest.mark.slow
def test_a_finished_run_releases_its_lock_in_the_same_process(tmp_path):
    """main() called twice on one output directory (a notebook, a script): the first call's lock is gone."""
    argv = [f"--out_dir={tmp_path}", "--quick", "--stop_after=pretrain", "--progress=false", "--cache=off"]
    assert afd_mini.main(argv) == 0
    assert afd_mini.main(argv) == 0
    assert json.load(open(tmp_path / "seed_0" / "config.json", encoding="utf-8"))["n_layer"] == 2


# -----------------------------------------------------------------------------
# a full disk: one line naming the folder, nothing half-written, the lock released, and the rerun resumes

def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def torch_save_on_a_full_disk(*args, **kwargs):   # one of the things torch.save raises instead of ENOSPC
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


@pytest.mark.slow
@pytest.mark.parametrize("error", [no_space, torch_save_on_a_full_disk])
def test_a_full_disk_is_one_line_leaves_no_half_written_file_nor_the_lock_and_the_rerun_resumes(error, tmp_path,
                                                                                                 monkeypatch, capsys):
    """The disk fills while sft saves its checkpoint: that used to be a traceback of torch.save's RuntimeError with
    sft.pt.tmp left behind. torch's words seldom say the disk is full: the disk itself is asked (here it says so)."""
    real = common.save_checkpoint

    def save(path, model, **extra):
        if not path.endswith("sft.pt"):
            return real(path, model, **extra)
        with open(path + ".tmp", "wb") as f:
            f.write(b"half a checkpoint")
        error()
    monkeypatch.setattr(common, "save_checkpoint", save)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=0))   # full, as it would be
    out = tmp_path / "out"
    argv = [f"--out_dir={out}", "--quick", "--pretrain_steps=5", "--sft_steps=5", "--stop_after=sft",
            "--progress=false", "--cache=off"]
    assert afd_mini.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        f"afd_mini: {out / 'seed_0'}: the disk is full (stage sft: "), err
    assert err.strip().endswith("free some space, then rerun the same command to resume"), err
    assert not glob.glob(str(out / "**" / "*.tmp"), recursive=True) and not (out / "seed_0" / "sft.pt").exists()
    runner.lock_out_dir(str(out)).close()   # released
    monkeypatch.undo()                       # space freed
    assert afd_mini.main(argv) == 0
    assert "seed 0 · pretrain: done earlier, skipped" in capsys.readouterr().err
    assert torch.load(out / "seed_0" / "sft.pt", weights_only=False)["kind"] == "gpt"


def test_a_full_disk_outside_a_stage_is_one_line_too(tmp_path, monkeypatch, capsys):
    """Writing config.json, metrics.json or the report: the output directory named, exit status 1."""
    monkeypatch.setattr(runner, "write_json", no_space)
    out = tmp_path / "out"
    assert afd_mini.main([f"--out_dir={out}", "--quick", "--cache=off"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"afd_mini: {out}: the disk is full (OSError: [Errno 28] No space left on device); free some "
                     "space, then rerun the same command to resume"], lines
    runner.lock_out_dir(str(out)).close()


def test_torchs_words_alone_are_not_taken_for_a_full_disk(tmp_path):
    """The same RuntimeError on a disk with room is a bug to see whole, not a full disk."""
    stage = runner.Stage("s", lambda run: torch_save_on_a_full_disk(), (), (), ())
    run = ToyRun(str(tmp_path), toy_cfg())
    with pytest.raises(RuntimeError, match="unexpected pos"):
        runner.run_seed([stage], lambda s: run, toy_cfg(), 0, (), runner.__file__, print)


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB disk (tmpfs), mounted for the test: needs root and mount."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or not allowed)")
    yield where
    subprocess.run(["umount", "--lazy", str(where)], check=True)   # lazy: even while a failed write holds a file


def test_a_really_full_disk(small_disk):
    """torch.save on a real full disk (its RuntimeError, not ENOSPC): one line, no .tmp left, and once space is
    freed the rerun resumes where it stopped."""
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * (3 << 19))   # 1.5 MiB of the 2
    calls, lines = [], []

    def big(run):
        calls.append("big")
        path = os.path.join(run.dir, "big.pt")   # written as model.save_checkpoint writes: elsewhere, then renamed
        torch.save(torch.zeros(1 << 18), path + ".tmp")   # 1 MiB
        os.replace(path + ".tmp", path)
        return {}
    stages = [toy_stages(calls)[0], runner.Stage("big", big, (), ("a",), ("big.pt",))]
    run = ToyRun(str(small_disk / "out"), toy_cfg())
    with pytest.raises(runner.StageError, match=rf"^{re.escape(run.dir)}: the disk is full \(stage big: RuntimeError: "):
        runner.run_seed(stages, lambda s: run, toy_cfg(), 0, (), runner.__file__, lines.append)
    assert calls == ["a", "big"] and sorted(os.listdir(run.dir)) == ["a.json", "a.pt"]
    filler.unlink()
    runner.run_seed(stages, lambda s: run, toy_cfg(), 0, (), runner.__file__, lines.append)
    assert calls == ["a", "big", "big"] and "seed 0 · a: done earlier, skipped" in lines
