"""``flwr run`` entry point for the ServerApp (``[tool.flwr.app.components] serverapp``).

Run config keys (``[tool.flwr.app.config]`` or ``flwr run --run-config``): ``config-file`` (an
ExperimentConfig YAML/JSON; empty: the defaults), ``out-dir``, and overrides ``task``, ``strategy``,
``num-server-rounds``, ``num-clients``, ``clients-per-round``, ``train-limit``, ``eval-limit``,
``shared-layers``, ``seed``.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..config import ExperimentConfig
from .apps import FlowerSimulation

app = ServerApp()
OVERRIDES = {
    "task": "task",
    "strategy": "strategy",
    "num-server-rounds": "rounds",
    "num-clients": "num_clients",
    "clients-per-round": "clients_per_round",
    "train-limit": "train_limit",
    "eval-limit": "eval_limit",
    "shared-layers": "shared_layers",
    "seed": "seed",
}


def config_from_run_config(run_config: dict) -> ExperimentConfig:
    """An ExperimentConfig from Flower's run config (file, then the flat overrides)."""
    path = str(run_config.get("config-file", "") or "")
    cfg = ExperimentConfig()
    if path:
        cfg = (
            ExperimentConfig.from_yaml(Path(path))
            if path.endswith((".yaml", ".yml"))
            else ExperimentConfig.from_json(Path(path))
        )
    fed = {field: run_config[key] for key, field in OVERRIDES.items() if key in run_config}
    return cfg.replace(fed=cfg.fed.replace(**fed))


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_run_config(dict(context.run_config))
    out = str(context.run_config.get("out-dir", "") or "") or None
    FlowerSimulation(cfg, grid, out, progress=False).run()
