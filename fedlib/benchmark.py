"""A grid of federated runs: tasks x strategies x seeds on one model, partition scheme and round budget.

:func:`run_grid` writes one CSV row per (task, strategy, seed): the final metric of each evaluation view
(``global_metric``, ``personal_metric``, ``personal_iid_metric``; :mod:`fedlib.evaluation`), bytes and seconds
per round and in total (layer selection included, and on its own), and the round, seconds and bytes at which the
run's global metric first reached the task's fixed ``target`` (NaN: not within the run, i.e. censored). The
strategies may include the reference rows of :mod:`fedlib.references` (``majority_local``, ``centralized``) and
``local_only``. A seed fixes the partition, the initial prompts and the client sampling, identically for every
strategy, so rows of one seed are paired; strategies that share selected layers (``fedpeptao``, ``fedavg_selected``)
compute the selection once per (task, seed) and configuration (:func:`sibling_selection`, also across processes)
and are each charged its cost. Labelled variants (config overrides)
make rows of their own: the ablations. Runs already in the CSV are skipped: an
interrupted grid resumes.

The tables (:func:`view_table`, :func:`paired_table`, :func:`cost_table`) give means with 95% confidence
intervals over seeds, paired differences against one method, and censored medians of the costs to target.
Used by ``benchmarks/run_grid.py`` and ``notebooks/05_full_experiments.ipynb``.
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
from .references import REFERENCES
from .report import DIAGNOSTICS, shared_layer_count, summarize
from .simulation import run_simulation
from .stats import censored_median, floor_flags, holds, holm, mean_ci, paired_differences, summary_table
from .strategies import get_strategy
from .workers import claim, file_lock, write_atomic

__all__ = [
    "run_grid",
    "run_dir",
    "pending_runs",
    "sibling_selection",
    "record_row",
    "plot_grid",
    "view_table",
    "paired_table",
    "cost_table",
    "COLUMNS",
    "VIEW_COLUMNS",
]

log = logging.getLogger(__name__)
VIEW_COLUMNS = ["global_metric", "personal_metric", "personal_iid_metric"]
COLUMNS = [
    "task",
    "strategy",
    "seed",
    *VIEW_COLUMNS,
    "bytes_per_round",
    "bytes_total",
    "selection_bytes",
    "seconds_per_round",
    "seconds_total",
    "selection_seconds",
    "rounds",
    "target",
    "rounds_to_target",
    "seconds_to_target",
    "bytes_to_target",
    "shared_layers",
    "failed_clients",
    "wall_seconds",
    "epsilon",
    *DIAGNOSTICS,
]


def _row(
    task: str, name: str, seed: int, history: pd.DataFrame, target: float | None, shared: int, wall: float
) -> dict:
    s = summarize(history, target)
    return {
        "task": task,
        "strategy": name,
        "seed": seed,
        "global_metric": s["final_global_metric"],
        "personal_metric": s["final_personal_metric"],
        "personal_iid_metric": s["final_personal_iid_metric"],
        "target": math.nan if target is None else target,
        "shared_layers": shared,
        "wall_seconds": wall,
        **{k: s.get(k, math.nan) for k in COLUMNS if k in s},
    }


def record_row(csv: Path, row: dict) -> list[dict]:
    """Put ``row`` into the grid's CSV (replacing the row of the same task, strategy and seed) and return all rows.
    Read, changed and replaced under an exclusive lock on the grid's ``grid.lock``, so workers can share it."""
    with file_lock(csv.parent / "grid.lock"):
        rows = pd.read_csv(csv).to_dict("records") if csv.exists() else []
        key = (row["task"], row["strategy"], int(row["seed"]))
        rows = [r for r in rows if (r["task"], r["strategy"], int(r["seed"])) != key] + [row]
        write_atomic(csv, pd.DataFrame(rows).reindex(columns=COLUMNS).to_csv(index=False))
    return rows


