"""A class's runs pooled into one report (python report.py pool OUT_DIR RUN_DIR ...), on hand-made metrics
(fake_metrics.py), and what a --quick run's summary says of its numbers."""
import json
import os

import pytest

import figures
import metrics
import report
from fake_metrics import fake_run


def student_run(runs, seed, folder=None, **config):
    """runs/<folder>/seed_<seed>/metrics.json, as `python afd_mini.py --seed=<seed> --out_dir=runs/<folder>` writes
    it; config: options that differ from fake_run's."""
    run = fake_run(seed)
    run["config"].update(out_dir=str(runs / str(folder if folder is not None else seed)), seed=seed, **config)
    path = runs / str(folder if folder is not None else seed) / f"seed_{seed}" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(run), encoding="utf-8")
    return run


def test_a_class_pools_its_seeds_into_one_report_with_paired_intervals(tmp_path, monkeypatch, capsys):
    """Three students' runs (seeds 2, 0, 1; one on CUDA, one with progress off: options that change no result) given
    as a pattern, which PowerShell leaves to the program to expand: the K = 3 report, as one run of --seeds=3."""
    monkeypatch.setattr(figures, "DPI", 40)
    runs = tmp_path / "runs"
    made = [student_run(runs, 2, device="cuda"), student_run(runs, 0), student_run(runs, 1, progress=False)]
    out = runs / "class"
    assert report.pool_command([str(out), str(runs / "*")]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "expected effects over 3 seeds (paired 95% intervals):" in captured.out
    top = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert top["seeds"] == [0, 1, 2]
    expected = metrics.combine(sorted(made, key=lambda r: r["seed"]))
    assert top["effects"] == json.loads(json.dumps(expected["effects"]))
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "Seeds 0, 1, 2 (K = 3)" in text and "95% confidence intervals of the mean over 3 seeds" in text
    assert report.run_dirs([str(runs / "*")]) == [str(runs / s) for s in "012"], \
        "pooling again must leave the pooled folder out"


@pytest.mark.parametrize("case, words", [
    ("config", ["runs/0 and ", "runs/1 are runs of different configurations (--q=0.7 and --q=0.5)",
                "pool runs of one configuration"]),
    ("seed", ["seed 1 is in both ", "runs/1 and ", "runs/again", "their own --seed=K"]),
    ("unfinished", ["runs/empty: no finished run in it"]),
    ("out_dir", ["runs/0 holds a run of its own", "pool into a new directory"]),
    ("usage", ["usage: python report.py pool OUT_DIR RUN_DIR"]),
])
def test_pooling_refuses_runs_it_cannot_pool_in_one_line(tmp_path, capsys, case, words):
    """Runs of two configurations, one seed twice, a run that has not finished, a run's own folder as OUT_DIR, no
    RUN_DIR: one line on stderr naming what and where, exit status 2, nothing written."""
    runs = tmp_path / "runs"
    student_run(runs, 0, q=0.7)
    student_run(runs, 1, q=0.5 if case == "config" else 0.7)
    if case == "seed":
        student_run(runs, 1, folder="again", q=0.7)
    (runs / "empty" / "seed_2").mkdir(parents=True)   # stopped before its metrics.json
    out = str(runs / "0") if case == "out_dir" else str(tmp_path / "class")
    dirs = {"seed": ["1", "again"], "unfinished": ["0", "empty"]}.get(case, ["0", "1"])
    args = [out] + [str(runs / d) for d in dirs] * (case != "usage")
    assert report.pool_command(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and captured.out == "", captured.err
    words = [w.replace("/", os.sep) for w in words]
    assert lines[0].startswith("report: error: ") and all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "class").exists() and not (runs / "0" / "report.md").exists()


def test_a_quick_summary_ends_saying_its_numbers_are_a_smoke_test():
    """--quick's models are too small to learn the task (π_SFT mostly off the expert's support): its summary says
    so in its last line; another preset's does not."""
    for preset, last in [("quick", report.QUICK_NOTE), ("default", None)]:
        runs = [fake_run(s) for s in (0, 1)]
        for run in runs:
            run["config"]["preset"] = preset
        lines = report.summary(metrics.combine(runs), "out").splitlines()
        assert (lines[-1] == report.QUICK_NOTE) == (last is not None), lines[-1]
    assert "smoke test" in report.QUICK_NOTE and "without --quick" in report.QUICK_NOTE
