"""The shape of a layer-wise curve (e.g. I(X;T) against depth) from values repeated over paired seeds.

Rule. Let v[l][s] be the value at depth position l (layer order, first to last) for seed s, the seeds paired
across positions (seed s uses the same frame split at every position). For each seed s, its minimum position
l*_s is the argmin of the mean over the OTHER seeds (leave one out, so that a seed's own noise does not pick the
minimum it is then measured against). The fall is the per-seed difference v[first][s] - v[l*_s][s], the rise
v[last][s] - v[l*_s][s]. Either is significant when its mean over seeds exceeds both t times its standard error
(sample standard deviation over seeds / sqrt(number of seeds)), t the one-sided Student quantile 1 - `alpha`
with n_seeds - 1 degrees of freedom (4.30 for 3 seeds, 2.78 for 5 at alpha 0.025), and `min_change` nats. The curve

- "falls then rises" when both are significant,
- "falls" when only the fall is,
- "rises" when only the rise is,
- "flat" when neither is.

Pairing the differences by seed removes the part of the seed-to-seed spread that the positions share (the split);
`min_change` keeps a consistent but negligible change from counting as a shape. The minimum is still chosen among
the positions, so on flat curves whose noise is far above `min_change` the rule reports a shape more often than
2 x alpha: in simulation (5 positions, 3 to 10 seeds, independent noise) 7-9% of the time.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import t as student_t

Shape = Literal["falls then rises", "falls", "rises", "flat"]
# The rule in a sentence, for reports.
RULE_SUMMARY = ("per seed, the fall from the first layer to the minimum and the rise from the minimum to the last "
                "layer (the minimum chosen from the other seeds); each counts when its mean over seeds exceeds "
                "both a one-sided Student-t bound (alpha 0.025) in standard errors and 0.05 nats")


@dataclass(frozen=True)
class CurveVerdict:
    """The verdict of `curve_verdict` and the numbers behind it (changes in the curve's unit, nats by default)."""

    verdict: Shape
    argmin: int  # 0-based depth position of the lowest mean over all seeds
    fall_mean: float  # mean over seeds of v[first][s] - v[l*_s][s]
    fall_stderr: float
    rise_mean: float  # mean over seeds of v[last][s] - v[l*_s][s]
    rise_stderr: float
    n_seeds: int
    t: float  # the Student quantile a mean must exceed, in standard errors
    min_change: float

    def describe(self, unit: str = "nats") -> str:
        """One line for a report, e.g. 'falls then rises: minimum at position 3; fall 0.412 +- 0.031 nats, ...'."""
        return (
            f"{self.verdict}: minimum at position {self.argmin}; "
            f"fall {self.fall_mean:.3f} +- {self.fall_stderr:.3f} {unit}, "
            f"rise {self.rise_mean:.3f} +- {self.rise_stderr:.3f} {unit} "
            f"(mean +- standard error over {self.n_seeds} paired seeds; significant: mean > {self.t:.2f} x standard "
            f"error and > {self.min_change:g} {unit})"
        )


def _mean_and_stderr(diffs: np.ndarray) -> tuple[float, float]:
    return float(diffs.mean()), float(diffs.std(ddof=1) / math.sqrt(len(diffs)))


def curve_verdict(per_seed: Sequence[Sequence[float]], *, alpha: float = 0.025, min_change: float = 0.05
                  ) -> CurveVerdict:
    """Classify the curve per_seed[l][s] (position l in layer order, seed s paired across positions) as "falls
    then rises", "falls", "rises" or "flat" by the rule in this module's docstring."""
    shape_error = "per_seed must be a (positions, seeds) table with the same seeds at every position"
    try:
        values = np.asarray(per_seed, dtype=np.float64)
    except ValueError as err:  # rows of different lengths
        raise ValueError(shape_error) from err
    if values.ndim != 2:
        raise ValueError(shape_error)
    n_positions, n_seeds = values.shape
    if n_positions < 2 or n_seeds < 2:
        raise ValueError(
            f"a curve verdict needs at least 2 depth positions and 2 seeds, got {n_positions} and {n_seeds}"
        )
    if not np.isfinite(values).all():
        raise ValueError("per_seed holds a non-finite value")
    if not 0 < alpha < 1 or min_change < 0:
        raise ValueError(f"alpha must be in (0, 1) and min_change non-negative, got {alpha} and {min_change}")

    seeds = np.arange(n_seeds)
    minima = [int(np.argmin(values[:, seeds != s].mean(1))) for s in seeds]  # leave seed s out
    fall_mean, fall_stderr = _mean_and_stderr(values[0] - values[minima, seeds])
    rise_mean, rise_stderr = _mean_and_stderr(values[-1] - values[minima, seeds])
    t = float(student_t.ppf(1 - alpha, n_seeds - 1))
    falls = fall_mean > t * fall_stderr and fall_mean > min_change
    rises = rise_mean > t * rise_stderr and rise_mean > min_change
    verdict: Shape = "falls then rises" if falls and rises else "falls" if falls else "rises" if rises else "flat"
    return CurveVerdict(
        verdict=verdict,
        argmin=int(np.argmin(values.mean(1))),
        fall_mean=fall_mean,
        fall_stderr=fall_stderr,
        rise_mean=rise_mean,
        rise_stderr=rise_stderr,
        n_seeds=n_seeds,
        t=t,
        min_change=min_change,
    )
