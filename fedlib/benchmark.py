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

The grid's tables and figures are :mod:`fedlib.grid_tables`. Used by ``benchmarks/run_grid.py`` (:mod:`fedlib.protocol`)
and ``notebooks/05_full_experiments.ipynb``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import pandas as pd

from .config import ExperimentConfig
from .configbase import ConfigError
from .grid_plan import finished, longest_first, reusable_run, stored_config, taken_shared_layers
from .models import backbone_for
from .references import REFERENCES
from .report import DIAGNOSTICS, shared_layer_count, summarize
from .simulation import run_simulation
from .strategies import get_strategy
from .workers import claim, file_lock, write_atomic

__all__ = [
    "run_grid",
    "run_dir",
    "pending_runs",
    "sibling_selection",
    "record_row",
    "task_params",
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
    "auc",
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
    "target_high",
    "rounds_to_target_high",
    "seconds_to_target_high",
    "bytes_to_target_high",
    "shared_layers",
    "failed_clients",
    "wall_seconds",
    "epsilon",
    *DIAGNOSTICS,
]


def split_target(target) -> tuple[float | None, float | None]:
    """A protocol's target for one task: a number (one target) or a pair ``[target, target_high]`` (e.g. 90% and 97%
    of ``centralized``'s plateau); None: none."""
    if target is None:
        return None, None
    if isinstance(target, (list, tuple)):
        if len(target) != 2 or not target[0] <= target[1]:
            raise ValueError(f"a target pair is [low, high] with low <= high, got {target!r}")
        return float(target[0]), float(target[1])
    return float(target), None


