"""The ``fedlib`` command (installed with the package): run, compare, grid, partition, config.

    fedlib run --task rte --strategy.name fedpeptao --rounds 20 --out runs/rte   # one run, every config field a flag
    fedlib experiment --strategies all                                          # the default experiment's table
    fedlib grid benchmarks/protocols/cpu-medium.yaml --out runs/cpu-medium      # a protocol (tasks x rows x seeds)
    fedlib partition --task sst2 --num-clients 20 --plot runs/partition.png     # look at a non-IID partition
    fedlib config show --config my.yaml --fed.rounds 5                          # the resolved config as YAML
    fedlib config docs                                                          # docs/config.md

Every subcommand's ``--help`` is generated from the typed configs (:mod:`fedlib.cli`). Nothing here holds logic
of its own: each subcommand parses and calls the library.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

__all__ = ["main"]

COMMANDS = {
    "run": "one federated run from a config (file and/or flags); writes results.jsonl, checkpoints",
    "experiment": "the default experiment: several strategies on one config, a table and a plot",
    "grid": "a benchmark protocol: tasks x strategies x seeds, resumable; tables with CIs",
    "partition": "build a config's non-IID partition: per-client sizes and labels, optionally a plot",
    "config": "print the resolved config (show) or the reference of every field (docs)",
}


def _run(argv: list[str]) -> None:
    from .cli import add_config_arguments, config_from_args
    from .references import majority_local
    from .report import floor_views, summarize
    from .simulation import run_simulation

    p = argparse.ArgumentParser(prog="fedlib run", description=COMMANDS["run"])
    p.add_argument("--config", help="an ExperimentConfig YAML or JSON file (default: the defaults)")
    p.add_argument("--out", default="runs/run", help="output folder (results.jsonl, config.json, checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from the folder's last checkpoint")
    add_config_arguments(p)
    args = p.parse_args(argv)
    cfg = config_from_args(args)
    res = run_simulation(cfg, args.out, resume=args.resume)
    s = summarize(res.history)
    keys = ["final_global_metric", "final_personal_metric", "final_personal_iid_metric", "bytes_per_round"]
    keys += ["epsilon"] if cfg.privacy.on else []  # client-level DP: epsilon at privacy.delta after the last round
    floor = floor_views(majority_local(cfg))  # no model: each client's majority label, the same partition
    print(json.dumps({**{k: s.get(k) for k in keys}, "majority_local_floor": floor}, indent=2))
    print(f"results: {Path(args.out) / 'results.jsonl'}")


def _partition(argv: list[str]) -> None:
    from .cli import add_config_arguments, config_from_args
    from .partition import partition_stats
    from .partition_plots import plot_label_distributions
    from .simulation import load_rows, partition_for

    p = argparse.ArgumentParser(prog="fedlib partition", description=COMMANDS["partition"])
    p.add_argument("--config", help="an ExperimentConfig YAML or JSON file")
    p.add_argument("--plot", help="save the per-client label distribution (flwr-datasets' plot) to this file")
    p.add_argument("--save", help="save the partition as JSON (lists of indices) to this file")
    add_config_arguments(p)
    args = p.parse_args(argv)
    cfg = config_from_args(args)
    train = load_rows(cfg, "train")
    part = partition_for(cfg, train["label"], load_rows(cfg, "eval")["label"])
    stats = partition_stats(part, train["label"], train.features["label"].names)
    print(stats.to_string())
    if args.save:
        part.save(args.save)
        print(f"partition: {args.save}")
    if args.plot:
        fig = plot_label_distributions(part, train)
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=100, bbox_inches="tight")
        print(f"plot: {args.plot}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
        print("usage: fedlib COMMAND [options]   (fedlib COMMAND --help)\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nfedlib: unknown command {argv[0]!r}", file=sys.stderr)
            raise SystemExit(2)
        return
    command, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if command == "run":
        _run(rest)
    elif command == "experiment":
        from .experiment import main as experiment

        experiment(rest, prog="fedlib experiment")
    elif command == "grid":
        from .protocol import main as grid

        grid(rest, prog="fedlib grid")
    elif command == "partition":
        _partition(rest)
    else:
        from .cli import main as config

        config(rest, prog="fedlib config")


if __name__ == "__main__":
    main()
