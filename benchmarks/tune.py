"""Choose strategies' hyper-parameters on a validation split carved from the training data, never the eval set.

    python benchmarks/tune.py benchmarks/protocols/cpu-medium.yaml --out runs/tune-cpu-medium --write

Reads the protocol's ``tuning`` section:

    tuning:
      validation: 300                 # training examples held out as the evaluation set (data.validation)
      seeds: [0, 1]
      tasks: [sst2]                   # default: the protocol's tasks
      metric: auc                     # default global_metric (the final one); auc: the mean over every round
      grid: {fedprox: {mu: [0.001, 0.01, 0.1]}, fedpeptao: {server_lr: [0.01, 0.05, 0.2]}}

Every combination of a strategy's values is a labelled variant of one grid (:func:`fedlib.benchmark.run_grid`, same
seeds, partitions and sampling as the protocol, so resumable). The runs evaluate the global model once, after the last
round (``fed.eval_every: 0``, no personalised views), or with ``metric: auc`` after every round, and the choice is made
on one number: the final global metric, or the area under the global curve (its mean over the rounds) where the
protocol's claims are about convergence. **Per task**, on that task's
own metric (accuracy, or CoLA's MCC: never a mean over tasks of different metrics), the combination with the best mean
over seeds wins. Means within one validation example (1 / validation) of the best are ties, and among ties the
protocol's current value stays (else the best of them, then the first listed): a hyper-parameter whose effect is
below what the validation set can resolve does not move the protocol, nor force its rows to be run again. A choice at
the edge of a grid axis (its smallest or largest value) is marked: the best value may lie beyond it.

Prints every candidate's mean per task and the choices; writes ``<out>/tuning.csv`` (every run) and
``<out>/choices.csv`` (per task and strategy: the chosen values, their mean, the runner-up's, the majority floor's on
the same split, edges); ``--write`` sets
the protocol's ``params`` line to the chosen values (a value that differs between tasks as ``{task: value}``, read by
:func:`fedlib.benchmark.task_params`), every other line kept.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
from pathlib import Path

import pandas as pd

from fedlib.benchmark import run_grid, task_params
from fedlib.config import ExperimentConfig
from fedlib.configbase import yaml_load
from fedlib.workers import grid_lock, run_workers


def candidates(grid: dict[str, dict[str, list]]) -> dict[str, tuple[str, dict]]:
    """label -> (strategy, hyper-parameters), one per combination of each strategy's listed values."""
    out = {}
    for name, space in grid.items():
        keys = list(space)
        for values in itertools.product(*(space[k] for k in keys)):
            params = dict(zip(keys, values))
            out[name + "".join(f"_{k}={v}" for k, v in params.items())] = (name, params)
    return out


def write_params(protocol: Path, params: dict) -> None:
    """Set the protocol's one-line ``params:`` mapping (or add one before ``experiment:``), keeping other lines."""
    text = protocol.read_text()
    line = "params: " + json.dumps(params, separators=(", ", ": ")).replace('"', "")
    if re.search(r"^params:.*$", text, flags=re.M):
        text = re.sub(r"^params:.*$", line, text, count=1, flags=re.M)
    else:
        text = re.sub(r"^experiment:", line + "\nexperiment:", text, count=1, flags=re.M)
    protocol.write_text(text)


def choose(
    table,
    labels: dict,
    known: dict,
    base: ExperimentConfig,
    tasks: list[str],
    tol: float,
    metric: str = "global_metric",
) -> list[dict]:
    """Per task and tuned strategy: the chosen combination (module docstring), as rows of ``choices.csv``: the best
    mean over seeds of ``metric`` (a column of the grid's table: ``global_metric`` or ``auc``)."""
    rows = []
    for task in tasks:
        here = table[table["task"] == task]
        means = here.groupby("strategy", sort=False)[metric].mean()
        if metric != "global_metric":  # the floor has no curve: its one number stands for every round
            means = means.fillna(here.groupby("strategy", sort=False)["global_metric"].mean())
        for name in dict.fromkeys(n for n, _ in labels.values()):
            mine = [label for label, (n, _) in labels.items() if n == name]
            own = task_params(known.get(name, {}), task, f"params.{name}")
            current = base.with_strategy(name, **own).strategy  # the protocol's value, or the default
            top = max(means[label] for label in mine)
            tied = [label for label in mine if means[label] >= top - tol]
            kept = [label for label in tied if all(getattr(current, k) == v for k, v in labels[label][1].items())]
            best = kept[0] if kept else max(tied, key=lambda label: (means[label], -mine.index(label)))
            values = labels[best][1]
            axes = {k: sorted({labels[label][1][k] for label in mine}) for k in values}
            edges = [k for k, grid in axes.items() if len(grid) > 1 and values[k] in (grid[0], grid[-1])]
            others = [means[label] for label in mine if label != best]
            for label in mine:
                mark = "  <- chosen" if label == best else ("  (tie)" if label in tied else "")
                print(f"{task} {label}: validation {metric} {means[label]:.4f}{mark}")
            if edges:
                print(f"{task} {name}: {', '.join(f'{k}={values[k]}' for k in edges)} at the edge of its grid")
            rows.append(
                {
                    "task": task,
                    "strategy": name,
                    "chosen": json.dumps(values),
                    "grid": json.dumps(axes),
                    "metric": float(means[best]),
                    "runner_up": float(max(others)) if others else float("nan"),
                    "floor": float(means.get("majority_local", float("nan"))),  # majority_local on the same split
                    "ties": len(tied),
                    "edge": ",".join(edges),
                }
            )
    return rows


