"""Which runs a grid makes, and in what order: the longest first, and none that another grid already made.

- :func:`longest_first`: the order a grid's workers claim a task's rows in, so that the runs left when one worker
  has nothing more to claim are short ones (the longest-processing-time-first rule).
- :func:`reusable_run`: whether another grid's run is the one this grid would make (an ablation grid takes
  FedPepTAO's runs from the protocol it ablates; a grid at another alpha takes ``centralized``'s, which pool the data,
  :data:`fedlib.references.POOLED`), and :func:`taken_shared_layers`, that run's count of shared layers.

Used by :func:`fedlib.benchmark.run_grid` (a protocol's ``reuse``, :mod:`fedlib.protocol`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .checkpoint import read_log
from .config import ExperimentConfig
from .configbase import ConfigError
from .references import POOLED, REFERENCES
from .strategies import get_strategy

__all__ = ["finished", "longest_first", "reusable_run", "stored_config", "taken_shared_layers"]


def finished(folder: Path, rounds: int) -> bool:
    """Whether ``folder``'s ``results.jsonl`` reaches round ``rounds``: a run killed or failed part-way (its
    ``config.json`` and a part of its log are written from the start) is not finished."""
    return max((r.get("round", 0) for r in read_log(folder / "results.jsonl")), default=-1) >= rounds


def stored_config(folder: Path) -> ExperimentConfig | None:
    """A run folder's stored configuration (``config.json``) read into today's schema, so fields added since take
    their defaults; None where it is absent or unreadable (a run killed while writing it, a schema it no longer
    fits)."""
    try:
        return ExperimentConfig.from_dict(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError, TypeError, ConfigError):
        return None


def reusable_run(folder: Path, cfg: ExperimentConfig, name: str) -> bool:
    """Whether ``folder`` holds a finished run (``config.json``, a ``results.jsonl`` reaching the last round; another
    grid's) that is the run of row ``name`` that ``cfg`` would make: the same configuration, or for a row of
    :data:`fedlib.references.POOLED` the same but for ``partition.alpha``, which its runs do not read."""
    theirs = stored_config(folder)
    if theirs is None:  # absent or unreadable: not reusable
        return False
    if name in POOLED:
        theirs = theirs.replace(partition=theirs.partition.replace(alpha=cfg.partition.alpha))
    return theirs.to_dict() == cfg.to_dict() and finished(folder, cfg.fed.rounds)


def taken_shared_layers(grid: Path, task: str, name: str, seed: int) -> int:
    """A reused run's count of shared layers, from the row its own grid recorded (0 where it recorded none)."""
    rows = (
        pd.read_csv(grid / "results.csv")
        if (grid / "results.csv").exists()
        else pd.DataFrame(columns=["task", "strategy", "seed"])
    )
    hit = rows[(rows.task == task) & (rows.strategy == name) & (rows.seed == seed)]
    return int(hit["shared_layers"].iloc[0]) if len(hit) else 0


def longest_first(configs: dict, task: str, strategies: list[str], finetuned: dict, reuse: dict) -> list[str]:
    """A task's rows in the order a grid takes them, the longest runs first, in the protocol's order within each
    class: rows sharing a layer selection (a pair claimed together), a derived row's source (it also fine-tunes),
    the other federated rows, then the reference, derived and reused rows (short, or nothing to train). With every
    seed of a row before the next row, the runs claimed last, while another worker may have nothing left, are the
    shortest (the longest-processing-time-first rule)."""

    def kind(name: str) -> int:
        if name in finetuned or name in reuse or name in REFERENCES:
            return 3
        if name in finetuned.values():
            return 1
        return 0 if get_strategy(configs[task, name].strategy).layers == "selected" else 2

    return sorted(strategies, key=kind)
