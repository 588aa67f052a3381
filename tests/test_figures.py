"""Tests of figures.py: the intuition figure's fits (forward KL covers both modes, reverse KL seeks one). The
figures themselves are drawn in test_report.py."""
import numpy as np
import pytest

import figures


def test_forward_kl_covers_reverse_kl_seeks():
    grid = np.linspace(-6, 6, 241)
    modes = (-2.0, 2.0)
    target = figures.bimodal_target(grid, modes, width=0.6)
    mu_f, sigma_f = figures.fit_gaussian(target, grid, "forward")
    mu_r, sigma_r = figures.fit_gaussian(target, grid, "reverse")
    assert modes[0] + 0.5 < mu_f < modes[1] - 0.5  # between the modes
    assert sigma_f > 2 * sigma_r  # spread over both
    assert min(abs(mu_r - m) for m in modes) < 0.2  # on one mode
    assert sigma_r == pytest.approx(0.6, abs=0.1)  # and only as wide as it

