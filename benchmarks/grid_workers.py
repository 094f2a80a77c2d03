"""Does a grid finish sooner as two one-thread workers than as one two-thread process, on this machine's cores?

The same runs (a protocol's experiment on one task, one strategy, seeds 0..n-1, ``--rounds`` rounds) are done twice,
one way after the other: (a) one process with ``cores`` torch threads running them one after the other (what
``run_grid.py`` does); (b) ``cores`` processes of one thread each, the seeds dealt out between them. Each process
loads the model itself (counted: a real worker would). Prints both walls, their ratio, the per-run seconds of each
mode, and whether the metrics agree (a thread count changes float reduction order, so they may differ in the
last digits).

    python benchmarks/grid_workers.py benchmarks/protocols/cpu-medium.yaml --task sst2 --seeds 4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fedlib.workers import usable_cores

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    """Run the given seeds in this process with ``--threads`` threads; print one JSON line per run."""
    import tempfile

    import torch
    import yaml

    from fedlib.benchmark import backbone_for, grid_configs
    from fedlib.config import ExperimentConfig
    from fedlib.simulation import run_simulation

    torch.set_num_threads(args.threads)
    proto = yaml.safe_load(Path(args.protocol).read_text())
    base = ExperimentConfig.from_dict(proto["experiment"])
    base = base.replace(fed=base.fed.replace(rounds=args.rounds, eval_every=args.rounds))
    if args.train_limit or args.eval_limit:
        limits = {
            "train_limit": args.train_limit or base.data.train_limit,
            "eval_limit": args.eval_limit or base.data.eval_limit,
        }
        base = base.replace(data=base.data.replace(**limits))
    cfg = grid_configs(base, [args.task], [args.strategy], proto.get("params"), {})[args.task, args.strategy]
    backbone = backbone_for(base.model)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.worker.split(",")):
            t0 = time.perf_counter()
            res = run_simulation(cfg.replace(fed=cfg.fed.replace(seed=seed)), Path(tmp) / str(seed), backbone=backbone)
            last = res.history.iloc[-1]
            out = {"seed": seed, "seconds": time.perf_counter() - t0, "global": float(last["global_metric"])}
            print(json.dumps(out), flush=True)


def launch(args, seeds: list[int], threads: int) -> subprocess.Popen:
    cmd = [sys.executable, __file__, args.protocol, "--task", args.task, "--strategy", args.strategy]
    cmd += ["--rounds", str(args.rounds), "--threads", str(threads), "--worker", ",".join(map(str, seeds))]
    cmd += ["--train-limit", str(args.train_limit), "--eval-limit", str(args.eval_limit)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "FEDLIB_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def mode(args, groups: list[list[int]], threads: int) -> tuple[float, dict[int, dict]]:
    """Wall seconds of running ``groups`` (one process each, all at once) and each run's record by seed."""
    t0 = time.perf_counter()
    procs = [launch(args, g, threads) for g in groups]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker failed (exit codes {[p.returncode for p in procs]})")
    runs = [json.loads(line) for out in outs for line in out.splitlines() if line.startswith("{")]
    return wall, {r["seed"]: r for r in runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("protocol")
    p.add_argument("--task", default="sst2")
    p.add_argument("--strategy", default="fedavg")
    p.add_argument("--seeds", type=int, default=4, help="runs in each mode (seeds 0..n-1)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cores", type=int, default=usable_cores())
    p.add_argument("--train-limit", type=int, default=0, help="override the protocol's data.train_limit (0: keep)")
    p.add_argument("--eval-limit", type=int, default=0, help="override the protocol's data.eval_limit (0: keep)")
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        return worker(args)
    if args.seeds < 1 or args.cores < 1:
        raise SystemExit(f"--seeds {args.seeds}, --cores {args.cores}: both must be >= 1")
    seeds = list(range(args.seeds))
    one_wall, one = mode(args, [seeds], args.cores)
    groups = [seeds[i :: args.cores] for i in range(args.cores)]
    many_wall, many = mode(args, [g for g in groups if g], 1)  # fewer seeds than cores: fewer workers
    secs = {name: [round(runs[s]["seconds"], 1) for s in seeds] for name, runs in (("one", one), ("many", many))}
    diffs = [abs(one[s]["global"] - many[s]["global"]) for s in seeds]
    print(f"{args.task}/{args.strategy}, {args.seeds} runs of {args.rounds} rounds, {args.cores} cores")
    print(f"one process, {args.cores} threads: {one_wall:7.1f} s wall; seconds per run {secs['one']}")
    print(f"{args.cores} processes, 1 thread each: {many_wall:7.1f} s wall; seconds per run {secs['many']}")
    print(f"global metric: largest difference between modes {max(diffs):.4f}; {sum(d == 0 for d in diffs)} equal")
    print(
        f"grid_workers cores={args.cores} throughput_ratio={one_wall / many_wall:.3f} max_metric_diff={max(diffs):.4f}"
    )


if __name__ == "__main__":
    main()
