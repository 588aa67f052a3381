"""What a --quick run's summary says of its numbers (on hand-made metrics, fake_metrics.py)."""
import metrics
import report
from fake_metrics import fake_run


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
