"""The command line (cli.py): every option's bad value caught before any work, in one line."""
import dataclasses
import os
import subprocess
import sys

import pytest

import afd_mini
import cli
import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One invalid value for every option of Config: a new option without one fails
# test_every_option_has_an_invalid_example, so that its checks are written with it.
A_FILE = "__a_file__"   # replaced by the path of an existing file
INVALID = dict(
    out_dir=A_FILE, seed="-1", seeds="0", device="tpu", dtype="float16", preset="huge", quick="maybe", redo="sfft", control="maybe",
    stop_after="sfft", progress="maybe", cache=A_FILE, clear_cache="maybe", sweep="q=0.5", study="regimez", q="1.5", q_base="-0.1",
    base_signature_p="2", signature_p="1.5", n_modes="6", eps="0", letters="", min_len="0", max_len="1", max_operand="-1",
    n_base="0", n_demo="8", n_pref="8", n_eval="0", max_new_tokens="5", n_layer="0", n_head="3", n_embd="30",
    pretrain_steps="0", pretrain_batch="0", pretrain_lr="0", sft_steps="0", sft_batch="0", sft_lr="-1",
    rl_iters="0", rl_prompts="0", group_size="1", ppo_epochs="0", clip_eps="0", pg_lr="0", kl_coef="-1",
    dpo_kl_coef="0", dpo_steps="0", dpo_batch="0", dpo_lr="nan", dpo_warmup="-1", spin_kl_coef="0", spin_lr="-1e-5",
    spin_iters="0", sft_short_steps="0", probe_prompts="0",
    rm_kl_coef="-0.5", disc="mlp", disc_steps="0", disc_lr="0", disc_warmup="-1", disc_nll="-1", flat_tol="-1", disc_reward_first="maybe", rm_samples="0", rm_steps="0",
    rm_batch="1", rm_lr="0", bon_prompts="300", bon_max_n="3", bon_plausibility="-1", eval_samples="0")
FIELDS = [f.name for f in dataclasses.fields(afd_mini.Config)]


def parse_args(argv):
    return runner.parse_args(argv, afd_mini.STAGES, afd_mini.Config, afd_mini.PRESETS)


def test_every_option_has_an_invalid_example():
    assert set(INVALID) == set(FIELDS)


@pytest.mark.parametrize("key", FIELDS)
def test_every_bad_option_is_one_line_exit_2_and_writes_nothing(key, tmp_path, capsys):
    """afd_mini.main with one bad value: exit status 2, exactly one line on stderr naming the option, nothing on
    stdout, no exception escaping (no traceback), no output directory. Constraints between options included:
    --group_size=1 and --rm_batch=1 used to pass and fail minutes later inside a stage."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory", encoding="utf-8")
    out = tmp_path / "out"
    value = str(a_file) if INVALID[key] == A_FILE else INVALID[key]
    argv = [f"--{key}={value}"] + ([f"--out_dir={out}"] if key != "out_dir" else [])
    assert afd_mini.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and captured.out == "", captured.err
    assert lines[0].startswith("afd_mini: error: ") and f"--{key}" in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_a_bad_option_from_the_shell_has_no_traceback(tmp_path):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "afd_mini.py"), "--rm_batch=1",
                          f"--out_dir={tmp_path / 'out'}"], capture_output=True, encoding="utf-8", timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_help_whose_reader_stops_early_is_no_traceback():
    """python afd_mini.py --help | head -3 used to end in a traceback: the run went on without options. Here the
    reader is gone before the first line."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "afd_mini.py"), "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == b"", err.decode()


