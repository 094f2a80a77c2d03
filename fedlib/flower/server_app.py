"""``flwr run`` entry point for the ServerApp (``[tool.flwr.app.components] serverapp``).

Run config keys (``[tool.flwr.app.config]`` or ``flwr run --run-config``): ``config-file`` (an
ExperimentConfig YAML/JSON; empty: the defaults), ``out-dir``, and the short names ``task``, ``strategy``,
``num-server-rounds``, ``num-clients``, ``clients-per-round``, ``train-limit``, ``eval-limit``, ``eval-every``,
``shared-layers``, ``seed``, ``secure-aggregation`` (true: each round through Flower's SecAgg+,
:mod:`fedlib.flower.secagg`) and ``resume`` (true: go on from ``out-dir``'s checkpoints, ``run.checkpoint_every``, as
after a crashed ServerApp). Flower 1.42 refuses a ``--run-config`` key that the app's pyproject does not declare
("Key ... is not present in the main dictionary"), so any other field goes in the ``config-file``; a
``"section.field"`` key declared in the app's pyproject (e.g. ``"strategy.server_lr" = 0.05``) is applied too.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..cli import apply_overrides, load_config
from ..config import ExperimentConfig
from .apps import FlowerSimulation

app = ServerApp()
SHORT = {
    "task": "fed.task",
    "strategy": "strategy.name",
    "num-server-rounds": "fed.rounds",
    "num-clients": "fed.num_clients",
    "clients-per-round": "fed.clients_per_round",
    "train-limit": "data.train_limit",
    "eval-limit": "data.eval_limit",
    "eval-every": "fed.eval_every",
    "shared-layers": "selection.shared_layers",
    "seed": "fed.seed",
}


def config_from_run_config(run_config: dict) -> ExperimentConfig:
    """An ExperimentConfig from Flower's run config (file, then the short names, then ``section.field`` keys)."""
    cfg = load_config(str(run_config.get("config-file", "") or "") or None)
    overrides = {SHORT[key]: value for key, value in run_config.items() if key in SHORT}
    overrides.update({key: value for key, value in run_config.items() if "." in key})
    return apply_overrides(cfg, overrides)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_run_config(dict(context.run_config))
    out = str(context.run_config.get("out-dir", "") or "") or None
    secure = bool(context.run_config.get("secure-aggregation", False))  # SecAgg+ (FedAvg-family strategies)
    resume = bool(context.run_config.get("resume", False))  # from out-dir's checkpoints
    FlowerSimulation(cfg, grid, out, progress=False, secure_aggregation=secure).run(resume=resume)
