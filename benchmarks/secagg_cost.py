"""What Flower's SecAgg+ costs per round: the same FedAvg run with plain and with secure aggregation, side by side.

Both runs go through the Flower ServerApp code (``FlowerSimulation``) on an in-process Grid
(:class:`fedlib.flower.local_grid.LocalGrid`: every message reaches the ClientApp, none crosses a network), so the
difference is the protocol itself: messages, array bytes and seconds per training round (the clients' training and
the key agreement, secret sharing, masking and unmasking; evaluation rounds excluded), and the largest difference
between the two runs' shared tensors after each round: after round 1 it is SecAgg+'s quantisation alone; later
rounds train from slightly different starts, so the difference grows.

Prints, as its last line, ``secagg_cost m=<m> messages_ratio=<x> seconds_ratio=<y> max_abs_diff=<d>``.
Usage: python benchmarks/secagg_cost.py [--num-clients 10] [--clients-per-round 5] [--rounds 3] [--train-limit 400]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FEDLIB_PROGRESS", "0")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-clients", type=int, default=10)
    p.add_argument("--clients-per-round", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-limit", type=int, default=400)
    args = p.parse_args()
    import torch

    from fedlib.config import DataConfig, ExperimentConfig, FedConfig, ModelConfig, RunConfig
    from fedlib.flower.apps import FlowerSimulation, make_client_app
    from fedlib.flower.local_grid import LocalGrid
    from fedlib.models import backbone_for

    cfg = ExperimentConfig(
        model=ModelConfig(prompt_len=4),
        fed=FedConfig(
            num_clients=args.num_clients, clients_per_round=args.clients_per_round, rounds=args.rounds, eval_every=0
        ),
        data=DataConfig(train_limit=args.train_limit, eval_limit=40),
        run=RunConfig(batch_clients="off"),
    ).with_strategy("fedavg")
    backbone = backbone_for(cfg.model)
    out = {}
    for secure in (False, True):
        grid = LocalGrid(make_client_app(), args.num_clients)
        sim = FlowerSimulation(cfg, grid, progress=False, secure_aggregation=secure, backbone=backbone)
        sim.start()
        before, states = grid.counts(), []
        for t in range(args.rounds):  # training rounds only: the server update, no evaluation
            sim.server, _ = sim.round(sim.server, t)
            states.append(sim.server.shared)
        after = grid.counts()
        per = {k: (after[k] - before[k]) / args.rounds for k in after}
        out[secure] = (per, states)
        name = "SecAgg+" if secure else "plain"
        print(
            f"{name:8s} per round: {per['messages']:.0f} messages, {per['bytes_down'] / 1e6:.2f} MB down, "
            f"{per['bytes_up'] / 1e6:.2f} MB up, {per['seconds']:.2f} s"
        )
    (plain, xs), (sec, ys) = out[False], out[True]
    diffs = [max(float((x[k] - y[k]).abs().max()) for k in x) for x, y in zip(xs, ys)]
    assert all(torch.isfinite(v).all() for v in ys[-1].values())
    print(f"largest difference of the shared tensors after each round: {', '.join(f'{d:.3g}' for d in diffs)}")
    print(
        f"secagg_cost m={args.clients_per_round} messages_ratio={sec['messages'] / plain['messages']:.3g} "
        f"seconds_ratio={sec['seconds'] / plain['seconds']:.3g} max_abs_diff={diffs[0]:.3g}"
    )


if __name__ == "__main__":
    main()
