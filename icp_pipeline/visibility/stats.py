"""Interval estimates and tests for the analytics. Pure functions, standard library only.

- Rates of runs (mention rate, cited rate): the Wilson score interval, 95% (z = 1.959964).
- Share of voice and average position are ratios over runs (not binomial proportions), so their 95%
  intervals come from a percentile bootstrap over runs: BOOTSTRAP_RESAMPLES resamples of the runs with
  replacement, drawn by random.Random(BOOTSTRAP_SEED), so a re-computation gives the same numbers.
  Resamples where the ratio is undefined (no mention at all) are left out. The interval is widened to
  its point estimate where the percentiles miss it, so it always contains the estimate.
- Above BOOTSTRAP_MAX_RUNS latest runs in the org, the bootstrap (pure Python, ~1000 x runs draws per
  breakdown) is replaced in every breakdown by the delta-method normal interval of the same ratio of
  sums over runs (ratio_interval): estimate +/- z * sqrt(sum (x - r*y)^2) / sum y, the large-sample
  limit of the bootstrap's spread, computed from sums the database returns (no per-run data). It is
  deterministic, rounded outwards, clipped to the statistic's range and widened to the estimate.
- Change between two cycles: the two-sided Fisher exact test on (mentioned, not mentioned) runs,
  from exact hypergeometric probabilities (math.comb).
"""

import math
import random
from collections.abc import Callable, Sequence
from typing import TypeVar

Z_95 = 1.959964
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 20261129
# Orgs with more latest runs than this get delta-method intervals (ratio_interval) instead.
BOOTSTRAP_MAX_RUNS = 2000
_DIGITS = 6

Item = TypeVar("Item")


def _floor(value: float) -> float:
    return math.floor(value * 10**_DIGITS) / 10**_DIGITS


def _ceil(value: float) -> float:
    return math.ceil(value * 10**_DIGITS) / 10**_DIGITS


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> list[float] | None:
    """The Wilson score interval of successes / trials, or None for 0 trials. Bounds are rounded
    outwards to 6 digits, so the interval contains the rounded rate."""
    if trials <= 0:
        return None
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} out of range for {trials} trials")
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    # 0 of n and n of n are exact at the bound; float noise must not move it.
    low = 0.0 if successes == 0 else max(0.0, _floor(centre - half))
    high = 1.0 if successes == trials else min(1.0, _ceil(centre + half))
    return [low, high]


def fisher_exact_two_sided(a: int, b: int, c: int, d: int) -> float:
    """Two-sided Fisher exact p-value of the 2x2 table [[a, b], [c, d]]: the sum of the probabilities of
    every table with the same margins that is no more probable than the observed one. A table with an
    empty row or column has only one possible arrangement: p = 1."""
    if min(a, b, c, d) < 0:
        raise ValueError("table cells must be non-negative")
    row1, col1, n = a + b, a + c, a + b + c + d
    denominator = math.comb(n, col1)

    def probability(x: int) -> float:
        return math.comb(row1, x) * math.comb(n - row1, col1 - x) / denominator

    observed = probability(a)
    # Relative tolerance as in R's fisher.test, so ties in exact probability are not lost to rounding.
    threshold = observed * (1 + 1e-7)
    low, high = max(0, col1 - (n - row1)), min(row1, col1)
    p_value = sum(p for x in range(low, high + 1) if (p := probability(x)) <= threshold)
    return min(1.0, p_value)


def bootstrap_resamples(
    size: int, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> list[list[int]]:
    """Index lists of `resamples` resamples with replacement of `size` items, the same for the same
    arguments. Every statistic of one group of runs shares them, so one pass computes all companies."""
    rng = random.Random(seed)
    population = range(size)
    return [rng.choices(population, k=size) for _ in range(resamples)] if size else []


def percentile_interval(values: Sequence[float | None], estimate: float | None) -> list[float] | None:
    """The 95% percentile interval of bootstrap values (None values, undefined resamples, left out),
    widened to the estimate where needed. None when the estimate is None."""
    if estimate is None:
        return None
    defined = sorted(v for v in values if v is not None)
    if not defined:
        return [estimate, estimate]
    low = defined[int(0.025 * (len(defined) - 1))]
    high = defined[math.ceil(0.975 * (len(defined) - 1))]
    return [min(_floor(low), estimate), max(_ceil(high), estimate)]


def bootstrap_interval(
    items: Sequence[Item],
    statistic: Callable[[Sequence[Item]], float | None],
    estimate: float | None,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> list[float] | None:
    """The 95% percentile bootstrap interval of statistic(items), resampling with a fixed seed."""
    if estimate is None or not items:
        return None
    samples = bootstrap_resamples(len(items), resamples=resamples, seed=seed)
    return percentile_interval([statistic([items[i] for i in sample]) for sample in samples], estimate)


def ratio_interval(
    *,
    numerator: float,
    denominator: float,
    numerator_squares: float,
    cross_products: float,
    denominator_squares: float,
    estimate: float | None,
    bounds: tuple[float | None, float | None] = (None, None),
    z: float = Z_95,
) -> list[float] | None:
    """The 95% delta-method (linearisation) interval of a ratio of sums over runs, r = sum x / sum y,
    from sum x, sum y, sum x^2, sum x*y and sum y^2: r +/- z * sqrt(sum (x - r*y)^2) / sum y. Rounded
    outwards to 6 digits, clipped to bounds, widened to the estimate; None when the estimate is."""
    if estimate is None or not denominator:
        return None
    ratio = numerator / denominator
    squares = numerator_squares - 2 * ratio * cross_products + ratio * ratio * denominator_squares
    half = z * math.sqrt(max(0.0, squares)) / abs(denominator)
    low, high = _floor(ratio - half), _ceil(ratio + half)
    if bounds[0] is not None:
        low = max(low, bounds[0])
    if bounds[1] is not None:
        high = min(high, bounds[1])
    return [min(low, estimate), max(high, estimate)]
