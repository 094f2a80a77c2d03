"""A grid's tables and figures: means with 95% confidence intervals over seeds per view, paired differences against
one method with Holm-adjusted p-values, censored medians of the costs to target, and the curves of every row.

The grid is a :func:`fedlib.benchmark.run_grid` table (:data:`fedlib.benchmark.COLUMNS`) and its run folders
(:func:`fedlib.benchmark.run_dir`, each with its per-round ``results.jsonl``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .benchmark import VIEW_COLUMNS
from .stats import censored_median, floor_flags, holds, holm, mean_ci, paired_differences, summary_table

__all__ = [
    "score_columns",
    "view_table",
    "paired_table",
    "cost_table",
    "grid_histories",
    "grid_curves",
    "CURVE_COLUMNS",
    "plot_grid",
    "plot_diagnostics",
]


def score_columns(table: pd.DataFrame) -> list[str]:
    """The columns a grid's rows are compared on: the three views' final metrics, and ``auc`` (the area under the
    global curve, the mean global metric over the evaluated rounds) where the grid records it (grids run before it
    was recorded leave it out)."""
    has_auc = "auc" in table and table["auc"].notna().any()
    return [*VIEW_COLUMNS, "auc"] if has_auc else list(VIEW_COLUMNS)


def view_table(table: pd.DataFrame, level: float = 0.95, floor: str | None = None) -> pd.DataFrame:
    """Per (task, strategy): each view's (and ``auc``'s, :func:`score_columns`) mean ± half-width of its 95% CI over
    seeds, the mean bytes and the median
    seconds (a median, so that one run slowed by other work on the machine does not move it). ``floor`` (e.g.
    ``"majority_local"``, a row of the table): a column naming the views on which a row's mean is at or below the
    floor row's mean on its task."""
    out = summary_table(table, score_columns(table), level)
    g = table.groupby(["task", "strategy"], sort=False)
    cost = pd.concat([g["bytes_total"].mean(), g["seconds_total"].median().rename("median_seconds")], axis=1)
    out = out.merge(cost.reset_index(), on=["task", "strategy"], how="left")
    if floor is not None:
        out["at_or_below_floor"] = (
            floor_flags(table, VIEW_COLUMNS, floor).reindex(list(zip(out["task"], out["strategy"]))).values
        )
    return out


def paired_table(table: pd.DataFrame, method: str = "fedpeptao", level: float = 0.95) -> pd.DataFrame:
    """``method`` minus every other row, per task and view (``auc`` too, :func:`score_columns`): mean paired (same seed)
    difference ± CI, wins, the paired t-test's p-value and ``p_holm``, Holm-adjusted over the whole table: one family
    per protocol (every row, task and view compared), so a comparison whose ``p_holm`` is below 1 - level holds with the
    family's error controlled."""
    parts = [paired_differences(table, view, method, level) for view in score_columns(table)]
    out = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else pd.DataFrame()
    if out.empty:
        return out
    out["p_holm"] = holm(out["p"])
    out["holds"] = ["yes" if holds(q, level) else "no" for q in out["p_holm"]]
    out["diff ± CI"] = [
        f"{d:+.4f} ± {c:.4f}" if not math.isnan(c) else f"{d:+.4f}" for d, c in zip(out["diff"], out["ci"])
    ]
    return out


def cost_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per (task, strategy): target, medians over seeds of rounds, seconds and MB to reach it (``>R``: the median
    seed did not reach it within the run's R rounds), how many seeds reached it, selection's share of the bytes; the
    same for ``target_high`` where the grid has a second target."""
    rows = []
    horizons = table.groupby("task")["rounds"].max()
    high = "target_high" in table and table["target_high"].notna().any()
    for (task, strategy), g in table.groupby(["task", "strategy"], sort=False):
        horizon = float(horizons[task])
        row = {"task": task, "strategy": strategy}
        for suffix in ("", "_high") if high else ("",):
            reached = g[f"rounds_to_target{suffix}"]
            row.update(
                {
                    f"target{suffix}": g[f"target{suffix}"].iloc[0],
                    f"rounds_to_target{suffix}": censored_median(reached, horizon),
                    f"seconds_to_target{suffix}": censored_median(g[f"seconds_to_target{suffix}"].round(1)),
                    f"MB_to_target{suffix}": censored_median((g[f"bytes_to_target{suffix}"] / 1e6).round(3)),
                    f"reached{suffix}": f"{int(reached.notna().sum())}/{len(g)}",
                }
            )
        row.update(selection_MB=float(g["selection_bytes"].mean() / 1e6), total_MB=float(g["bytes_total"].mean() / 1e6))
        rows.append(row)
    return pd.DataFrame(rows)


CURVE_COLUMNS = [
    "round",
    *VIEW_COLUMNS,
    "global_full_metric",  # fed.curve_examples: the whole eval set where it was evaluated
    "cum_bytes",
    "cum_seconds",
    "momentum_share",
    "correction_share",
    "c_norm",
    "c_i_norm",
    "server_lr",
]
"""What :func:`grid_curves` keeps of each round's record: the views, the cumulative costs, FedPepTAO's diagnostics."""


def grid_histories(source: str | Path | pd.DataFrame, task: str, seed: int) -> dict[str, pd.DataFrame]:
    """The per-round histories of one (task, seed) of a grid, by strategy: from the grid's folder (each run's
    ``results.jsonl``) or from its curves table (:func:`grid_curves`; committed as ``results/<name>-curves.csv``)."""
    if isinstance(source, pd.DataFrame):
        mine = source[(source["task"] == task) & (source["seed"] == seed)]
        return {name: h.reset_index(drop=True) for name, h in mine.groupby("strategy", sort=False)}
    base = Path(source) / task / f"seed{seed}"
    return {p.parent.name: pd.read_json(p, lines=True) for p in sorted(base.glob("*/results.jsonl"))}


def grid_curves(out_dir: str | Path, table: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, strategy, seed, round) of ``table``'s runs whose folders hold their histories, with
    :data:`CURVE_COLUMNS` (6 significant digits): what the figures need, small enough to commit beside the CSV."""
    frames = []
    for (task, seed), rows in table.groupby(["task", "seed"], sort=False):
        runs = grid_histories(out_dir, task, int(seed))
        for name in dict.fromkeys(rows["strategy"]):
            if name in runs:
                h = runs[name].reindex(columns=CURVE_COLUMNS)
                frames.append(h[h["round"] >= 1].assign(task=task, strategy=name, seed=int(seed)))
    if not frames:
        return pd.DataFrame(columns=["task", "strategy", "seed", *CURVE_COLUMNS])
    out = pd.concat(frames, ignore_index=True)[["task", "strategy", "seed", *CURVE_COLUMNS]]
    return out.dropna(axis=1, how="all").map(lambda v: float(f"{v:.6g}") if isinstance(v, float) else v)


