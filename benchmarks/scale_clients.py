"""Cost against the number of clients N: peak memory and seconds per round, m clients sampled per round.

Part 1, the simulator: for each N (default 10, 100, 1,000, 10,000), one fresh process runs FedPepTAO (3 shared and 3
personal layers fixed, so no selection phase) on SST-2's 67,349 training examples partitioned over N clients
(reference partition, alpha 1), m = 10 clients per round, ``--steps`` local steps each (so a round's compute is the
same whatever N), ``--rounds`` rounds, client state beyond ``--memory-mb`` spilled to disk
(``run.client_memory_mb``). Per N: partition seconds, peak RSS, peak RSS growth over the rounds, median seconds per
round (client compute and aggregation; the first round left out), client state in memory / on disk, the server's
control variates (FedPepTAO keeps one per client seen, on the server).

Part 2, ``--paper-store``: the same :class:`fedlib.client_store.ClientStore` filled with RoBERTa-large-shaped state
(``--paper-layers`` 24 layers, P = 20, hidden 1,024: every layer's prompt, its AdamW moments and a client control
variate), synthesised without the model, for ``--paper-clients`` clients; then rounds of m clients each loading,
changing and storing their state: disk used, load and store seconds per round, peak RSS.

Prints, as its last line, ``scale_clients n=<largest N> rss_ratio=<peak RSS at largest N / at N=10>
round_time_ratio=<seconds per round, same ratio>``; ``--json`` writes every figure, ``--plot`` draws them.
Usage: python benchmarks/scale_clients.py [--clients 10 100 1000 10000] [--rounds 20] [--paper-store]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(args) -> dict:
    """One N, in this (fresh) process."""
    from fedlib.config import ExperimentConfig
    from fedlib.server import tensor_bytes
    from fedlib.simulation import Simulation

    cfg = ExperimentConfig().with_overrides(
        {
            "model": {"prompt_len": 8, "max_length": args.max_length},
            "train": {"batch_size": 8, "max_steps": args.steps},
            "fed": {
                "task": "sst2",
                "num_clients": args.worker,
                "clients_per_round": args.m,
                "rounds": args.rounds,
                "eval_every": 0,
                "personal_eval": False,
            },
            "data": {"train_limit": args.train_limit, "eval_limit": 200},
            "strategy": {"name": "fedpeptao"},
            "run": {"client_memory_mb": args.memory_mb, "device": args.device},
        }
    )
    with tempfile.TemporaryDirectory(prefix="scale-clients-") as out:
        t = time.perf_counter()
        sim = Simulation(cfg, out, progress=False, selection={"roles": ["shared"] * 3 + ["personal"] * 3})
        build = time.perf_counter() - t
        rss_built = peak_rss_mb()
        result = sim.run()
        rows = [r for r in sim.history if r.get("phase") != "selection"]
        per_round = [r["seconds_client"] + r["seconds_aggregate"] for r in rows[1:]]
        controls = sum(tensor_bytes(g) for key, g in result.server.controls.items() if key != "c")
        return {
            "n": args.worker,
            "examples": len(sim.train.labels),
            "smallest_client": int(min(len(s) for s in sim.partition.train)),
            "build_s": build,
            "round_s": statistics.median(per_round),
            "local_steps_per_round": statistics.median(r["local_steps"] for r in rows),
            "peak_rss_mb": peak_rss_mb(),
            "rss_growth_mb": peak_rss_mb() - rss_built,
            "clients_with_state": len(sim.store.clients()),
            "state_memory_mb": sim.store.peak_bytes / 2**20,
            "state_disk_mb": sim.store.disk_bytes() / 2**20,
            "controls_mb": controls / 2**20,
            "global_accuracy": float(sim.history[-1].get("global_accuracy", float("nan"))),
        }


def paper_store(args) -> dict:
    """RoBERTa-large-shaped client states in the store: disk, load/store seconds per round, peak RSS."""
    import numpy as np
    import torch

    from fedlib.client_store import ClientStore, state_bytes
    from fedlib.rounds import sample_clients

    L, P, H = args.paper_layers, 20, 1024

    def state(seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        out = {}
        for layer in range(L):
            out[f"personal/prompt.{layer}"] = torch.randn(P, H, generator=g)
            out[f"opt/prompt.{layer}/exp_avg"] = torch.randn(P, H, generator=g)
            out[f"opt/prompt.{layer}/exp_avg_sq"] = torch.rand(P, H, generator=g)
            out[f"control/prompt.{layer}"] = torch.randn(P, H, generator=g)
        return out

    with tempfile.TemporaryDirectory(prefix="paper-store-", dir=args.paper_dir) as folder:
        store = ClientStore("memory", folder, memory_mb=args.memory_mb)
        t = time.perf_counter()
        for k in range(args.paper_clients):
            store.put(k, state(k))
        fill = time.perf_counter() - t
        per_client = state_bytes(store.get(0))
        loads, stores = [], []
        for r in range(args.paper_rounds):
            before = dict(store.stats)
            for k in sample_clients(0, r, args.paper_clients, args.m):
                s = store.get(k)
                store.put(k, {name: v + 1e-3 for name, v in s.items()})  # a local update
            loads.append(store.stats["seconds_load"] - before["seconds_load"])
            stores.append(store.stats["seconds_store"] - before["seconds_store"])
        return {
            "clients": args.paper_clients,
            "mb_per_client": per_client / 2**20,
            "disk_gb": store.disk_bytes() / 2**30,
            "memory_budget_mb": args.memory_mb,
            "state_memory_peak_mb": store.peak_bytes / 2**20,
            "fill_s": fill,
            "load_s_per_round": float(np.median(loads)),
            "store_s_per_round": float(np.median(stores)),
            "peak_rss_mb": peak_rss_mb(),
        }


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].plot(n, [r["peak_rss_mb"] for r in rows], "o-", label="peak RSS")
    axes[0].plot(n, [r["rss_growth_mb"] for r in rows], "s--", label="growth over the rounds")
    axes[0].set(xscale="log", ylabel="MB", xlabel="clients N", title="memory")
    axes[0].legend()
    axes[1].plot(n, [r["round_s"] for r in rows], "o-")
    for r in rows:  # fewer examples per client than steps x batch at large N: fewer steps, shorter rounds
        axes[1].annotate(f"{r['local_steps_per_round']:.0f} steps", (r["n"], r["round_s"]), fontsize=8)
    axes[1].set(xscale="log", ylabel="seconds per round (median)", xlabel="clients N", title="time, m = 10 per round")
    axes[1].set_ylim(bottom=0)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000, 10000])
    p.add_argument("--m", type=int, default=10, help="clients sampled per round")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--steps", type=int, default=2, help="local steps per client per round")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--train-limit", type=int, default=0, help="0: all 67,349 SST-2 training examples")
    p.add_argument("--memory-mb", type=float, default=8.0, help="client state kept in memory (run.client_memory_mb)")
    p.add_argument("--device", default="auto")
    p.add_argument("--paper-store", action="store_true", help="also measure RoBERTa-large-shaped client states")
    p.add_argument("--paper-clients", type=int, default=1000)
    p.add_argument("--paper-layers", type=int, default=24)
    p.add_argument("--paper-rounds", type=int, default=10)
    p.add_argument("--paper-dir", default=None, help="where the paper-sized store writes (default: the temp dir)")
    p.add_argument("--json", default=None, help="write every figure here")
    p.add_argument("--plot", default=None, help="draw memory and seconds per round against N here")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    rows = []
    for n in args.clients:
        cmd = [sys.executable, __file__, "--worker", str(n)]
        for flag in ("m", "rounds", "steps", "max_length", "train_limit", "memory_mb", "device"):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"N={n} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"N={n:>6}: build {r['build_s']:.1f} s, {r['round_s']:.2f} s/round ({r['local_steps_per_round']:.0f} local "
            f"steps), peak RSS {r['peak_rss_mb']:.0f} MB "
            f"(+{r['rss_growth_mb']:.0f} over the rounds), {r['clients_with_state']} clients with state: "
            f"{r['state_memory_mb']:.1f} MB in memory at most, {r['state_disk_mb']:.1f} MB on disk; server control "
            f"variates {r['controls_mb']:.1f} MB; smallest client {r['smallest_client']} examples",
            flush=True,
        )
    out = {"clients": rows, "args": {k: v for k, v in vars(args).items() if k != "worker"}}
    if args.paper_store:
        out["paper_store"] = ps = paper_store(args)
        print(
            f"paper-sized store: {ps['clients']} clients x {ps['mb_per_client']:.1f} MB = {ps['disk_gb']:.2f} GB on "
            f"disk (filled in {ps['fill_s']:.0f} s); per round of {args.m}: load {ps['load_s_per_round']:.2f} s, "
            f"store {ps['store_s_per_round']:.2f} s; state in memory {ps['state_memory_peak_mb']:.0f} MB at most "
            f"(budget {ps['memory_budget_mb']:.0f}); peak RSS {ps['peak_rss_mb']:.0f} MB"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    if args.plot:
        plot(rows, args.plot)
    lo, hi = rows[0], rows[-1]
    print(
        f"scale_clients n={hi['n']} rss_ratio={hi['peak_rss_mb'] / lo['peak_rss_mb']:.3f} "
        f"round_time_ratio={hi['round_s'] / lo['round_s']:.3f}"
    )


if __name__ == "__main__":
    main()
