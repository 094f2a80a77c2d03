"""The same run in-process and on Flower's Simulation Runtime, side by side.

Prints, as its last line, ``flower_parity max_abs_diff=<x> time_ratio=<y>``: the largest difference
between the two runs' final global shared tensors, and Flower's wall time over the in-process one for the
same run (goal <= 1.3 at 10 rounds), after lines splitting both times into set-up (outside the rounds),
selection, round 1 and later rounds. Flower's time includes starting Ray and building each node's workspace. The
in-process side runs its clients one by one (``batch_clients="off"``), as the Flower nodes do, so that the
same dropout masks are drawn and the tensors agree to float rounding.
Usage: python benchmarks/flower_parity.py [--rounds 10] [--num-clients 4] [--strategy fedpeptao]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FEDLIB_PROGRESS", "0")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--num-clients", type=int, default=4)
    p.add_argument("--clients-per-round", type=int, default=2)
    p.add_argument("--strategy", default="fedpeptao")
    p.add_argument("--train-limit", type=int, default=400)
    p.add_argument("--eval-limit", type=int, default=200)
    args = p.parse_args()
    from fedlib.config import (
        DataConfig,
        ExperimentConfig,
        FedConfig,
        ModelConfig,
        RunConfig,
        SelectionConfig,
        TrainConfig,
    )
    from fedlib.flower.ray_simulation import run_flower_simulation
    from fedlib.simulation import run_simulation

    cfg = ExperimentConfig(
        model=ModelConfig(prompt_len=4),
        train=TrainConfig(batch_size=8),
        fed=FedConfig(
            task="sst2",
            num_clients=args.num_clients,
            clients_per_round=args.clients_per_round,
            rounds=args.rounds,
            seed=1,
        ),
        data=DataConfig(train_limit=args.train_limit, eval_limit=args.eval_limit),
        selection=SelectionConfig(shared_layers=3),
        run=RunConfig(batch_clients="off"),
    ).with_strategy(args.strategy)  # a node trains one client
    t0 = time.perf_counter()
    local = run_simulation(cfg, progress=False)
    t_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        flower = run_flower_simulation(cfg, tmp, num_cpus=max(1, torch.get_num_threads()))
    t_flower = time.perf_counter() - t0
    diff = max(float((local.server.shared[k] - flower.server.shared[k]).abs().max()) for k in local.server.shared)
    print(
        f"{args.strategy}, {args.num_clients} clients, {args.clients_per_round}/round, {args.rounds} rounds: "
        f"in-process {t_local:.1f} s, Flower {t_flower:.1f} s; "
        f"final metric {local.history['personal_metric'].iloc[-1]:.4f} "
        f"vs {flower.history['personal_metric'].iloc[-1]:.4f}"
    )

    def in_rounds(h):
        return float((h["seconds_client"] + h["seconds_aggregate"] + h["seconds_eval"]).sum())

    r_local, r_flower = in_rounds(local.history), in_rounds(flower.history)
    print(
        f"inside rounds: in-process {r_local:.1f} s, Flower {r_flower:.1f} s (round_ratio={r_flower / r_local:.3f}); "
        f"outside rounds (set-up; Flower: + Ray and node start): in-process {t_local - r_local:.1f} s, "
        f"Flower {t_flower - r_flower:.1f} s"
    )
    phases = {"selection": lambda r: r < 1, "round 1": lambda r: r == 1, "later rounds": lambda r: r > 1}

    def part(h, pick):
        return in_rounds(h[pick(h["round"])])

    split = "; ".join(
        f"{name} {part(local.history, pick):.1f} vs {part(flower.history, pick):.1f} s" for name, pick in phases.items()
    )
    print(f"inside rounds, in-process vs Flower: {split}")
    print(f"flower_parity max_abs_diff={diff:.3g} time_ratio={t_flower / t_local:.3f}")


if __name__ == "__main__":
    main()
