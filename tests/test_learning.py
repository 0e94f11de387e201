"""finalbn.stats.learning: the inverse power-law fit, the bootstrap of the images needed, where the
final BN stops mattering and the planner's sentence, against curves and frames made by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from finalbn.stats.learning import Curve, bn_matters_until, fit_curve, n_needed, sentence

A, B, C = 0.1, 0.8, 0.7  # true curve: asymptote 0.9; Y(1) = 0.1, Y(40) = 0.9 - 0.8 * exp(-0.7 * 3.68888) = 0.8395
NS = np.array([1.0, 2.0, 5.0, 10.0, 20.0, 40.0])
N_AT_080 = 19.5042  # (0.8 / (0.9 - 0.8)) ** (1 / 0.7) = 8 ** 1.428571 = exp(2.970631)
N_AT_085 = 52.4913  # (0.8 / 0.05) ** (1 / 0.7) = 16 ** 1.428571 = exp(3.960841)
NOISE = np.array([0.01, -0.01, 0.005, -0.005, 0.0, 0.0])  # symmetric: sums to 0


def _true(n):
    return (1 - A) - B * np.asarray(n, dtype=float) ** -C


def _replicates(reps=8, sd=0.01, seed=1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [("final BN", n, r, _true(n) + rng.normal(0, sd)) for r in range(reps) for n in NS]
    return pd.DataFrame(rows, columns=["method", "n", "replicate", "f1"])


def _paired(gain: dict[float, float]) -> pd.DataFrame:
    """'none' at 0.5 for every (n, replicate); 'final BN' at 0.5 + gain[n] + NOISE[replicate]."""
    rows = []
    for n, g in gain.items():
        for r, e in enumerate(NOISE):
            rows += [("none", n, r, 0.5), ("final BN", n, r, 0.5 + g + e)]
    return pd.DataFrame(rows, columns=["method", "n", "replicate", "f1"])


def test_fit_curve_recovers_known_parameters_and_the_analytic_inverse():
    curve = fit_curve(NS, _true(NS))
    assert curve.params == pytest.approx({"a": A, "b": B, "c": C}, abs=1e-3)
    assert curve.asymptote == pytest.approx(0.9, abs=1e-3)
    assert curve.predict([1.0, 40.0]) == pytest.approx([0.1, 0.8395], abs=1e-3)
    assert curve.n_for(0.8) == pytest.approx((B / ((1 - A) - 0.8)) ** (1 / C), rel=1e-3)
    assert curve.n_for(0.8) == pytest.approx(N_AT_080, rel=1e-3)
    assert curve.where(curve.n_for(0.8)) == "within" and (curve.n_min, curve.n_max, curve.n_points) == (1, 40, 6)


def test_fit_curve_weights_silence_an_outlier():
    y = _true(NS)
    y[-1] = 0.3  # an outlier at n = 40
    w = np.array([1, 1, 1, 1, 1, 1e-10])
    assert fit_curve(NS, y, weights=w).params == pytest.approx({"a": A, "b": B, "c": C}, abs=1e-3)
    assert abs(fit_curve(NS, y).a - A) > 0.05  # unweighted, the outlier drags the asymptote down


def test_n_for_above_the_asymptote_is_inf_and_below_the_range_is_flagged():
    curve = Curve(a=A, b=B, c=C, n_min=1.0, n_max=40.0, n_points=6)
    assert curve.n_for(0.8) == pytest.approx(N_AT_080, rel=1e-5)
    assert curve.n_for(0.95) == math.inf and curve.n_for(0.9) == math.inf  # asymptote 0.9: never reached
    low = curve.n_for(0.05)  # (0.8 / 0.85) ** (1 / 0.7) = 0.91704: below the smallest n measured
    assert low == pytest.approx(0.91704, rel=1e-4) and curve.where(low) == "below"
    assert curve.where(N_AT_085) == "above"
    assert Curve(a=0.2, b=0.0, c=0.5, n_min=1, n_max=40, n_points=6).n_for(0.7) == 0.0  # flat at 0.8


def test_fit_curve_rejects_what_it_cannot_fit_in_one_line():
    y = _true(NS[:4])
    with pytest.raises(ValueError, match="at least 3 distinct n, got 2") as e:
        fit_curve([1, 1, 2, 2], [0.1, 0.2, 0.3, 0.4])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="at least 3 distinct n, got 2"):
        fit_curve(NS[:4], [y[0], math.nan, y[2], math.nan])  # NaN points are dropped first
    assert fit_curve(NS[:4], [y[0], y[1], y[2], math.nan]).n_points == 3
    with pytest.raises(ValueError, match="every y is NaN"):
        fit_curve(NS, np.full(6, math.nan))
    with pytest.raises(ValueError, match="> 0"):
        fit_curve([0, 1, 2], [0.1, 0.2, 0.3])


def test_n_needed_interval_contains_the_true_n():
    need = n_needed(_replicates(), "final BN", 0.80, n_boot=200)
    assert need["ci_low"] <= N_AT_080 <= need["ci_high"] and need["ci_low"] <= need["n"] <= need["ci_high"]
    assert need["n"] == pytest.approx(N_AT_080, rel=0.1)
    assert need["share_never"] == 0.0 and need["n_boot"] == 200 and need["n_replicates"] == 8
    assert not need["extrapolated"] and not need["below_measured"] and need["n_max"] == 40


def test_n_needed_beyond_the_measured_range_is_extrapolated():
    need = n_needed(_replicates(), "final BN", 0.85, n_boot=200)
    assert need["extrapolated"] and need["n"] == pytest.approx(N_AT_085, rel=0.15)
    assert need["ci_low"] <= N_AT_085 <= need["ci_high"]


def test_n_needed_above_the_asymptote_has_an_unbounded_interval():
    never = n_needed(_replicates(), "final BN", 0.95, n_boot=200)
    assert never["n"] == math.inf and never["ci_high"] == math.inf and never["share_never"] == 1.0
    assert never["asymptote_low"] <= 0.9 <= never["asymptote_high"]
    # at the asymptote itself about half the refits never reach it: the upper end is inf, the lower is not
    edge = n_needed(_replicates(), "final BN", never["asymptote"], n_boot=200)
    assert 0.025 < edge["share_never"] < 1 and edge["ci_high"] == math.inf and math.isfinite(edge["ci_low"])


def test_n_needed_with_one_replicate_has_no_interval():
    need = n_needed(_replicates(reps=1, sd=0.0), "final BN", 0.80, n_boot=200)
    assert need["n"] == pytest.approx(N_AT_080, rel=1e-3) and math.isnan(need["ci_low"])
    assert need["note"] == "one replicate: no interval" and need["n_boot"] == 0


def test_n_needed_and_bn_matters_until_name_the_missing_column():
    frame = _replicates().rename(columns={"replicate": "seed"})
    for call in (lambda: n_needed(frame, "final BN", 0.8, n_boot=10), lambda: bn_matters_until(frame)):
        with pytest.raises(ValueError, match=r"frame lacks columns \['replicate'\]") as e:
            call()
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no rows for method 'rival'"):
        n_needed(_replicates(), "rival", 0.8, n_boot=10)
    with pytest.raises(ValueError, match="duplicate"):
        n_needed(pd.concat([_replicates(), _replicates().head(1)]), "final BN", 0.8, n_boot=10)


def test_bn_matters_until_the_gain_vanishes():
    frame = _paired({1: 0.3, 2: 0.3, 5: 0.3, 10: 0.3, 20: 0.0, 40: 0.0})
    m = bn_matters_until(frame)
    assert m["M"] == 20 and m["verdict"] == "matters_until"
    rows = m["rows"].set_index("n")
    assert rows.loc[1, "estimate"] == pytest.approx(0.3) and rows.loc[40, "estimate"] == pytest.approx(0.0, abs=1e-12)
    assert list(rows["covers_zero"]) == [False] * 4 + [True] * 2 and set(rows["pairs"]) == {6}
    # covering 0 at 5 but not at 10 does not count: M is where it covers 0 from then on
    assert bn_matters_until(_paired({1: 0.3, 5: 0.0, 10: 0.3, 20: 0.0, 40: 0.0}))["M"] == 20


def test_bn_matters_until_it_matters_everywhere():
    m = bn_matters_until(_paired(dict.fromkeys([1, 2, 5, 10, 20, 40], 0.3)))
    assert m["M"] is None and m["verdict"] == "matters_at_largest"
    wide = bn_matters_until(_paired({1: 0.3, 20: 0.0, 40: 0.006}), alpha=0.5)  # a 50 % interval excludes 0.006
    assert wide["M"] is None and bool(wide["rows"]["covers_zero"].iloc[1])


def _need(**over) -> dict:
    need = {
        "metric": "f1",
        "n": 22.3,
        "ci_low": 13.2,
        "ci_high": 60.1,
        "share_never": 0.0,
        "asymptote": 0.93,
        "asymptote_low": 0.88,
        "asymptote_high": 0.97,
        "extrapolated": False,
        "below_measured": False,
        "n_min": 1.0,
        "n_max": 40.0,
        "note": "",
    }
    return {**need, **over}


def test_sentence_variants_carry_their_numbers():
    until = bn_matters_until(_paired({1: 0.3, 2: 0.3, 5: 0.3, 10: 0.3, 20: 0.0, 40: 0.0}))
    always = bn_matters_until(_paired(dict.fromkeys([1, 2, 5, 10, 20, 40], 0.3)))
    s = sentence(0.80, 0.01, _need(), until, "the final BN")
    assert s.startswith("To reach minority F1 0.80 at a 1 % prevalence with the final BN, label about 23 defect")
    assert "(95 % interval 14–61)" in s and "beyond 20 images the final BN no longer matters" in s
    s = sentence(0.80, 0.01, _need(n=math.inf, ci_high=math.inf, asymptote=0.71, asymptote_low=0.65, asymptote_high=0.78), always, "the final BN")  # fmt: skip
    assert "does not reach 0.80: its asymptote is 0.71 (95 % interval 0.65–0.78)" in s
    assert "the final BN matters at every n measured (1 to 40" in s
    s = sentence(0.85, 0.05, _need(n=52.49, ci_low=45.1, ci_high=58.2, extrapolated=True), until, "the final BN")
    assert "5 % prevalence" in s and "about 53 defect images (95 % interval 46–59; extrapolated beyond the 40 measured)" in s  # fmt: skip
    s = sentence(0.80, 0.01, _need(ci_high=math.inf, share_never=0.12), until, "the final BN")
    assert "(95 % interval 14 to unbounded: 12 % of bootstrap fits never reach 0.80)" in s
    s = sentence(0.80, 0.01, _need(ci_low=math.nan, ci_high=math.nan, note="one replicate: no interval"), until, "BN")
    assert "label about 23 defect images (one replicate: no interval)" in s
    with pytest.raises(ValueError, match="prevalence"):
        sentence(0.8, 1.5, _need(), until, "BN")
