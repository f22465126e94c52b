"""The few statistics the report states: mean ± std over seeds, steps to a target loss, a t statistic.

Kept apart from the rendering so the test can check each figure of the report against these
functions applied to the JSON.
"""
from __future__ import annotations

import math
from statistics import mean, stdev

# two-sided 5 % critical values of Student's t by degrees of freedom (df > 10: 2.2)
T_CRITICAL = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return mean(values), (stdev(values) if len(values) > 1 else 0.0)


def steps_to_reach(curve: list[dict], target: float, key: str = "loss") -> int | None:
    """The first evaluated step whose `key` is at or below `target`; None when never."""
    return next((point["step"] for point in curve if point[key] <= target), None)


def paired_t(differences: list[float]) -> tuple[float, int]:
    """t statistic of paired differences (same seed, two settings) and its degrees of freedom."""
    if len(differences) < 2:
        return math.nan, 0
    centre, spread = mean_std(differences)
    if spread == 0:
        return (0.0 if centre == 0 else math.copysign(math.inf, centre)), len(differences) - 1
    return centre / (spread / math.sqrt(len(differences))), len(differences) - 1


def two_sample_t(a: list[float], b: list[float]) -> tuple[float, int]:
    """Pooled two-sample t statistic of mean(b) - mean(a) and its degrees of freedom."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, 0
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    df = len(a) + len(b) - 2
    pooled = math.sqrt(((len(a) - 1) * sa ** 2 + (len(b) - 1) * sb ** 2) / df)
    scale = pooled * math.sqrt(1 / len(a) + 1 / len(b))
    return ((mb - ma) / scale if scale else (math.inf if mb != ma else 0.0)), df


def significant(t: float, df: int) -> bool:
    """|t| beyond the two-sided 5 % critical value."""
    return df > 0 and not math.isnan(t) and abs(t) > T_CRITICAL.get(df, 2.2)
