"""finalbn.stats.inference: the t interval, Holm's adjustment and the detectable difference against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from finalbn.stats.inference import ZERO_TOL, detectable_difference, holm, t_interval


def test_t_interval_by_hand():
    x = np.array([0.4, 0.2, 0.1, 0.45])
    r = t_interval(x)
    half = sps.t.ppf(0.975, 3) * x.std(ddof=1) / 2
    assert r["n"] == 4 and r["estimate"] == pytest.approx(x.mean())
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((x.mean() - half, x.mean() + half))
    assert r["p"] == pytest.approx(sps.ttest_1samp(x, 0).pvalue)
    assert r["note"] == ""


def test_t_interval_edge_cases():
    assert t_interval(np.array([0.3]))["note"] == "one replicate: no interval"
    assert t_interval(np.zeros(3))["p"] == 1.0
    same = t_interval(np.full(3, 0.2))
    assert same["note"] == "all differences equal" and same["p"] == 0.0
    assert same["ci_low"] == same["ci_high"] == pytest.approx(0.2)
    empty = t_interval(np.array([math.nan]))  # non-finite differences are no replicates
    assert empty["n"] == 0 and math.isnan(empty["estimate"]) and empty["note"] == "no replicate has both configurations"
    assert t_interval(np.array([0.1, 0.1 + ZERO_TOL / 10, 0.1]))["note"] == "all differences equal"


def test_holm_by_hand_and_nan_left_out():
    p = np.array([0.01, math.nan, 0.04, 0.03])
    out = holm(p)
    # sorted finite p: 0.01, 0.03, 0.04 -> x3, x2, x1, then made monotone
    assert out[0] == pytest.approx(0.03) and out[3] == pytest.approx(0.06) and out[2] == pytest.approx(0.06)
    assert math.isnan(out[1])
    assert np.isnan(holm(np.array([math.nan, math.nan]))).all()


def test_detectable_difference_by_the_noncentral_t():
    # 10 paired differences, SD 1: the effect a two-sided t test at 5 % finds with 80 % power is
    # about 0.996 SD (power computed from the noncentral t distribution)
    d = detectable_difference(1.0, 10)
    tq = sps.t.ppf(0.975, 9)
    nc = d * math.sqrt(10)
    power = sps.nct.sf(tq, 9, nc) + sps.nct.cdf(-tq, 9, nc)
    assert power == pytest.approx(0.8, abs=1e-6) and d == pytest.approx(0.996, abs=0.001)
    assert detectable_difference(0.05, 10) == pytest.approx(0.05 * d)
    assert math.isnan(detectable_difference(1.0, 1)) and math.isnan(detectable_difference(math.nan, 5))
