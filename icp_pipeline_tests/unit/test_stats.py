import pytest

from icp_pipeline.visibility.stats import (
    bootstrap_interval,
    bootstrap_resamples,
    fisher_exact_two_sided,
    percentile_interval,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857-872, table I, method 3 (Wilson score).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (5, 10, 0.2366, 0.7634),
    ],
)
def test_wilson_published_values(successes: int, trials: int, low: float, high: float) -> None:
    interval = wilson_interval(successes, trials)
    assert interval is not None
    assert interval[0] == pytest.approx(low, abs=5e-5)
    assert interval[1] == pytest.approx(high, abs=5e-5)


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) is None
    assert wilson_interval(0, 7)[0] == 0.0  # exact, not float noise
    assert wilson_interval(7, 7)[1] == 1.0
    assert wilson_interval(1, 1) == pytest.approx([0.206549, 1.0])
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


@pytest.mark.parametrize(
    ("successes", "trials"), [(k, n) for n in (1, 2, 3, 7, 10, 29) for k in range(n + 1)]
)
def test_wilson_contains_the_rounded_rate(successes: int, trials: int) -> None:
    low, high = wilson_interval(successes, trials)
    assert 0.0 <= low <= round(successes / trials, 6) <= high <= 1.0


@pytest.mark.parametrize(
    ("table", "p_value"),
    [
        # Fisher's lady tasting tea (The Design of Experiments, 1935): 3 of 4 cups right.
        ((3, 1, 1, 3), 0.4857142857),
        # Wikipedia "Fisher's exact test" example (men/women studying): p = 0.002759.
        ((1, 9, 11, 3), 0.0027594562),
        # Every cup right: 2 / C(8, 4) = 1 / 35.
        ((4, 0, 0, 4), 0.0285714286),
        ((0, 4, 4, 0), 0.0285714286),
    ],
)
def test_fisher_published_values(table: tuple[int, int, int, int], p_value: float) -> None:
    assert fisher_exact_two_sided(*table) == pytest.approx(p_value, abs=1e-9)


def test_fisher_symmetry_and_edges() -> None:
    assert fisher_exact_two_sided(1, 9, 11, 3) == pytest.approx(fisher_exact_two_sided(11, 3, 1, 9))
    assert fisher_exact_two_sided(1, 9, 11, 3) == pytest.approx(fisher_exact_two_sided(9, 1, 3, 11))
    assert fisher_exact_two_sided(0, 0, 0, 0) == 1.0  # 0 of 0 in both cycles
    assert fisher_exact_two_sided(0, 10, 0, 10) == 1.0  # 0 of n twice
    assert fisher_exact_two_sided(10, 0, 10, 0) == 1.0  # n of n twice
    assert fisher_exact_two_sided(0, 0, 3, 7) == 1.0  # an empty cycle cannot differ
    assert fisher_exact_two_sided(5, 5, 5, 5) == 1.0
    # 0 of 10 against 10 of 10: 2 / C(20, 10).
    assert fisher_exact_two_sided(0, 10, 10, 0) == pytest.approx(2 / 184756, rel=1e-12)
    with pytest.raises(ValueError):
        fisher_exact_two_sided(-1, 1, 1, 1)


def test_bootstrap_is_deterministic_and_contains_the_estimate() -> None:
    items = [1, 0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1]

    def mean(sample: list[int]) -> float:
        return sum(sample) / len(sample)

    estimate = round(mean(items), 6)
    first = bootstrap_interval(items, mean, estimate)
    assert first == bootstrap_interval(items, mean, estimate)
    assert bootstrap_resamples(5) == bootstrap_resamples(5)
    assert first[0] <= estimate <= first[1]
    assert first[0] < first[1]  # a varied sample gives a real interval
    assert bootstrap_interval(items, mean, None) is None
    assert bootstrap_interval([], mean, 0.5) is None


def test_percentile_interval_widens_to_the_estimate() -> None:
    assert percentile_interval([0.1] * 100, 0.5) == [0.1, 0.5]
    assert percentile_interval([None, None], 0.5) == [0.5, 0.5]
    assert percentile_interval([0.2, 0.3], None) is None
