"""Statistics for results tables: means with 95% confidence intervals over seeds, paired differences, and
costs to a target with censoring.

A seed fixes the partition, the initial prompts and the client sampling, identically for every strategy, so
two strategies' results on the same seed are *paired*: their difference cancels what the seed alone decides
(which clients hold which labels, which were sampled), and its confidence interval is much narrower than the
one of either mean. Intervals use Student's t with n - 1 degrees of freedom (``docs/method.md``, "Reading
the results").
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = [
    "mean_ci",
    "paired_pvalue",
    "holm",
    "holds",
    "p_text",
    "paired_differences",
    "censored_median",
    "summary_table",
    "at_or_below",
    "floor_flags",
]


def mean_ci(values, level: float = 0.95) -> tuple[float, float, int]:
    """``(mean, half-width of the level-CI, n)`` of the finite ``values`` (half-width NaN when n < 2)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return float(x.mean()), half, n


def paired_pvalue(differences) -> float:
    """Two-sided p-value of the paired t-test (``scipy.stats.ttest_1samp`` against 0) on the finite ``differences``:
    the test behind :func:`mean_ci`'s interval (it excludes 0 exactly when p < 1 - level). NaN below 2 values;
    1.0 when every difference is 0 (two rows that computed the same numbers)."""
    from scipy import stats

    x = np.asarray([v for v in differences if v is not None and math.isfinite(v)], dtype=float)
    if len(x) < 2:
        return math.nan
    if not x.any():
        return 1.0
    if x.std(ddof=1) == 0:  # the same nonzero difference on every seed
        return 0.0
    return float(stats.ttest_1samp(x, 0.0).pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN entries stay NaN and are not counted): the i-th
    smallest of m becomes max_{j <= i} min(1, (m - j + 1) p_(j)). A comparison holds at level a for the whole
    family (familywise error rate at most a) when its adjusted p-value is below a."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def holds(p_holm: float, level: float = 0.95) -> bool:
    """Whether a comparison holds for its family: its Holm-adjusted p-value below 1 - level (NaN: never). The
    threshold is rounded (``1 - 0.95`` is 0.050000000000000044 in floating point, which let exactly 0.05 hold)."""
    return p_holm == p_holm and p_holm < round(1 - level, 12)


def p_text(p: float) -> str:
    """A p-value for a table: two significant digits, ``<1e-4`` below that, ``—`` when undefined."""
    return "—" if p != p else ("<1e-4" if p < 1e-4 else f"{p:.2g}")


def paired_differences(table: pd.DataFrame, column: str, method: str, level: float = 0.95) -> pd.DataFrame:
    """Per task and other strategy: mean and CI of ``method - other`` on ``column``, paired by seed, and the paired
    t-test's p-value (``p``; uncorrected: adjust a family's with :func:`holm`)."""
    rows = []
    for task, t in table.groupby("task", sort=False):
        wide = t.pivot_table(index="seed", columns="strategy", values=column, aggfunc="first")
        if method not in wide:
            continue
        for other in [s for s in dict.fromkeys(t["strategy"]) if s != method and s in wide]:
            d = (wide[method] - wide[other]).dropna()
            mean, half, n = mean_ci(d.tolist(), level)
            rows.append(
                {
                    "task": task,
                    "vs": other,
                    "view": column,
                    "diff": mean,
                    "ci": half,
                    "seeds": n,
                    "wins": int((d > 0).sum()),
                    "p": paired_pvalue(d.tolist()),
                }
            )
    return pd.DataFrame(rows)


def censored_median(values, horizon: float | None = None) -> str:
    """The median of values where NaN means "not reached"; when the median itself is censored, ``">R"`` given a
    ``horizon`` R, else ``"not reached"``."""
    x = np.array([v if v is not None and math.isfinite(v) else math.inf for v in values], dtype=float)
    if not len(x):
        return "—"
    med = float(np.median(x))
    if math.isinf(med):
        return f">{horizon:g}" if horizon is not None else "not reached"
    return f"{med:g}"


def summary_table(table: pd.DataFrame, columns: list[str], level: float = 0.95) -> pd.DataFrame:
    """Per (task, strategy): ``mean ± half-width`` strings of each column, in the table's order."""
    rows = []
    for (task, strategy), g in table.groupby(["task", "strategy"], sort=False):
        row = {"task": task, "strategy": strategy, "seeds": g["seed"].nunique()}
        for col in columns:
            mean, half, _ = mean_ci(g[col].tolist(), level)
            row[col] = "—" if math.isnan(mean) else (f"{mean:.4f}" if math.isnan(half) else f"{mean:.4f} ± {half:.4f}")
        rows.append(row)
    return pd.DataFrame(rows)


def at_or_below(values, floor, columns) -> list[str]:
    """The ``columns`` on which ``values`` is at or below ``floor`` (mappings of column to number), in order; a value
    that is NaN, or a column the floor lacks, is neither. The one rule every results table flags views with: a
    personalised score is only worth its distance above a guess with no model."""
    return [c for c in columns if c in floor and values[c] == values[c] and values[c] <= floor[c] + 1e-12]


def floor_flags(table: pd.DataFrame, columns: list[str], floor: str = "majority_local") -> pd.Series:
    """Per (task, strategy): the ``columns`` (comma-separated, ``_metric`` dropped; "none") whose mean over seeds is at
    or below the ``floor`` row's mean on the same task ("" for the floor itself, NaN where the task has no floor
    row): a personalised score is only worth its distance above a guess with no model."""
    means = table.groupby(["task", "strategy"], sort=False)[list(columns)].mean()
    flags = {}
    for (task, strategy), row in means.iterrows():
        if (task, floor) not in means.index:
            flags[task, strategy] = math.nan
            continue
        base = means.loc[(task, floor)]
        below = [c.removesuffix("_metric") for c in at_or_below(row, base, columns)]
        flags[task, strategy] = "" if strategy == floor else ", ".join(below) or "none"
    return pd.Series(flags, dtype=object)
