"""A grid of federated runs: tasks x strategies x seeds on one model, partition and round budget.

:func:`run_grid` writes one CSV row per (task, strategy, seed) with final and best metric, bytes up
and down per round and in total, seconds per round, and the round and seconds at which the run first
reached the target: by default FedAvg-all-layers' final metric on the same task and seed, and the run's
wall seconds (set-up, layer selection and evaluation included). Runs already
in the CSV are skipped, so an interrupted grid resumes where it stopped. Used by
``benchmarks/run_grid.py`` and ``notebooks/05_full_experiments.ipynb``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pandas as pd

from .config import ExperimentConfig
from .models import backbone_for
from .report import headline, plot_curves, rounds_to_target, shared_layer_count, summarize
from .simulation import run_simulation

__all__ = ["run_grid", "plot_grid", "mean_table", "fedpeptao_deltas", "COLUMNS"]

log = logging.getLogger(__name__)
COLUMNS = [
    "task",
    "strategy",
    "seed",
    "final_metric",
    "best_metric",
    "final_global_metric",
    "bytes_up_per_round",
    "bytes_down_per_round",
    "bytes_per_round",
    "bytes_total",
    "seconds_per_round",
    "seconds_total",
    "rounds",
    "rounds_to_target",
    "seconds_to_target",
    "target",
    "shared_layers",
    "failed_clients",
    "wall_seconds",
]


def run_grid(
    base: ExperimentConfig,
    tasks: list[str],
    strategies: list[str],
    seeds: list[int],
    out_dir: str | Path,
    target_strategy: str = "fedavg",
    progress: bool | None = None,
    params: dict[str, dict] | None = None,
) -> pd.DataFrame:
    """Run the grid (``target_strategy`` first for each task and seed) and return the results table.

    ``params``: per strategy name, hyper-parameters overriding its defaults (e.g. ``{"fedprox": {"mu": 0.1}}``).
    """
    params = params or {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "results.csv"
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=COLUMNS)
    order = (
        [target_strategy] + [s for s in strategies if s != target_strategy]
        if target_strategy in strategies
        else strategies
    )
    configs = {
        (task, name): base.replace(fed=base.fed.replace(task=task)).with_strategy(name, **params.get(name, {}))
        for name in order
        for task in tasks
    }  # every combination validated before any training
    backbone = backbone_for(base.model)
    rows = done.to_dict("records")
    for task in tasks:
        for seed in seeds:
            target = math.nan
            for name in order:
                run_dir = out / task / f"seed{seed}" / name
                prev = [r for r in rows if (r["task"], r["strategy"], int(r["seed"])) == (task, name, seed)]
                hist_path = run_dir / "results.jsonl"
                if prev and hist_path.exists():
                    history = pd.read_json(hist_path, lines=True)
                else:
                    cfg = configs[task, name]
                    cfg = cfg.replace(fed=cfg.fed.replace(seed=seed))
                    t0 = time.perf_counter()
                    res = run_simulation(cfg, run_dir, backbone=backbone, progress=progress)
                    history = res.history
                    shared = shared_layer_count(res)
                    wall = time.perf_counter() - t0
                    log.info("%s/%s/seed %d: %.1f s", task, name, seed, wall)
                    rows = [r for r in rows if (r["task"], r["strategy"], int(r["seed"])) != (task, name, seed)]
                    rows.append(
                        {
                            "task": task,
                            "strategy": name,
                            "seed": seed,
                            "shared_layers": shared,
                            "wall_seconds": wall,
                            **summarize(history),
                        }
                    )
                row = next(r for r in rows if (r["task"], r["strategy"], int(r["seed"])) == (task, name, seed))
                if name == target_strategy:
                    target = row["final_metric"]
                row["target"] = target
                row["rounds_to_target"], row["seconds_to_target"] = (
                    rounds_to_target(history, target) if not math.isnan(target) else (math.nan, math.nan)
                )
                pd.DataFrame(rows).reindex(columns=COLUMNS).to_csv(csv, index=False)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    (out / "grid.json").write_text(
        json.dumps(
            {
                "tasks": tasks,
                "strategies": strategies,
                "seeds": seeds,
                "target_strategy": target_strategy,
                "params": params,
                "config": base.to_dict(),
            },
            indent=2,
        )
    )
    return table


def grid_histories(out_dir: str | Path, task: str, seed: int) -> dict[str, pd.DataFrame]:
    """The per-round histories of one (task, seed) of a grid, by strategy."""
    base = Path(out_dir) / task / f"seed{seed}"
    return {p.parent.name: pd.read_json(p, lines=True) for p in sorted(base.glob("*/results.jsonl"))}


def mean_histories(out_dir: str | Path, task: str, seeds: list[int]) -> dict[str, pd.DataFrame]:
    """Per strategy, the round-by-round mean over ``seeds`` of the headline metric and cumulative bytes."""
    runs: dict[str, list[pd.DataFrame]] = {}
    for seed in seeds:
        for name, h in grid_histories(out_dir, task, seed).items():
            runs.setdefault(name, []).append(h.assign(metric=headline(h))[["round", "metric", "cum_bytes"]])
    return {
        name: pd.concat(hs).groupby("round", as_index=False).mean().rename(columns={"metric": "personal_metric"})
        for name, hs in runs.items()
    }


def plot_grid(out_dir: str | Path, task: str, seed: int | list[int]):
    """Two panels: metric per round and metric per cumulative byte, one line per strategy.

    A list of seeds plots the mean over those seeds.
    """
    import matplotlib.pyplot as plt

    seeds = [seed] if isinstance(seed, int) else list(seed)
    hist = mean_histories(out_dir, task, seeds)
    label = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean of {len(seeds)} seeds"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    plot_curves(hist, "round", axes[0], title=f"{task} ({label}): metric per round")
    plot_curves(hist, "cum_bytes", axes[1], title=f"{task} ({label}): metric per cumulative byte")
    axes[0].get_legend().remove()
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def mean_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (task, strategy) of the headline columns, tasks and strategies in grid order.

    ``rounds_to_target`` is the mean over the seeds that reached the target; ``reached`` counts them.
    """
    cols = ["final_metric", "best_metric", "bytes_per_round", "seconds_per_round", "rounds_to_target"]
    groups = table.groupby(["task", "strategy"], sort=False)
    out = groups[cols].mean().reset_index()
    return out.assign(reached=groups["rounds_to_target"].count().to_numpy(), seeds=groups["seed"].nunique().to_numpy())


def fedpeptao_deltas(table: pd.DataFrame, method: str = "fedpeptao", reference: str = "fedavg") -> pd.DataFrame:
    """Per task (means over seeds): ``method``'s final metric minus ``reference``'s and minus the best other
    strategy's, its bytes per round and rounds-to-target relative to ``reference``."""
    mean = mean_table(table).set_index(["task", "strategy"])
    rows = []
    for task in dict.fromkeys(table["task"]):
        m, ref = mean.loc[(task, method)], mean.loc[(task, reference)]
        others = mean.loc[task].drop(index=method)
        best = others["final_metric"].idxmax()
        rows.append(
            {
                "task": task,
                method: m["final_metric"],
                reference: ref["final_metric"],
                "best_baseline": best,
                "best_baseline_metric": others.loc[best, "final_metric"],
                f"minus_{reference}": m["final_metric"] - ref["final_metric"],
                "minus_best_baseline": m["final_metric"] - others.loc[best, "final_metric"],
                "bytes_ratio": m["bytes_per_round"] / ref["bytes_per_round"],
                "rounds_to_target_ratio": m["rounds_to_target"] / ref["rounds_to_target"],
            }
        )
    return pd.DataFrame(rows)