def merged_params(known: dict, rows: list[dict], tasks: list[str], all_tasks: list[str] | None = None) -> dict:
    """The protocol's ``params`` with the choices made for ``tasks``: one value where every one of ``all_tasks``
    (the protocol's; default ``tasks``) that has a value has the same, else ``{task: value}``; a task not tuned keeps
    its known value (one with none takes the tuned value, as the one value written)."""
    all_tasks = list(all_tasks or tasks)
    chosen = {name: dict(values) for name, values in known.items()}
    for name in dict.fromkeys(r["strategy"] for r in rows):
        per_task = {r["task"]: json.loads(r["chosen"]) for r in rows if r["strategy"] == name}
        for key in next(iter(per_task.values())):
            old = chosen.get(name, {}).get(key)
            kept = old if isinstance(old, dict) else {t: old for t in all_tasks}
            values = {t: per_task[t][key] if t in tasks else kept.get(t) for t in all_tasks}
            values = {t: v for t, v in values.items() if v is not None}  # a task with no value, tuned or known
            one = len(set(map(json.dumps, values.values()))) == 1  # also the only value there is: every task's
            chosen.setdefault(name, {})[key] = next(iter(values.values())) if one else values
    return chosen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("protocol", help="a protocol YAML with a 'tuning' section")
    p.add_argument("--out", required=True)
    p.add_argument("--write", action="store_true", help="write the chosen values into the protocol's params")
    p.add_argument("--workers", type=int, default=1, help="processes running the grid at once (as run_grid.py)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = Path(args.protocol)
    proto = yaml_load(path.read_text())
    tuning = proto.get("tuning")
    if not tuning or not tuning.get("grid"):
        raise SystemExit(f"{path}: no 'tuning' section with a 'grid' (see {__file__})")
    metric = tuning.get("metric", "global_metric")
    if metric not in ("global_metric", "auc"):
        raise SystemExit(f"{path}: tuning.metric={metric!r}, one of 'global_metric' (the final one) and 'auc'")
    base = ExperimentConfig.from_dict(proto["experiment"])
    base = base.replace(
        data=base.data.replace(validation=int(tuning.get("validation", 300)), eval_limit=0),
        # one number per run: the final global metric, or its mean over every round (no personalised views)
        fed=base.fed.replace(eval_every=int(metric == "auc"), personal_eval=False),
    )
    known = dict(proto.get("params") or {})
    labels = candidates(tuning["grid"])
    variants, fixed = {}, {}
    for label, (name, params) in labels.items():
        variants[label] = {"strategy": {"name": name, **params}}
        # the strategy's other known values, per task where the protocol gives them so (run_grid resolves them)
        fixed[label] = {k: v for k, v in known.get(name, {}).items() if k not in params}
    tasks = tuning.get("tasks") or proto["tasks"]
    strategies = ["majority_local", *labels]  # majority_local: the floor on the same validation split (no model)
    seeds = tuning.get("seeds", [0, 1])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.workers > 1:
        with grid_lock(out):
            claims = out / "claims"
            run_workers(_run, (base, tasks, strategies, seeds, out, variants, fixed, claims), args.workers, claims)
        table = pd.read_csv(out / "results.csv")
    else:
        table = run_grid(base, tasks, strategies, seeds, out, params=fixed, variants=variants)
    table = table[table.task.isin(tasks) & table.strategy.isin(strategies) & table.seed.isin(seeds)]  # this grid's
    table.to_csv(out / "tuning.csv", index=False)
    rows = choose(table, labels, known, base, tasks, tol=1.0 / base.data.validation, metric=metric)
    pd.DataFrame(rows).to_csv(out / "choices.csv", index=False)
    chosen = merged_params(known, rows, tasks, proto["tasks"])
    print("params:", json.dumps(chosen))
    if args.write:
        write_params(path, chosen)
        print(f"wrote params into {path}")


def _run(base, tasks, strategies, seeds, out, variants, fixed, claims):
    """One ``--workers`` process: its share of the tuning grid (:func:`fedlib.benchmark.run_grid` with claims)."""
    run_grid(base, tasks, strategies, seeds, out, params=fixed, variants=variants, claims=claims, progress=False)


if __name__ == "__main__":
    main()