def _row(task: str, name: str, seed: int, history: pd.DataFrame, target, shared: int, wall: float) -> dict:
    low, high = split_target(target)
    s = summarize(history, low, high)
    return {
        "task": task,
        "strategy": name,
        "seed": seed,
        "global_metric": s["final_global_metric"],
        "personal_metric": s["final_personal_metric"],
        "personal_iid_metric": s["final_personal_iid_metric"],
        "target": math.nan if low is None else low,
        "target_high": math.nan if high is None else high,
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


def retarget(csv: Path, out: Path, targets: dict, slices: list[dict]) -> None:
    """:func:`_retarget` for every row of the protocol's parts ``slices`` (``tasks``, ``strategies``, ``seeds``)."""
    _retarget(
        csv,
        out,
        targets,
        {(t, n, s) for sl in slices for t in sl["tasks"] for n in sl["strategies"] for s in sl["seeds"]},
    )


def _retarget(csv: Path, out: Path, targets: dict, rows: set) -> None:
    """Done rows (of ``rows``: (task, strategy, seed)) whose target is not the protocol's now (``targets`` edited
    since): their target columns read again from their logs, nothing trained (else done rows kept the old target)."""
    for r in pd.read_csv(csv).to_dict("records") if csv.exists() else []:
        key, (low, high) = (r["task"], r["strategy"], int(r["seed"])), split_target(targets.get(r["task"]))
        if key not in rows or [low, high] == [None if v != v else v for v in (r["target"], r["target_high"])]:
            continue
        log_path = run_dir(out, key[0], key[2], key[1]) / "results.jsonl"
        if not log_path.exists():  # a row whose run folder is not here: nothing to read it from
            continue
        history = pd.read_json(log_path, lines=True, precise_float=True)
        record_row(csv, _row(*key, history, targets.get(key[0]), int(r["shared_layers"]), float(r["wall_seconds"])))


def _changed(folder: Path, cfg: ExperimentConfig) -> bool:
    """Whether a finished run's stored configuration differs from ``cfg``, the one the grid would run now (its
    protocol's params or variants were edited since): read into today's schema, so fields added later with their
    defaults do not count. A run without a stored configuration (reference rows before they stored one) counts as
    unchanged."""
    if not (folder / "config.json").exists():
        return False
    stored = stored_config(folder)
    return stored is None or stored.to_dict() != cfg.to_dict()


def sibling_selection(out: Path, task: str, seed: int, cfg: ExperimentConfig) -> dict | None:
    """The layer selection another run of this grid already made for (task, seed), if that run's stored
    configuration equals ``cfg`` but for the strategy section (the selection does not depend on it: its warm-up is
    FedAvg whatever the strategy) and its record is of today's version (:data:`fedlib.selection.RECORD_VERSION`).
    A grid run in parts, or rows re-run alone, so select once per (task, seed); each run is still charged the
    selection's bytes and seconds (its round 0)."""
    from .selection import RECORD_VERSION

    want = {k: v for k, v in cfg.to_dict().items() if k != "strategy"}
    for saved in sorted((out / task / f"seed{seed}").glob("*/selection.json")):
        stored = stored_config(saved.parent)
        try:
            record = json.loads(saved.read_text())
        except (OSError, ValueError):  # unreadable (e.g. a run killed while writing): not reused
            continue
        if stored is None or record.get("version") != RECORD_VERSION:
            continue
        if {k: v for k, v in stored.to_dict().items() if k != "strategy"} == want:
            log.info("%s/seed %d: the layer selection of %s, reused", task, seed, saved.parent.name)
            return record
    return None


def grid_configs(
    base: ExperimentConfig,
    tasks: list[str],
    strategies: list[str],
    params: dict | None,
    variants: dict | None,
    finetuned: dict | None = None,
) -> dict[tuple[str, str], ExperimentConfig]:
    """(task, row label) -> the row's configuration (seed aside), every one validated before any training.

    ``params``: per strategy, its hyper-parameters; a value may be a mapping task -> value (tuned per task,
    :func:`task_params`). ``finetuned``: derived rows, label -> the row whose runs they fine-tune (which comes
    before it in ``strategies``); that row's runs fine-tune every client for ``train.epochs`` local epochs at the end
    (``fed.finetune_epochs``, :mod:`fedlib.finetune`) and the derived row is its configuration."""
    params, variants, finetuned, configs = params or {}, variants or {}, finetuned or {}, {}
    for label, source in finetuned.items():
        if label not in strategies or source not in strategies or strategies.index(source) > strategies.index(label):
            raise ConfigError(f"finetuned.{label}: {label!r} and its source {source!r} must both be rows, source first")
    for task in tasks:
        cfg = base.replace(fed=base.fed.replace(task=task))
        for name in strategies:
            if name in variants:  # its overrides, then its own params (per task, e.g. the tuned server_lr)
                configs[task, name] = cfg.with_overrides(variants[name])
                if name in params:
                    own = {"strategy": task_params(params[name], task, f"params.{name}")}
                    configs[task, name] = configs[task, name].with_overrides(own)
            elif name in finetuned:
                configs[task, name] = configs[task, finetuned[name]]
            else:
                own = task_params(params.get(name, {}), task, f"params.{name}")
                configs[task, name] = cfg if name in REFERENCES else cfg.with_strategy(name, **own)
            if name in finetuned.values():
                rule = configs[task, name]
                configs[task, name] = rule.replace(fed=rule.fed.replace(finetune_epochs=rule.train.epochs))
    return configs


def finetuned_history(history: pd.DataFrame) -> pd.DataFrame:
    """A derived row's history from its source run's (``fed.finetune_epochs``): the same rounds and global curve, the
    personalised views those of the fine-tuned copies after the last round (none before), its seconds plus the
    fine-tuning's. Raises ValueError when the source run did not fine-tune."""
    if "finetuned_personal_metric" not in history or history["finetuned_personal_metric"].isna().all():
        raise ValueError("the source run has no fine-tuned views: run it with fed.finetune_epochs > 0")
    h = history.copy()
    last = h.index[-1]
    for view in ("personal", "personal_iid"):
        h[f"{view}_metric"] = float("nan")
        h.loc[last, f"{view}_metric"] = h.loc[last, f"finetuned_{view}_metric"]
    h.loc[last, "cum_seconds"] += float(h["seconds_finetune"].fillna(0).sum())
    return h


def run_dir(out: str | Path, task: str, seed: int, name: str) -> Path:
    """Where one run of a grid keeps its files (``config.json``, ``results.jsonl``, ``selection.json``)."""
    return Path(out) / task / f"seed{int(seed)}" / name


def task_params(params: dict, task: str, where: str = "params") -> dict:
    """One task's hyper-parameters from a strategy's ``params``, where a value may be ``{task: value}``: e.g.
    ``{"lr": {"sst2": 0.3, "mr": 1.0}, "server_lr": 1.0}`` -> ``{"lr": 0.3, "server_lr": 1.0}`` for SST-2.
    Raises :class:`fedlib.configbase.ConfigError` naming a per-task value that lacks ``task``."""
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
    finetuned: dict | None = None,
) -> list[tuple[str, str, int]]:
    """The (task, row, seed) runs the grid in ``out_dir`` still has to do: not in its CSV yet, or run with another
    configuration than the protocol's now (:func:`_changed`; logged unless ``quiet``)."""
    configs = grid_configs(base, tasks, strategies, params, variants, finetuned)
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
                if (task, name, seed) in done and finished(folder, cfg.fed.rounds):  # not a killed re-run's part
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
    finetuned: dict[str, str] | None = None,
    reuse: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Run the grid and return its table (:data:`COLUMNS`).

    ``targets``: per task, the global metric a run must reach (fixed in the protocol), or a pair ``[target,
    target_high]`` (:func:`split_target`). ``params``: per strategy
    name, hyper-parameters overriding its defaults (e.g. ``{"fedprox": {"mu": 0.1}}``). ``variants``: rows of
    their own, a label -> config overrides (``{section: {field: value}}``, :meth:`ExperimentConfig.with_overrides`),
    e.g. ``{"fedpeptao_first_k": {"strategy": {"name": "fedpeptao"}, "selection": {"choose": "first"}}}``;
    list the label among ``strategies``. ``finetuned``: derived rows (:func:`grid_configs`), e.g.
    ``{"fedavg_ft": "fedavg"}``: FedAvg followed by local fine-tuning, from FedAvg's runs (:func:`finetuned_history`).
    ``reuse``: rows -> another grid's folder whose runs of them this grid takes where they are the runs it would
    make (:func:`reusable_run`: FedPepTAO's runs for an ablation grid, ``centralized``'s at another alpha), running
    the others; a taken run's ``wall_seconds`` is the copy's.

    Resumable: a (task, strategy, seed) already in ``out_dir/results.csv`` is skipped, unless its stored
    configuration differs from the one it would run with now (e.g. tuned ``params`` written into the protocol):
    then it runs again and its row is replaced.

    ``claims``: a folder shared by workers running the same grid at once (``run_grid.py --workers n``): each run is
    taken by the first worker to claim it there, the rows sharing a layer selection (:func:`sibling_selection`) of a
    (task, seed) pair together, and a derived row with its source; rows go to the shared CSV under a file lock
    (:func:`record_row`). Claimed run by run, two workers finish a grid of few pairs together (the tuning grid, one
    seed per task, took the longest task's time when whole pairs were claimed); rows go longest first
    (:func:`longest_first`), so the last runs claimed, while another worker may idle, are short ones.
    """
    params, targets, variants, finetuned = params or {}, targets or {}, variants or {}, finetuned or {}
    reuse = reuse or {}
    for name in reuse:
        if name not in strategies or name in finetuned:
            raise ConfigError(f"reuse.{name}: not a row of the grid that runs ({strategies})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "results.csv"
    configs = grid_configs(base, tasks, strategies, params, variants, finetuned)  # every combination validated first
    todo = set(_pending(configs, tasks, strategies, seeds, out, quiet=claims is not None))
    _retarget(csv, out, targets, {(t, n, s) for t in tasks for n in strategies for s in seeds} - todo)
    grid = {
        "tasks": tasks,
        "strategies": strategies,
        "seeds": seeds,
        "targets": targets,
        "params": params,
        "variants": variants,
        "finetuned": finetuned,
        "config": base.to_dict(),
    }
    write_atomic(out / "grid.json", json.dumps(grid, indent=2))
    backbone, mine = None, set()  # the claims this worker holds

    def claim_key(task: str, name: str) -> str | None:
        """A run's claim: the pair (None) for rows sharing a selection (the task's configuration but for the
        strategy: :func:`sibling_selection`); a derived row, its source's; any other row, its own."""
        bare = lambda c: {k: v for k, v in c.to_dict().items() if k != "strategy"}  # noqa: E731
        if name not in finetuned and get_strategy(configs[task, name].strategy).layers == "selected":
            return None if bare(configs[task, name]) == bare(base.replace(fed=base.fed.replace(task=task))) else name
        return finetuned.get(name, name)

    for task in tasks:
        for name in longest_first(configs, task, strategies, finetuned, reuse):
            for seed in seeds:
                if (task, name, seed) not in todo:
                    continue
                if claims is not None:
                    key = (task, seed, claim_key(task, name))
                    if key not in mine and not claim(claims, task, seed, key[2]):
                        continue  # another worker has it
                    mine.add(key)
                folder = run_dir(out, task, seed, name)
                cfg = configs[task, name]
                cfg = cfg.replace(fed=cfg.fed.replace(seed=seed))
                backbone = backbone or backbone_for(base.model)
                t0 = time.perf_counter()
                if name in finetuned:  # derived from its source's run of this (task, seed), done before it
                    source = run_dir(out, task, seed, finetuned[name])
                    history = finetuned_history(pd.read_json(source / "results.jsonl", lines=True, precise_float=True))
                    done = pd.read_csv(csv)
                    source_row = (done.task == task) & (done.strategy == finetuned[name]) & (done.seed == seed)
                    shared = int(done.loc[source_row, "shared_layers"].iloc[0])
                    folder.mkdir(parents=True, exist_ok=True)
                    history.to_json(folder / "results.jsonl", orient="records", lines=True, double_precision=15)
                    (folder / "config.json").write_text(cfg.to_json())
                elif name in reuse and reusable_run(theirs := run_dir(reuse[name], task, seed, name), cfg, name):
                    history = pd.read_json(theirs / "results.jsonl", lines=True, precise_float=True)
                    shared = taken_shared_layers(Path(reuse[name]), task, name, seed)
                    log.info("%s/%s/seed %d: the run in %s, reused", task, name, seed, theirs)
                    folder.mkdir(parents=True, exist_ok=True)
                    for file in ("results.jsonl", "selection.json"):  # copied: every digit kept
                        if (theirs / file).exists():
                            shutil.copyfile(theirs / file, folder / file)
                    (folder / "config.json").write_text(cfg.to_json())
                elif name in REFERENCES:
                    history, shared = REFERENCES[name](cfg, backbone), 0
                    folder.mkdir(parents=True, exist_ok=True)
                    history.to_json(folder / "results.jsonl", orient="records", lines=True, double_precision=15)
                    (folder / "config.json").write_text(cfg.to_json())
                else:
                    selected = get_strategy(cfg.strategy).layers == "selected"
                    selection = sibling_selection(out, task, seed, cfg) if selected else None
                    res = run_simulation(cfg, folder, backbone=backbone, progress=progress, selection=selection)
                    history, shared = res.history, shared_layer_count(res)
                wall = time.perf_counter() - t0
                if name in finetuned:  # its cost: the fine-tuning inside its source's run
                    wall += float(history["seconds_finetune"].fillna(0).sum())
                log.info("%s/%s/seed %d: %.1f s", task, name, seed, wall)
                record_row(csv, _row(task, name, seed, history, targets.get(task), shared, wall))

    def rank(r):
        keys = ((tasks, r["task"]), (seeds, int(r["seed"])), (strategies, r["strategy"]))
        return tuple(xs.index(x) if x in xs else len(xs) for xs, x in keys)

    rows = pd.read_csv(csv).to_dict("records") if csv.exists() else []
    rows.sort(key=rank)
    return pd.DataFrame(rows).reindex(columns=COLUMNS)
