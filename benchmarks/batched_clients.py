"""Batched clients against the sequential loop: the same m clients' local training, side by side in one run.

Work: m clients (bundled model, SST-2, ``--per-client`` examples each, batch ``--batch``, one local epoch,
FedAvg rule, deep prompts on all layers) trained from the same global state, repeated ``--reps`` times,
interleaved (sequential, batched by device, batched in one chunk, ...) so drift hits all alike; medians.

- ``batched (default chunk)``: what ``FedConfig.batch_clients="on"`` does on this device (CPU: length-sorted
  chunks of one minibatch; accelerator: one joint forward of all m x B examples);
- ``batched (one chunk)``: all m x B examples in one forward, whatever the device.

Prints, as its last line, ``batched_clients m=<m> speedup=<x>``: sequential / batched-by-device wall time.
Usage: python benchmarks/batched_clients.py [--clients 10] [--batch 8] [--per-client 32] [--reps 5] [--device cpu]
       [--autocast bf16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--per-client", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--autocast", choices=["off", "bf16"], default="off", help="TrainConfig.autocast of every side")
    args = p.parse_args()
    from fedlib.batched import client_updates_batched, default_chunk, workspaces
    from fedlib.classifier import PromptClassifier
    from fedlib.client import client_update
    from fedlib.config import ModelConfig, TrainConfig
    from fedlib.encode import encode_dataset
    from fedlib.models import load_backbone
    from fedlib.runtime import resolve_device
    from fedlib.strategies import get_strategy
    from fedlib.tasks import get_task, load_task

    device = resolve_device(args.device)
    m, n = args.clients, args.per_client
    backbone = load_backbone("bundled")
    task = get_task("sst2")
    model = PromptClassifier(backbone, task, ModelConfig(prompt_len=8, max_length=128)).to(device)
    data = encode_dataset(load_task("sst2", "train", limit=m * n), backbone.tokenizer, task, model.head_kind, 128)
    shards = [data.subset(range(k * n, (k + 1) * n)) for k in range(m)]
    cfg, strategy = TrainConfig(batch_size=args.batch, autocast=args.autocast), get_strategy("fedavg")
    shared, personal = model.state("shared"), model.state("personal")
    spaces: list = []
    seeds = list(range(100, 100 + m))

    def sequential():
        return [
            client_update(model, k, shared, {}, personal, shards[k], cfg, strategy, {}, seeds[k], device)
            for k in range(m)
        ]

    def batched(chunk):
        return client_updates_batched(
            workspaces(model, m, spaces),
            list(range(m)),
            shared,
            [{}] * m,
            personal,
            shards,
            cfg,
            strategy,
            {},
            seeds,
            device,
            chunk,
        )

    chunk_dev = default_chunk(device, m, args.batch)
    runs = {
        "sequential": sequential,
        f"batched (default chunk {chunk_dev})": lambda: batched(chunk_dev),
        f"batched (one chunk {m * args.batch})": lambda: batched(m * args.batch),
    }
    times = {name: [] for name in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(args.reps):
        for name, fn in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    seq = med["sequential"]
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, {m} clients x {n} examples, batch {args.batch}, "
        f"autocast {args.autocast}, {args.reps} reps"
    )
    for name, t in med.items():
        print(f"  {name:32s} {t:7.3f} s   speedup {seq / t:.3f}")
    default = next(t for name, t in med.items() if name.startswith("batched (default"))
    one = next(t for name, t in med.items() if name.startswith("batched (one"))
    print(f"batched_clients_one_chunk m={m} speedup={seq / one:.3f}")
    print(f"batched_clients m={m} speedup={seq / default:.3f}")


if __name__ == "__main__":
    main()
