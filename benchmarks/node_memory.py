"""Memory of a Flower node's workspace: a whole Simulation (what nodes built before) against a ClientWorkspace.

Each is built in its own subprocess for one partition of the task (FedPepTAO's roles passed in, as the
ServerApp sends them); the child reports its resident memory (RSS, Linux ``/proc/self/status``) before and
after building, and the seconds it took. Last line::

    node_memory simulation_mb=<RSS after building a Simulation> workspace_mb=<same, ClientWorkspace> ratio=<w / s>

Usage: python benchmarks/node_memory.py [--task sst2] [--train-limit 0] [--num-clients 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    import torch

    from fedlib.config import DataConfig, ExperimentConfig, FedConfig, SelectionConfig
    from fedlib.models import load_backbone

    torch.set_num_threads(1)
    cfg = ExperimentConfig(
        fed=FedConfig(task=args.task, num_clients=args.num_clients, clients_per_round=min(10, args.num_clients)),
        data=DataConfig(train_limit=args.train_limit),
        selection=SelectionConfig(shared_layers=3),
    ).with_strategy("fedpeptao")
    backbone = load_backbone("bundled")  # loaded in both cases: what differs is the rest
    before, t0 = rss_mb(), time.perf_counter()
    selection = {"roles": ["personal", "personal", "shared", "shared", "shared", "personal"]}
    if args.child == "simulation":
        from fedlib.simulation import Simulation

        ws = Simulation(cfg, backbone=backbone, progress=False, selection=selection)
        ws.start()
        examples = len(ws.train) + len(ws.eval)
    else:
        from fedlib.flower.apps import ClientWorkspace

        ws = ClientWorkspace(cfg, selection, k=0, backbone=backbone)
        examples = len(ws.train) + len(ws.eval)
    print(
        json.dumps(
            {"before_mb": before, "after_mb": rss_mb(), "seconds": time.perf_counter() - t0, "examples": examples}
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--train-limit", type=int, default=0, help="first N training examples (0: all)")
    p.add_argument("--num-clients", type=int, default=100)
    p.add_argument("--child", choices=["simulation", "workspace"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    out = {}
    for which in ("simulation", "workspace"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            which,
            "--task",
            args.task,
            "--train-limit",
            str(args.train_limit),
            "--num-clients",
            str(args.num_clients),
        ]
        out[which] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        r = out[which]
        print(
            f"{which}: RSS {r['before_mb']:.0f} MB with the backbone loaded -> {r['after_mb']:.0f} MB after building "
            f"({r['seconds']:.1f} s; {r['examples']} examples encoded)"
        )
    s, w = out["simulation"]["after_mb"], out["workspace"]["after_mb"]
    print(f"node_memory simulation_mb={s:.0f} workspace_mb={w:.0f} ratio={w / s:.3f}")


if __name__ == "__main__":
    main()
