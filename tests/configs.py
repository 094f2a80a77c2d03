"""Tests' shorthand for building an ExperimentConfig from flat keyword arguments, each routed to the section
that has that field (``rounds`` -> ``fed``, ``train_limit`` -> ``data``, ``shared_layers`` -> ``selection``, ...).
``strategy`` names the strategy and ``strategy_params`` its hyper-parameters."""

from __future__ import annotations

import dataclasses

from fedlib.config import ExperimentConfig

SECTIONS = ("fed", "data", "partition", "selection", "run", "train", "model", "privacy")


def build(
    model=None, train=None, strategy: str = "fedavg", strategy_params: dict | None = None, **flat
) -> ExperimentConfig:
    cfg = ExperimentConfig()
    if model is not None:
        cfg = cfg.replace(model=model)
    if train is not None:
        cfg = cfg.replace(train=train)
    changes: dict[str, dict] = {}
    for key, value in flat.items():
        section = next((s for s in SECTIONS if key in {f.name for f in dataclasses.fields(getattr(cfg, s))}), None)
        if section is None:
            raise TypeError(f"no config section has a field {key!r}")
        changes.setdefault(section, {})[key] = value
    cfg = cfg.replace(**{s: getattr(cfg, s).replace(**v) for s, v in changes.items()})
    return cfg.with_strategy(strategy, **(strategy_params or {}))