def _changed(folder: Path, cfg: ExperimentConfig) -> bool:
    """Whether a finished run's stored configuration differs from ``cfg``, the one the grid would run now (its
    protocol's params or variants were edited since): read into today's schema, so fields added later with their
    defaults do not count. A run without a stored configuration (reference rows before they stored one) counts as
    unchanged."""
    from .configbase import ConfigError

    path = folder / "config.json"
    if not path.exists():
        return False
    try:
        return ExperimentConfig.from_dict(json.loads(path.read_text())).to_dict() != cfg.to_dict()
    except (ConfigError, ValueError, TypeError):
        return True


def sibling_selection(out: Path, task: str, seed: int, cfg: ExperimentConfig) -> dict | None:
    """The layer selection another run of this grid already made for (task, seed), if that run's stored
    configuration equals ``cfg`` but for the strategy section (the selection does not depend on it: its warm-up is
    FedAvg whatever the strategy) and its record is of today's version (:data:`fedlib.selection.RECORD_VERSION`).
    A grid run in parts, or rows re-run alone, so select once per (task, seed); each run is still charged the
    selection's bytes and seconds (its round 0)."""
    from .selection import RECORD_VERSION

    want = {k: v for k, v in cfg.to_dict().items() if k != "strategy"}
    for saved in sorted((out / task / f"seed{seed}").glob("*/selection.json")):
        try:
            theirs = ExperimentConfig.from_dict(json.loads((saved.parent / "config.json").read_text())).to_dict()
            record = json.loads(saved.read_text())
        except (OSError, ValueError, TypeError):  # unreadable (e.g. a run killed while writing): not reused
            continue
        if record.get("version") == RECORD_VERSION and {k: v for k, v in theirs.items() if k != "strategy"} == want:
            log.info("%s/seed %d: the layer selection of %s, reused", task, seed, saved.parent.name)
            return record
    return None


def grid_configs(
    base: ExperimentConfig, tasks: list[str], strategies: list[str], params: dict | None, variants: dict | None
) -> dict[tuple[str, str], ExperimentConfig]:
    """(task, row label) -> the row's configuration (seed aside), every one validated before any training.

    ``params``: per strategy, its hyper-parameters; a value may be a mapping task -> value (tuned per task,
    :func:`task_params`)."""
    params, variants, configs = params or {}, variants or {}, {}
    for task in tasks:
        cfg = base.replace(fed=base.fed.replace(task=task))
        for name in strategies:
            if name in variants:
                configs[task, name] = cfg.with_overrides(variants[name])
            else:
                own = task_params(params.get(name, {}), task, f"params.{name}")
                configs[task, name] = cfg if name in REFERENCES else cfg.with_strategy(name, **own)
    return configs


def run_dir(out: str | Path, task: str, seed: int, name: str) -> Path:
    """Where one run of a grid keeps its files (``config.json``, ``results.jsonl``, ``selection.json``)."""
    return Path(out) / task / f"seed{int(seed)}" / name


def task_params(params: dict, task: str, where: str = "params") -> dict:
    """One task's hyper-parameters from a strategy's ``params``, where a value may be ``{task: value}``: e.g.
    ``{"lr": {"sst2": 0.3, "mr": 1.0}, "server_lr": 1.0}`` -> ``{"lr": 0.3, "server_lr": 1.0}`` for SST-2.
    Raises :class:`fedlib.configbase.ConfigError` naming a per-task value that lacks ``task``."""
    from .configbase import ConfigError

    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            if task not in value:
                raise ConfigError(f"{where}.{key}: a value per task, {sorted(value)}, without {task!r}")
            value = value[task]
        out[key] = value
    return out


def pending_runs(
    base: ExperimentConfig,
    tasks: list[str],
    strategies: list[str],
    seeds: list[int],
    out_dir: str | Path,
    params: dict | None = None,
    variants: dict | None = None,
    quiet: bool = False,
) -> list[tuple[str, str, int]]:
    """The (task, row, seed) runs the grid in ``out_dir`` still has to do: not in its CSV yet, or run with another
    configuration than the protocol's now (:func:`_changed`; logged unless ``quiet``)."""
    configs = grid_configs(base, tasks, strategies, params, variants)
    return _pending(configs, tasks, strategies, seeds, Path(out_dir), quiet)