def plot_grid(
    out_dir: str | Path | pd.DataFrame,
    task: str,
    seeds: int | list[int],
    view: str = "global_metric",
    highlight: tuple[str, ...] = ("fedpeptao",),
    skip: tuple[str, ...] = (),
):
    """Two panels, one line per strategy with its 95% CI band over ``seeds``: ``view`` per round and per cumulative
    MB (selection included). References without rounds (``majority_local``) are a dashed horizontal line.
    ``out_dir``: the grid's folder, or its curves table (:func:`grid_histories`); ``skip``: rows left out (a
    protocol's derived rows, whose global curve is their source's: ``fedavg_ft``'s is FedAvg's)."""
    import matplotlib.pyplot as plt
    import numpy as np

    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    runs: dict[str, list[pd.DataFrame]] = {}
    for seed in seeds:
        for name, h in grid_histories(out_dir, task, seed).items():
            if view in h and h[view].notna().any() and name not in skip:  # local_only: no global curve
                runs.setdefault(name, []).append(h[h[view].notna()][["round", view, "cum_bytes"]])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    counts = {name: len(hs) for name, hs in runs.items()}
    uneven = len(set(counts.values())) > 1  # rows with extra seeds: say each row's count
    for i, (name, hs) in enumerate(runs.items()):
        color = f"C{i}" if len(runs) <= 10 else plt.cm.tab20(i % 20)  # distinct colours beyond ten rows
        label = f"{name} ({counts[name]} seeds)" if uneven else name
        stats = [
            (r, *mean_ci(g[view].tolist()), g["cum_bytes"].mean() / 1e6) for r, g in pd.concat(hs).groupby("round")
        ]
        r, m, half, _, mb = (np.array(c, dtype=float) for c in zip(*stats))
        half = np.nan_to_num(half)
        if len(r) == 1 and not mb.any():  # a reference with one number
            for ax in axes:
                ax.axhline(m[0], color=color, ls="--", lw=1, label=label)
            continue
        lw = 2.5 if name in highlight else 1.5
        for ax, x in ((axes[0], r), (axes[1], mb)):
            ax.plot(x, m, marker="o", ms=3, color=color, lw=lw, label=label)
            ax.fill_between(x, m - half, m + half, color=color, alpha=0.15)
    axes[0].set_xlabel("round")
    axes[1].set_xlabel("cumulative MB exchanged (layer selection included)")
    for ax, what in zip(axes, ("per round", "per cumulative MB")):
        ax.set_ylabel(view.replace("_", " "))
        n = f"{max(counts.values(), default=0)} seeds" if not uneven else "seeds per row in the legend"
        ax.set_title(f"{task}: {view.replace('_metric', '')} view {what}\n(mean, 95% CI, {n})", fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def plot_diagnostics(
    out_dir: str | Path | pd.DataFrame,
    task: str,
    seeds: list[int],
    strategy: str = "fedpeptao",
    columns: tuple[str, ...] = ("momentum_share", "correction_share", "c_norm", "c_i_norm"),
):
    """One panel per diagnostic a strategy's server step records every round (FedPepTAO's: the momentum's and the
    correction's shares of the step, ||eta_s V|| / ||Delta_t|| and ||kappa (c - sum p_i c_i)|| / ||Delta_t||, and the
    norms of c and of the round's c_i, :func:`fedlib.fedpeptao.fedpeptao_server_step`): mean over ``seeds`` per round
    with its 95% CI band. None when no run of ``strategy`` records them."""
    import matplotlib.pyplot as plt
    import numpy as np

    runs = [grid_histories(out_dir, task, s).get(strategy) for s in seeds]
    runs = [h[h["round"] >= 1] for h in runs if h is not None]
    columns = [c for c in columns if any(c in h and h[c].notna().any() for h in runs)]
    if not columns:
        return None
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.2), squeeze=False)
    for ax, col in zip(axes[0], columns):
        stats = [(r, *mean_ci(g[col].dropna().tolist())) for r, g in pd.concat(runs).groupby("round")]
        r, m, half, _ = (np.array(c, dtype=float) for c in zip(*stats))
        ax.plot(r, m, color="C0", lw=1.8)
        ax.fill_between(r, m - np.nan_to_num(half), m + np.nan_to_num(half), color="C0", alpha=0.2)
        ax.set_title(col.replace("_", " "), fontsize=10)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{task}: {strategy}'s server step per round (mean, 95% CI, {len(runs)} seeds)", fontsize=10)
    fig.tight_layout()
    return fig
