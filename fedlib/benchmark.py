"""A grid of federated runs: tasks x strategies x seeds on one model, partition and round budget.

:func:`run_grid` writes one CSV row per (task, strategy, seed) with final and best metric, bytes up
and down per round and in total, seconds per round, and the round and seconds at which the run first
reached the target: by default FedAvg-all-layers' final metric on the same task and seed. Runs already
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
from .models import load_backbone
from .report import plot_curves, rounds_to_target, summarize
from .simulation import run_simulation

__all__ = ["run_grid", "COLUMNS"]

log = logging.getLogger(__name__)
COLUMNS = ["task", "strategy", "seed", "final_metric", "best_metric", "final_global_metric", "bytes_up_per_round",
           "bytes_down_per_round", "bytes_per_round", "bytes_total", "seconds_per_round", "seconds_total",
           "rounds", "rounds_to_target", "seconds_to_target", "target", "shared_layers", "failed_clients"]


def run_grid(base: ExperimentConfig, tasks: list[str], strategies: list[str], seeds: list[int], out_dir: str | Path,
             target_strategy: str = "fedavg", progress: bool | None = None) -> pd.DataFrame:
    """Run the grid (``target_strategy`` first for each task and seed) and return the results table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "results.csv"
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=COLUMNS)
    order = [target_strategy] + [s for s in strategies if s != target_strategy] if target_strategy in strategies else strategies
    for name in order:  # validate every combination before any training
        for task in tasks:
            base.fed.replace(strategy=name, task=task)
    backbone = load_backbone(base.model.name, head="linear" if base.model.head == "linear" else base.model.head)
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
                    cfg = base.replace(fed=base.fed.replace(task=task, strategy=name, seed=seed))
                    t0 = time.perf_counter()
                    res = run_simulation(cfg, run_dir, backbone=backbone, progress=progress)
                    history = res.history
                    shared = sum(r == "shared" for r in res.roles) if cfg.model.prompt_mode == "deep" and \
                        res.roles and name not in ("shallow", "lora") else 0
                    log.info("%s/%s/seed %d: %.1f s", task, name, seed, time.perf_counter() - t0)
                    rows = [r for r in rows if (r["task"], r["strategy"], int(r["seed"])) != (task, name, seed)]
                    rows.append({"task": task, "strategy": name, "seed": seed, "shared_layers": shared, **summarize(history)})
                row = next(r for r in rows if (r["task"], r["strategy"], int(r["seed"])) == (task, name, seed))
                if name == target_strategy:
                    target = row["final_metric"]
                row["target"] = target
                row["rounds_to_target"], row["seconds_to_target"] = rounds_to_target(history, target) \
                    if not math.isnan(target) else (math.nan, math.nan)
                pd.DataFrame(rows).reindex(columns=COLUMNS).to_csv(csv, index=False)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    (out / "grid.json").write_text(json.dumps({"tasks": tasks, "strategies": strategies, "seeds": seeds,
                                               "target_strategy": target_strategy, "config": base.to_dict()}, indent=2))
    return table


def grid_histories(out_dir: str | Path, task: str, seed: int) -> dict[str, pd.DataFrame]:
    """The per-round histories of one (task, seed) of a grid, by strategy."""
    base = Path(out_dir) / task / f"seed{seed}"
    return {p.parent.name: pd.read_json(p, lines=True) for p in sorted(base.glob("*/results.jsonl"))}


def plot_grid(out_dir: str | Path, task: str, seed: int):
    """Two panels: metric per round and metric per cumulative byte, one line per strategy."""
    import matplotlib.pyplot as plt

    hist = grid_histories(out_dir, task, seed)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    plot_curves(hist, "round", axes[0], title=f"{task} (seed {seed}): metric per round")
    plot_curves(hist, "cum_bytes", axes[1], title=f"{task} (seed {seed}): metric per cumulative byte")
    fig.tight_layout()
    return fig