def _pending(configs: dict, tasks: list[str], strategies: list[str], seeds: list[int], out: Path, quiet: bool) -> list:
    """:func:`pending_runs` from the grid's configurations (:func:`grid_configs`), already built."""
    csv = out / "results.csv"
    done = {(r.task, r.strategy, int(r.seed)) for r in pd.read_csv(csv).itertuples()} if csv.exists() else set()
    todo = []
    for task in tasks:
        for seed in seeds:
            for name in strategies:
                folder = run_dir(out, task, seed, name)
                cfg = configs[task, name].replace(fed=configs[task, name].fed.replace(seed=seed))
                if (task, name, seed) in done and (folder / "results.jsonl").exists():
                    if not _changed(folder, cfg):
                        continue
                    if not quiet:
                        log.warning(
                            "%s/%s/seed %d: its configuration changed since it ran; to run again", task, name, seed
                        )
                todo.append((task, name, seed))
    return todo


def run_grid(
    base: ExperimentConfig,
    tasks: list[str],
    strategies: list[str],
    seeds: list[int],
    out_dir: str | Path,
    targets: dict[str, float] | None = None,
    progress: bool | None = None,
    params: dict[str, dict] | None = None,
    variants: dict[str, dict] | None = None,
    claims: Path | None = None,
) -> pd.DataFrame:
    """Run the grid and return its table (:data:`COLUMNS`).

    ``targets``: per task, the global metric a run must reach (fixed in the protocol). ``params``: per strategy
    name, hyper-parameters overriding its defaults (e.g. ``{"fedprox": {"mu": 0.1}}``). ``variants``: rows of
    their own, a label -> config overrides (``{section: {field: value}}``, :meth:`ExperimentConfig.with_overrides`),
    e.g. ``{"fedpeptao_first_k": {"strategy": {"name": "fedpeptao"}, "selection": {"choose": "first"}}}``;
    list the label among ``strategies``.

    Resumable: a (task, strategy, seed) already in ``out_dir/results.csv`` is skipped, unless its stored
    configuration differs from the one it would run with now (e.g. tuned ``params`` written into the protocol):
    then it runs again and its row is replaced.

    ``claims``: a folder shared by workers running the same grid at once (``run_grid.py --workers n``): each
    (task, seed) pair with runs to do is taken by the first worker to claim it there (its rows stay together, so
    they share its layer selection); rows go to the shared CSV under a file lock (:func:`record_row`).
    """
    params, targets, variants = params or {}, targets or {}, variants or {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "results.csv"
    configs = grid_configs(base, tasks, strategies, params, variants)  # every combination validated first
    todo = set(_pending(configs, tasks, strategies, seeds, out, quiet=claims is not None))
    grid = {
        "tasks": tasks,
        "strategies": strategies,
        "seeds": seeds,
        "targets": targets,
        "params": params,
        "variants": variants,
        "config": base.to_dict(),
    }
    write_atomic(out / "grid.json", json.dumps(grid, indent=2))
    backbone = None
    for task in tasks:
        for seed in seeds:
            if (
                claims is not None
                and any(t == task and s == seed for t, _, s in todo)
                and not claim(claims, task, seed)
            ):
                continue  # another worker has this pair
            for name in strategies:
                if (task, name, seed) not in todo:
                    continue
                folder = run_dir(out, task, seed, name)
                cfg = configs[task, name]
                cfg = cfg.replace(fed=cfg.fed.replace(seed=seed))
                backbone = backbone or backbone_for(base.model)
                t0 = time.perf_counter()
                if name in REFERENCES:
                    history, shared = REFERENCES[name](cfg, backbone), 0
                    folder.mkdir(parents=True, exist_ok=True)
                    history.to_json(folder / "results.jsonl", orient="records", lines=True)
                    (folder / "config.json").write_text(cfg.to_json())
                else:
                    selected = get_strategy(cfg.strategy).layers == "selected"
                    selection = sibling_selection(out, task, seed, cfg) if selected else None
                    res = run_simulation(cfg, folder, backbone=backbone, progress=progress, selection=selection)
                    history, shared = res.history, shared_layer_count(res)
                wall = time.perf_counter() - t0
                log.info("%s/%s/seed %d: %.1f s", task, name, seed, wall)
                record_row(csv, _row(task, name, seed, history, targets.get(task), shared, wall))

    def rank(r):
        keys = ((tasks, r["task"]), (seeds, int(r["seed"])), (strategies, r["strategy"]))
        return tuple(xs.index(x) if x in xs else len(xs) for xs, x in keys)

    rows = pd.read_csv(csv).to_dict("records") if csv.exists() else []
    rows.sort(key=rank)
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def view_table(table: pd.DataFrame, level: float = 0.95, floor: str | None = None) -> pd.DataFrame:
    """Per (task, strategy): each view's mean ± half-width of its 95% CI over seeds, the mean bytes and the median
    seconds (a median, so that one run slowed by other work on the machine does not move it). ``floor`` (e.g.
    ``"majority_local"``, a row of the table): a column naming the views on which a row's mean is at or below the
    floor row's mean on its task."""
    out = summary_table(table, VIEW_COLUMNS, level)
    g = table.groupby(["task", "strategy"], sort=False)
    cost = pd.concat([g["bytes_total"].mean(), g["seconds_total"].median().rename("median_seconds")], axis=1)
    out = out.merge(cost.reset_index(), on=["task", "strategy"], how="left")
    if floor is not None:
        out["at_or_below_floor"] = (
            floor_flags(table, VIEW_COLUMNS, floor).reindex(list(zip(out["task"], out["strategy"]))).values
        )
    return out


def paired_table(table: pd.DataFrame, method: str = "fedpeptao", level: float = 0.95) -> pd.DataFrame:
    """``method`` minus every other row, per task and view: mean paired (same seed) difference ± CI, wins, the paired
    t-test's p-value and ``p_holm``, Holm-adjusted over the whole table: one family per protocol (every row, task and
    view compared), so a comparison whose ``p_holm`` is below 1 - level holds with the family's error controlled."""
    parts = [paired_differences(table, view, method, level) for view in VIEW_COLUMNS]
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
    seed did not reach it within the run's R rounds), how many seeds reached it, selection's share of the bytes."""
    rows = []
    horizons = table.groupby("task")["rounds"].max()
    for (task, strategy), g in table.groupby(["task", "strategy"], sort=False):
        horizon = float(horizons[task])
        mb = g["bytes_to_target"] / 1e6
        rows.append(
            {
                "task": task,
                "strategy": strategy,
                "target": g["target"].iloc[0],
                "rounds_to_target": censored_median(g["rounds_to_target"], horizon),
                "seconds_to_target": censored_median(g["seconds_to_target"].round(1)),
                "MB_to_target": censored_median(mb.round(3)),
                "reached": f"{int(g['rounds_to_target'].notna().sum())}/{len(g)}",
                "selection_MB": float(g["selection_bytes"].mean() / 1e6),
                "total_MB": float(g["bytes_total"].mean() / 1e6),
            }
        )
    return pd.DataFrame(rows)


def grid_histories(out_dir: str | Path, task: str, seed: int) -> dict[str, pd.DataFrame]:
    """The per-round histories of one (task, seed) of a grid, by strategy."""
    base = Path(out_dir) / task / f"seed{seed}"
    return {p.parent.name: pd.read_json(p, lines=True) for p in sorted(base.glob("*/results.jsonl"))}


def plot_grid(
    out_dir: str | Path,
    task: str,
    seeds: int | list[int],
    view: str = "global_metric",
    highlight: tuple[str, ...] = ("fedpeptao",),
):
    """Two panels, one line per strategy with its 95% CI band over ``seeds``: ``view`` per round and per cumulative
    MB (selection included). References without rounds (``majority_local``) are a dashed horizontal line."""
    import matplotlib.pyplot as plt
    import numpy as np

    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    runs: dict[str, list[pd.DataFrame]] = {}
    for seed in seeds:
        for name, h in grid_histories(out_dir, task, seed).items():
            if view in h:
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