@pytest.mark.parametrize("arg, words", [
    ("--pg_lr=inf", ["--pg_lr=inf", "finite"]),
    ("--kl_coef=nan", ["--kl_coef=nan", "finite"]),
    ("--q=nan", ["--q=nan", "finite"]),
    ("--out_dir=FILE/sub", ["--out_dir=", "is a file, not a directory"]),
    ("--cache=FILE/sub/deeper", ["--cache=", "is a file, not a directory"]),
])
def test_non_finite_numbers_and_a_directory_under_a_file_are_refused(arg, words, tmp_path, capsys):
    """Infinite and NaN values parse as floats; --pg_lr=inf used to create the output directory and die in
    torch.multinomial. A directory under a file used to raise NotADirectoryError."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory", encoding="utf-8")
    out = tmp_path / "out"
    argv = [arg.replace("FILE", str(a_file))] + ([f"--out_dir={out}"] if "out_dir" not in arg else [])
    assert afd_mini.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and captured.out == "", captured.err
    assert all(w in lines[0] for w in words), lines[0]
    assert not out.exists() and a_file.read_text(encoding="utf-8") == "not a directory"


PROC = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc here")


@pytest.mark.parametrize("arg, words", [
    ("--out_dir=", ["--out_dir=", "empty"]),
    ("--cache=", ["--cache=", "auto, off or a directory"]),
    pytest.param("--out_dir=/proc/afd", ["/proc/afd: cannot write there", "another --out_dir"], marks=PROC),
    ("--seeds=1000000000000", ["--seeds=1000000000000", "1 to 10000"]),
    ("--seed=99999999999999999999", ["--seed=99999999999999999999", "at most 4294967295"]),
    ("--group_size=100000000", ["--rl_prompts=16 × --group_size=100000000: 1600000000 samples", "at most 4194304"]),
    ("--eval_samples=100000", ["--n_eval=256 × --eval_samples=100000: 25600000 samples", "at most 4194304"]),
    ("--bon_max_n=1048576", ["--bon_prompts=64 × --bon_max_n=1048576: 67108864 samples", "at most 4194304"]),
    ("--rm_samples=100000000", ["--rm_samples=100000000: 100000000 samples", "at most 4194304"]),
])
def test_bad_paths_and_absurd_counts_are_refused_and_create_nothing(arg, words, tmp_path, monkeypatch, capsys):
    """--out_dir= and --out_dir=/proc/afd used to be FileNotFoundError tracebacks, --cache= filled the current
    directory with cache entries, --seeds=10^12 was a MemoryError, --seed=10^20 an overflow in a stage, and a batch
    of samples no machine holds a run of minutes first. Nothing is created, in the current directory either."""
    monkeypatch.chdir(tmp_path)
    argv = [arg] + (["--out_dir=out"] if "out_dir" not in arg else [])
    assert afd_mini.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and captured.out == "", captured.err
    assert lines[0].startswith("afd_mini: error: ") and all(w in lines[0] for w in words), lines[0]
    assert os.listdir(tmp_path) == []


def test_a_policy_gradient_batch_that_cannot_fit_in_memory_is_refused_with_its_estimate(tmp_path, monkeypatch, capsys):
    """--group_size=100000 used to be accepted and run for minutes: a batch of 1,600,000 responses whose logits
    alone need 86.4 GiB (16 × 100000 × 48 tokens × 302 × 4 bytes). Here on a machine of 16 GiB, whatever this one
    has; what the project runs still fits."""
    monkeypatch.setattr(cli, "memory_bytes", lambda: 16 * 2**30)
    for arg, given in [("--group_size=100000", "--rl_prompts=16 × --group_size=100000"),
                       ("--rl_prompts=100000", "--rl_prompts=100000 × --group_size=4")]:
        assert afd_mini.main([arg, f"--out_dir={tmp_path / 'out'}"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"afd_mini: error: {given}: "), lines
        assert "more than this machine's 16.0 GiB of memory" in lines[0], lines[0]
        assert not (tmp_path / "out").exists()
    with pytest.raises(cli.UsageError, match=r"need about 86\.4 GiB \(× 302 tokens"):
        parse_args(["--group_size=100000"])
    for argv in ([], ["--preset=gpu"], ["--quick"]):
        parse_args(argv)
