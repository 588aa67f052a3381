"""Tests of report.py on hand-made metrics (fake_metrics.py): the error bars, report.md and its figures,
reading the seed folders back."""
import json
import os
import re
import subprocess
import sys

import pytest

import figures
import metrics
import report
from fake_metrics import fake_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_error_bars_are_confidence_intervals_from_three_seeds():
    runs = [fake_run(s) for s in range(4)]
    mean, std = metrics.aggregate(runs)
    err, label = report.error_bars(std, 4)
    assert "95%" in label
    s = std["policies"]["sft"]["forward_kl"]
    assert err["policies"]["sft"]["forward_kl"] == pytest.approx(3.182 * s / 2)   # t_{0.975, 3} · s / √4
    err2, label2 = report.error_bars(std, 2)
    assert err2 is std and "standard deviation" in label2

# -----------------------------------------------------------------------------
# the written report

def test_write_report_writes_markdown_and_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "DPI", 40)  # small images: the test checks files, not looks
    runs = [fake_run(0), fake_run(1)]
    path = report.write_report(str(tmp_path), runs)
    assert path == os.path.join(str(tmp_path), "report.md")
    text = open(path, encoding="utf-8").read()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == sorted(["fig_intuition.png", "fig_modes.png", "fig_divergence_plane.png", "fig_plane_slide.png",
                                    "fig_bon.png", "fig_bon_picks.png", "fig_extrapolation.png",
                                    "fig_calibration.png", "fig_curves.png", "fig_displacement.png"])
    for link in links:
        png = tmp_path / link
        assert png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))  # temp names were renamed
    # every effect row carries its seed count and its verdict: two seeds are indicative only
    for e in metrics.effects(runs):
        assert f"| {e['effect']} | {e['condition']} |" in text
    assert "Two seeds: indicative only; run --seeds=5" in text
    assert text.count("2/2 seeds") > 10 and "| indicative |" in text
    assert "π_SFT (forward KL) (`sft`)" in text and "±" in text
    assert "Error bars: ± one sample standard deviation over 2 seeds" in text

def test_write_report_without_optional_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "DPI", 40)
    run = fake_run(0, control=False)
    del run["calibration_points"]
    path = report.write_report(str(tmp_path), [run])
    text = open(path, encoding="utf-8").read()
    assert "fig_calibration.png skipped" in text and "No control world" in text
    assert "±" not in text.split("## Expected effects")[0]  # one seed: no spread shown
    assert not (tmp_path / "fig_calibration.png").exists()
    assert (tmp_path / "fig_bon.png").stat().st_size > 1000

def test_load_runs_reads_the_seed_folders(tmp_path):
    for seed in [1, 0]:
        (tmp_path / f"seed_{seed}").mkdir()
        (tmp_path / f"seed_{seed}" / "metrics.json").write_text(json.dumps(fake_run(seed)), encoding="utf-8")
    (tmp_path / "metrics.json").write_text("{}", encoding="utf-8")  # the pipeline's aggregate: not a seed
    runs = report.load_runs(str(tmp_path))
    assert [r["seed"] for r in runs] == [0, 1]
    assert runs[1] == json.loads(json.dumps(fake_run(1)))


def test_the_slide_plane_has_only_the_handouts_few_policies(tmp_path, monkeypatch):
    """fig_plane_slide.png (docs/HANDOUT.md) draws SLIDE_POLICIES only, each once in its legend."""
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig))
    mean, _ = metrics.aggregate([fake_run(0)])
    figures.fig_divergence_plane(str(tmp_path / "x.png"), mean, None, only=figures.SLIDE_POLICIES)
    labels = drawn[0].axes[0].get_legend_handles_labels()[1]
    assert len(labels) == len([p for p in figures.SLIDE_POLICIES if p in mean["policies"]]) <= 7


@pytest.mark.slow
def test_report_py_without_a_run_says_so_in_one_line(tmp_path):
    for argv in ([str(tmp_path)], [], ["--bad"]):
        r = subprocess.run([sys.executable, "report.py", *argv], cwd=ROOT, capture_output=True, encoding="utf-8")
        assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_results_tables_has_every_policy_every_effect_on_three_seed_sets_and_every_stage():
    """python report.py --results OUT_DIR: docs/RESULTS.md's tables from a run's seeds."""
    runs = [fake_run(s) for s in range(10)]
    text = report.results_tables(runs)
    mean, _ = metrics.aggregate(runs)
    from methods import POLICIES
    assert [p.name for p in POLICIES if p.name in mean["policies"]]   # the fake runs have some of them
    for p in (p.name for p in POLICIES if p.name in mean["policies"]):
        assert f"(`{p}`) |" in text
    assert "| effect | condition | seeds 0–4 | seeds 5–9 | seeds 0–9 |" in text
    assert len([l for l in text.splitlines() if l.count("/5 |") and l.count("/10 |")]) > 0
    for stage in runs[0]["stage_seconds"]:
        assert f"| `{stage}` |" in text
