"""Command-line access to every config field: ``--section.field value``, generated from the typed configs.

:func:`add_config_arguments` adds one option per field of :class:`~fedlib.config.ExperimentConfig` (help text,
type and default from the dataclass) and one per strategy hyper-parameter (``--strategy.server_lr``; its help
says which strategies have it). Values are read as YAML scalars (``0.1``, ``true``, ``null``, ``[a, b]``).
:func:`apply_overrides` applies ``{"section.field": value}`` to a config (the Flower ServerApp uses it for its
run config too). ``python -m fedlib.cli docs`` prints ``docs/config.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from .config import ExperimentConfig, config_reference
from .configbase import ConfigError, describe, yaml_load
from .strategies import STRATEGIES, strategy_config

__all__ = ["add_config_arguments", "config_from_args", "apply_overrides", "load_config", "plain"]


def plain(text: str) -> str:
    """Docstring text for a terminal: Sphinx roles (``:mod:`fedlib.benchmark```, ``:class:`~a.B```) and double
    backquotes become plain text, as ``--help`` prints them."""
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text).replace("``", "")


def _value(text: str) -> Any:
    try:
        return yaml_load(text)
    except yaml.YAMLError:
        return text


def _strategy_params() -> dict[str, tuple[str, list[str]]]:
    """Every strategy hyper-parameter: name -> (help of its first strategy, the strategies that have it)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for sname, cls in STRATEGIES.items():
        for name, _tp, _default, help_ in describe(cls.Config):
            if name != "name":
                help0, names = out.get(name, (help_, []))
                out[name] = (help0, names + [sname])
    return out


SHORT = {
    "fed.task": "--task",
    "fed.rounds": "--rounds",
    "fed.num_clients": "--num-clients",
    "fed.clients_per_round": "--clients-per-round",
    "fed.seed": "--seed",
    "data.train_limit": "--train-limit",
    "data.eval_limit": "--eval-limit",
    "model.name": "--model",
    "run.device": "--device",
}


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One ``--section.field`` option per config field (default: unset, the config's value stands); the most
    used also have a short name (:data:`SHORT`, e.g. ``--rounds`` for ``--fed.rounds``)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, tp, default, help_ in describe(ExperimentConfig):
        section = name.split(".")[0]
        group = groups.setdefault(section, parser.add_argument_group(f"{section} (config section)"))
        extra = f" (one of: {', '.join(STRATEGIES)})" if name == "strategy.name" else ""
        flags = [f"--{name}"] + ([SHORT[name]] if name in SHORT else [])
        group.add_argument(
            *flags,
            dest=name,
            type=_value,
            default=argparse.SUPPRESS,  # absent unless given: "--x null" sets None, a flag not given changes nothing
            metavar=tp.split(" ")[0].upper(),
            help=plain(f"{help_}{extra} [{tp}; default {default!r}]"),
        )
    group = groups["strategy"]
    for name, (help_, names) in _strategy_params().items():
        group.add_argument(
            f"--strategy.{name}",
            dest=f"strategy.{name}",
            type=_value,
            default=argparse.SUPPRESS,  # absent unless given: "--x null" sets None, a flag not given changes nothing
            help=plain(f"{help_} [{', '.join(names)}]"),
        )
    return parser


def load_config(path: str | Path | None) -> ExperimentConfig:
    """An ExperimentConfig from a YAML or JSON file (None: the defaults)."""
    if not path:
        return ExperimentConfig()
    path = str(path)
    return (
        ExperimentConfig.from_yaml(Path(path))
        if path.endswith((".yaml", ".yml"))
        else ExperimentConfig.from_json(Path(path))
    )


def apply_overrides(cfg: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """``cfg`` with ``{"section.field": value}`` set (validated; a :class:`ConfigError` names a bad key).

    ``strategy.name`` switches strategy (its defaults, then the given ``strategy.*`` values)."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if value is None and key == "strategy.name":
            continue
        section, _, name = key.partition(".")
        if not name:
            raise ConfigError(f"{key!r}: give 'section.field', e.g. 'fed.rounds'")
        sections.setdefault(section, {})[name] = value
    valid = {f.name for f in dataclasses.fields(ExperimentConfig)}
    for section in sections:
        if section not in valid:
            raise ConfigError(f"{section!r} is not a config section; the sections are {sorted(valid)}")
    changes = {}
    for section, values in sections.items():
        if section == "strategy":
            name = values.pop("name", cfg.strategy.name)
            base = cfg.strategy.hyper_parameters() if name == cfg.strategy.name else {}
            changes["strategy"] = strategy_config(name, **{**base, **values})
            continue
        current = getattr(cfg, section)
        names = {f.name for f in dataclasses.fields(current)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{section}: unknown field(s) {unknown}; valid fields are {sorted(names)}")
        data = current.to_dict()
        data.update(values)
        changes[section] = type(current).from_dict(data)
    return cfg.replace(**changes)


def config_from_args(args: argparse.Namespace, base: ExperimentConfig | None = None) -> ExperimentConfig:
    """``base`` (or ``--config``'s file) with every ``--section.field`` given on the command line applied."""
    if getattr(args, "config", None):
        base = load_config(args.config)
    base = base if base is not None else ExperimentConfig()
    return apply_overrides(base, {k: v for k, v in vars(args).items() if "." in k})


def main(argv: list[str] | None = None, prog: str = "python -m fedlib.cli") -> None:
    parser = argparse.ArgumentParser(prog=prog, description="fedlib's configuration")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("docs", help="print the configuration reference (docs/config.md)")
    show = sub.add_parser("show", help="print the config (defaults, --config file, overrides) as YAML")
    show.add_argument("--config", help="an ExperimentConfig YAML or JSON file")
    add_config_arguments(show)
    args = parser.parse_args(argv)
    if args.command == "docs":
        sys.stdout.write(config_reference())
    else:
        sys.stdout.write(config_from_args(args).to_yaml())


if __name__ == "__main__":
    main()
