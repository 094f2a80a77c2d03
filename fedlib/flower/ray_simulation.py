"""Flower's Simulation Runtime (Ray) in this process: one virtual node per client, the project's ServerApp and
ClientApp (:mod:`fedlib.flower.apps`), Ray started once and cheaply, a GPU share per node."""

from __future__ import annotations

import logging

from flwr.clientapp import ClientApp

from ..config import ExperimentConfig
from ..simulation import SimulationError
from .apps import make_client_app, make_server_app
from .deploy import RAY_ENV

__all__ = ["run_flower_simulation", "gpu_share", "start_ray"]


def start_ray(init_args: dict) -> None:
    """Start Ray as Flower's Ray backend would (``include_dashboard=False``, the driver's ``sys.path`` as the
    workers' ``PYTHONPATH``), but pass that path through the environment the workers inherit instead of a Ray
    ``runtime_env``: building a runtime_env costs about 5 s before the first actor on a 2-core CPU, for the same
    environment variable. Workers run at nice 0 unless ``RAY_worker_niceness`` is set
    (:data:`fedlib.flower.deploy.RAY_ENV`). Flower then finds Ray initialised and uses it (and shuts it down at the
    end). A Ray already running (e.g. ``ray.init(address=...)`` by the user) is left as it is."""
    import os
    import sys

    import ray

    if ray.is_initialized():
        return
    paths = [*sys.path, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # Flower sets the same, then a runtime_env
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)  # read by the raylet ray.init starts, which starts the workers
    ray.init(include_dashboard=False, **init_args)


def gpu_share(cfg: ExperimentConfig, num_gpus: float | None) -> float:
    """The GPU fraction each virtual node asks Ray for: ``num_gpus`` when given, else 0 without CUDA and
    1 / clients_per_round with it (the round's sampled clients train side by side on one GPU)."""
    import torch

    if num_gpus is None:
        return 1.0 / cfg.fed.clients_per_round if torch.cuda.is_available() else 0.0
    if num_gpus < 0 or (num_gpus > 1 and num_gpus != int(num_gpus)):
        raise ValueError(f"num_gpus={num_gpus}: a fraction in [0, 1] or a whole number of GPUs per node")
    return float(num_gpus)


def run_flower_simulation(
    cfg: ExperimentConfig,
    out_dir=None,
    num_cpus: float = 2.0,
    client_app: ClientApp | None = None,
    num_gpus: float | None = None,
    **kwargs,
):
    """Run ``cfg`` on Flower's Simulation Runtime (Ray) in this process, one virtual node per client;
    returns the :class:`~fedlib.simulation.SimulationResult`. Each node asks Ray for ``num_cpus`` CPUs and
    :func:`gpu_share` (``num_gpus``) of a GPU."""
    from flwr.simulation import run_simulation

    start_ray({"logging_level": logging.WARNING, "log_to_driver": False})  # Flower then skips its own ray.init
    holder: dict = {}
    run_simulation(
        server_app=make_server_app(cfg, out_dir, holder, **kwargs),
        client_app=client_app or make_client_app(),
        num_supernodes=cfg.fed.num_clients,
        backend_config={
            "client_resources": {"num_cpus": num_cpus, "num_gpus": gpu_share(cfg, num_gpus)},
        },
    )
    if "result" not in holder:
        raise SimulationError("the Flower run ended without a result (see the log above)")
    return holder["result"]
