"""The default experiment (``make experiment``): FedPepTAO vs FedAvg with deep prompts on all layers.

Offline, on the bundled model and SST-2, a few minutes on 2 CPU cores: every strategy runs with the
same partition, seed and round budget; a table (metric, bytes and seconds per round) is printed and
``results.csv``, one ``<strategy>/results.jsonl`` per run and ``accuracy_per_round.png`` are written to
``--out``. ``--config file.yaml`` starts from an :class:`~fedlib.config.ExperimentConfig` file; the flags
override it. ``python -m fedlib.experiment --help`` lists them.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd
import torch

from .cli import add_config_arguments, config_from_args
from .config import DataConfig, ExperimentConfig, FedConfig, ModelConfig, TrainConfig
from .models import backbone_for
from .report import markdown_table, plot_curves, shared_layer_count, summarize
from .simulation import run_simulation
from .strategies import STRATEGIES

log = logging.getLogger("fedlib.experiment")

DEFAULT = ExperimentConfig(
    model=ModelConfig(prompt_len=8),
    train=TrainConfig(batch_size=16),
    fed=FedConfig(task="sst2", num_clients=20, clients_per_round=5, rounds=12, eval_every=2),
    data=DataConfig(train_limit=2000),
)


def parse_args(argv=None, prog: str = "python -m fedlib.experiment") -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--config", help="ExperimentConfig as YAML or JSON (defaults: a small SST-2 run)")
    p.add_argument(
        "--strategies", default="fedavg,fedpeptao", help=f"comma-separated, or 'all': {', '.join(STRATEGIES)}"
    )
    p.add_argument("--out", default="runs/experiment")
    add_config_arguments(p)
    return p.parse_args(argv)


def build_config(args) -> ExperimentConfig:
    return config_from_args(args, DEFAULT)


def main(argv=None, prog: str = "python -m fedlib.experiment") -> pd.DataFrame:
    args = parse_args(argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = build_config(args)
    names = list(STRATEGIES) if args.strategies == "all" else [s.strip() for s in args.strategies.split(",")]
    configs = {name: cfg if name == cfg.strategy.name else cfg.with_strategy(name) for name in names}  # validated
    out = Path(args.out)
    backbone = backbone_for(cfg.model)
    rows, histories = [], {}
    for name in names:
        t0 = time.perf_counter()
        res = run_simulation(configs[name], out / name, backbone=backbone)
        histories[name] = res.history
        row = {
            "strategy": name,
            **summarize(res.history),
            "wall_seconds": time.perf_counter() - t0,
            "shared_layers": shared_layer_count(res),
        }
        rows.append(row)
        log.info(
            "%s: final %s global %.4f, personal %.4f, personal (IID shards) %.4f; %.0f bytes/round, %.1f s/round",
            name,
            cfg.fed.task,
            row["final_global_metric"],
            row["final_personal_metric"],
            row["final_personal_iid_metric"],
            row["bytes_per_round"],
            row["seconds_per_round"],
        )
    table = pd.DataFrame(rows)
    table.to_csv(out / "results.csv", index=False)
    ax = plot_curves(
        histories,
        title=f"{cfg.fed.task}: {', '.join(names)} ({cfg.fed.num_clients} clients, {cfg.fed.clients_per_round}/round)",
        ylabel="personalised accuracy",
    )
    ax.figure.tight_layout()
    ax.figure.savefig(out / "accuracy_per_round.png", dpi=120)
    cols = [
        "strategy",
        "final_global_metric",
        "final_personal_metric",
        "final_personal_iid_metric",
        "shared_layers",
        "bytes_per_round",
        "selection_bytes",
        "seconds_per_round",
        "selection_seconds",
        "wall_seconds",
    ]
    print(markdown_table(table[cols]))
    print(f"\nresults: {out}/results.csv, plot: {out}/accuracy_per_round.png")
    return table


if __name__ == "__main__":
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    main()
