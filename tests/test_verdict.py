"""The curve-shape rule on synthetic per-seed curves with known shapes."""

import numpy as np
import pytest

from mamba_hubert.analysis.verdict import CurveVerdict, curve_verdict


def noisy_curve(shape, n_seeds=5, noise=0.02, split_sd=0.0, seed=0):
    """per_seed[l][s] = shape[l] + a per-seed offset shared by every position (the seed's split, sd `split_sd`)
    + independent noise (sd `noise`)."""
    rng = np.random.default_rng(seed)
    shape = np.asarray(shape, dtype=float)
    offsets = split_sd * rng.standard_normal(n_seeds)
    return (shape[:, None] + offsets[None, :] + noise * rng.standard_normal((len(shape), n_seeds))).tolist()


def test_falls_then_rises():
    result = curve_verdict(noisy_curve([1.0, 0.6, 0.3, 0.5, 0.9]))
    assert result.verdict == "falls then rises"
    assert result.argmin == 2
    assert result.fall_mean == pytest.approx(0.7, abs=0.05) and result.rise_mean == pytest.approx(0.6, abs=0.05)
    assert 0 < result.fall_stderr < 0.05 and 0 < result.rise_stderr < 0.05


def test_falls():
    result = curve_verdict(noisy_curve([1.0, 0.7, 0.5, 0.42, 0.4]))
    assert result.verdict == "falls"
    assert result.argmin == 4 and abs(result.rise_mean) < 0.03


def test_rises():
    result = curve_verdict(noisy_curve([0.3, 0.3, 0.5, 0.8, 1.0]))
    assert result.verdict == "rises"
    assert result.argmin in (0, 1)


def test_flat():
    assert curve_verdict(noisy_curve([0.5] * 6)).verdict == "flat"


def test_a_fall_smaller_than_the_noise_is_flat():
    """A mean fall of 0.1 nats (above min_change) on which the seeds disagree: per-seed falls 0.4, -0.2, 0.3, -0.1,
    0.1 have a standard error of 0.11, so the fall is under t(0.975, 4 df) = 2.78 standard errors: flat. At
    alpha 0.4 (t = 0.27) it counts."""
    first = [0.9, 0.3, 0.8, 0.4, 0.6]
    per_seed = [first, [a - d for a, d in zip(first, [0.4, -0.2, 0.3, -0.1, 0.1])]]
    result = curve_verdict(per_seed)
    assert result.verdict == "flat"
    assert result.argmin == 1
    assert result.fall_mean == pytest.approx(0.1) and result.fall_stderr == pytest.approx(0.114, abs=0.001)
    assert curve_verdict(per_seed, alpha=0.4).verdict == "falls"


def test_a_consistent_change_below_min_change_is_flat():
    """A fall of 0.03 nats in every seed is many standard errors but below min_change (0.05): flat; with a
    smaller min_change the same curve falls."""
    curve = noisy_curve([0.53, 0.5, 0.5, 0.5, 0.5], noise=0.001)
    assert curve_verdict(curve).verdict == "flat"
    assert curve_verdict(curve, min_change=0.01).verdict == "falls"


def test_seeds_are_paired_across_positions():
    """Each seed's split moves its whole curve (sd 0.5), far more than the fall of 0.2, while the fall itself is
    the same in every seed: the paired differences see it."""
    assert curve_verdict(noisy_curve([0.7, 0.6, 0.5], split_sd=0.5, noise=0.01)).verdict == "falls"


def test_flat_noisy_curves_rarely_get_a_shape():
    """Noise far above min_change (sd 0.1, 5 positions, 3 seeds): a shape is reported in under 12% of 500 draws.
    Choosing each seed's minimum from its own values (no leave-one-out) and 2 standard errors gave about 35%."""
    shapes = [curve_verdict(noisy_curve([0.5] * 5, n_seeds=3, noise=0.1, split_sd=0.1, seed=seed)).verdict
              for seed in range(500)]
    assert sum(shape != "flat" for shape in shapes) / len(shapes) < 0.12


def test_describe_quotes_the_numbers():
    result = curve_verdict([[1.0, 1.1, 0.9], [0.5, 0.6, 0.4], [0.8, 0.9, 0.7]])
    assert isinstance(result, CurveVerdict)
    line = result.describe()
    assert "\n" not in line and line.startswith(result.verdict)
    assert f"{result.fall_mean:.3f}" in line and f"{result.rise_mean:.3f}" in line and "position 1" in line


@pytest.mark.parametrize(
    "per_seed, message",
    [
        ([[1.0], [0.5], [0.8]], "2 depth positions and 2 seeds"),  # one seed
        ([[1.0, 0.9, 1.1]], "2 depth positions and 2 seeds"),  # one position
        ([[1.0, 0.9], [0.5]], "same seeds at every position"),
        ([1.0, 0.5, 0.8], "same seeds at every position"),
        ([[1.0, float("nan")], [0.5, 0.6]], "non-finite"),
    ],
)
def test_rejects_tables_it_cannot_judge(per_seed, message):
    with pytest.raises(ValueError, match=message):
        curve_verdict(per_seed)
