"""Where a run of a protocol spends its time, measured part by part, before the grid is sized (issue: paper shape).

    python benchmarks/paper_shape_cost.py benchmarks/protocols/paper-shape.yaml --task sst2 --rounds 3 \
        --json results/paper_shape_cost-sst2.json

On one torch thread (what each of ``run_grid.py --workers 2``'s processes gets on 2 cores), with the protocol's
configuration cut to ``--rounds`` rounds, it measures, each on its own and side by side in one process:

- a FedAvg round's local training (10 clients, 2 epochs: the batched clients) in fp32 and under bf16 autocast;
- one evaluation of the global model on the whole eval set (fp32 and bf16; at the rounds with personalised views) and,
  with the protocol's ``fed.curve_examples``, on the curve's examples alone (every other round puts one on the curve);
- FedPepTAO's layer selection (run once) and one evaluation of its personalised views (100 clients' own models);
- FedAvg then local fine-tuning of every client (run once, at the end);
- ``centralized``'s round of steps with random minibatches and with minibatches bucketed by length.

Prints a table of seconds and, from it, one run's seconds per row of the protocol and the whole grid's minutes on
``--workers`` processes; the last line is
``paper_shape_cost bf16_speedup=<x> bucket_speedup=<y> curve_speedup=<c> grid_minutes=<z>``.

``--profile`` instead runs one bf16 FedAvg round (local training and the round's evaluation) under torch's profiler
and prints where its CPU time goes, by kind of operator (matrix products, dropout's random masks, dtype casts,
attention, element-wise and the rest); the last line is ``paper_shape_profile matmul=<share> dropout=<share> ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _seconds(fn, *args, reps: int = 1, **kwargs) -> float:
    """Seconds of ``fn(*args, **kwargs)``: the fastest of ``reps`` calls."""

    def once() -> float:
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        return time.perf_counter() - t0

    return min(once() for _ in range(reps))


def measure(base, rounds: int, reps: int = 2) -> dict:
    """The seconds of each part (module docstring) for ``base`` (an ExperimentConfig) cut to ``rounds`` rounds; the
    evaluations and ``centralized``'s rounds are timed ``reps`` times and the fastest kept."""
    from fedlib.models import backbone_for
    from fedlib.references import centralized_steps_per_round
    from fedlib.simulation import Simulation
    from fedlib.train import local_train, make_optimizer

    base = base.replace(fed=base.fed.replace(rounds=rounds, personal_eval_every=rounds, finetune_epochs=0))
    backbone = backbone_for(base.model)
    out: dict[str, float] = {}
    for precision in ("off", "bf16"):
        cfg = base.replace(train=base.train.replace(autocast=precision))
        sim = Simulation(cfg, backbone=backbone, progress=False)
        h = sim.run().history
        out[f"round_{precision}"] = float(h["seconds_client"].median())
        out[f"eval_{precision}"] = _seconds(sim.evaluate, personal=True, reps=reps)  # the whole set
    if base.fed.curve_examples:  # the rounds without personalised views evaluate the curve's examples only
        out["eval_curve"] = _seconds(sim.evaluate, personal=False, reps=reps)
    bf16 = base.replace(train=base.train.replace(autocast="bf16"))
    sim = Simulation(bf16.with_strategy("fedpeptao"), backbone=backbone, progress=False)
    out["selection"] = _seconds(sim.start)
    out["personal_eval_fedpeptao"] = _seconds(sim.evaluate, personal=True) - out["eval_bf16"]
    tuned = bf16.replace(fed=bf16.fed.replace(finetune_epochs=bf16.train.epochs))
    sim = Simulation(tuned, backbone=backbone, progress=False)
    out["finetune"] = float(sim.run().history["seconds_finetune"].iloc[-1])
    model, data = sim.model, sim.train
    steps = centralized_steps_per_round(bf16, len(data))
    for what, bucket in (("random", 0), ("bucketed", bf16.fed.clients_per_round)):
        opt, gen = make_optimizer(model, bf16.train), torch.Generator().manual_seed(0)
        args = (model, opt, data, bf16.train, sim.device, gen, 10, steps)
        out[f"centralized_round_{what}"] = _seconds(local_train, *args, bucket=bucket, reps=reps)
    return out


# Operator families of a round's profile (--profile, on a CPU): torch operator names -> the kind of work they are.
KINDS = {
    "matmul": ("aten::addmm", "aten::mm", "aten::bmm"),
    "dropout": ("aten::bernoulli_",),
    "cast": ("aten::copy_", "aten::_to_copy"),
    "attention": (
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_softmax",
        "aten::_softmax_backward_data",
    ),
    "elementwise": (
        "aten::gelu",
        "aten::gelu_backward",
        "aten::mul",
        "aten::add",
        "aten::add_",
        "aten::div_",
        "aten::native_layer_norm",
        "aten::native_layer_norm_backward",
        "aten::cat",
        "aten::where",
    ),
}


def profile_round(base) -> dict:
    """Shares of one bf16 FedAvg round's self CPU time (local training + the round's evaluation) per :data:`KINDS`,
    after one round of warm-up; ``other`` is the rest (Python, optimizer steps, small ops)."""
    from torch.profiler import ProfilerActivity, profile

    from fedlib.models import backbone_for
    from fedlib.simulation import Simulation

    cfg = base.replace(train=base.train.replace(autocast="bf16"))
    cfg = cfg.replace(fed=cfg.fed.replace(rounds=1, personal_eval_every=1, finetune_epochs=0))
    backbone = backbone_for(cfg.model)  # loaded once, as measure() does
    Simulation(cfg, backbone=backbone, progress=False).run()  # warm-up: first-call allocations and kernels
    sim = Simulation(cfg, backbone=backbone, progress=False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sim.run()
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(self_us.values())
    shares = {kind: sum(self_us.get(op, 0.0) for op in ops) / total for kind, ops in KINDS.items()}
    shares["other"] = 1.0 - sum(shares.values())
    shares["seconds"] = total / 1e6
    return shares


def projection(parts: dict, proto: dict, rounds: int, workers: int) -> dict:
    """One run's seconds per row of the protocol at its round budget, and the grid's minutes on ``workers``."""
    from fedlib.strategies import STRATEGIES

    r = rounds
    personal = r // max(proto["experiment"]["fed"].get("personal_eval_every") or r, 1)
    evals = personal * parts["eval_bf16"] + (r - personal) * parts.get("eval_curve", parts["eval_bf16"])
    fed_run = r * parts["round_bf16"] + evals
    rows = {}
    for name in proto["strategies"]:
        if name == "majority_local":
            rows[name] = 0.0
        elif name == "centralized":
            rows[name] = r * parts["centralized_round_bucketed"] + evals
        elif name in (proto.get("finetuned") or {}):
            rows[name] = parts["finetune"]
        elif STRATEGIES[name].head_role == "personal":  # local_only: no global model, its personalised views only
            rows[name] = r * parts["round_bf16"] + personal * parts["personal_eval_fedpeptao"]
        elif STRATEGIES[name].layers == "selected":  # a layer selection, and personal layers to evaluate
            rows[name] = fed_run + parts["selection"] + personal * parts["personal_eval_fedpeptao"]
        else:
            rows[name] = fed_run
    seeds = len(proto["seeds"])
    return {"run_seconds": rows, "grid_minutes_per_task": sum(rows.values()) * seeds / workers / 60}


def main() -> None:
    from fedlib.config import ExperimentConfig
    from fedlib.configbase import yaml_load
    from fedlib.report import markdown_table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("protocol")
    p.add_argument("--task", default=None, help="default: the protocol's first task")
    p.add_argument("--rounds", type=int, default=3, help="rounds measured (the medians are per round)")
    p.add_argument("--workers", type=int, default=2, help="the grid's processes, for the projection")
    p.add_argument("--json", help="write the measurements and the projection here")
    p.add_argument("--train-limit", type=int, help="override data.train_limit (smoke tests)")
    p.add_argument("--num-clients", type=int, help="override fed.num_clients (smoke tests)")
    p.add_argument(
        "--eval-limit", type=int, help="override data.eval_limit and cut fed.curve_examples to it (smoke tests)"
    )
    p.add_argument("--reps", type=int, default=2, help="timings of each evaluation and centralized round (the fastest)")
    p.add_argument("--profile", action="store_true", help="profile one bf16 FedAvg round by kind of operator instead")
    args = p.parse_args()
    torch.set_num_threads(1)
    proto = yaml_load(Path(args.protocol).read_text())
    base = ExperimentConfig.from_dict(proto["experiment"])
    task = args.task or proto["tasks"][0]
    base = base.replace(fed=base.fed.replace(task=task))
    if args.train_limit:
        base = base.replace(data=base.data.replace(train_limit=args.train_limit))
    if args.eval_limit:
        curve = min(base.fed.curve_examples, args.eval_limit // 2)
        base = base.replace(
            data=base.data.replace(eval_limit=args.eval_limit), fed=base.fed.replace(curve_examples=curve)
        )
    if args.num_clients:
        n = args.num_clients
        base = base.replace(fed=base.fed.replace(num_clients=n, clients_per_round=min(n, base.fed.clients_per_round)))
    if args.profile:
        shares = profile_round(base)
        print(f"{task}: one bf16 FedAvg round, {shares.pop('seconds'):.2f} s of CPU time by kind of operator")
        print("paper_shape_profile " + " ".join(f"{k}={v:.3f}" for k, v in shares.items()))
        return
    parts = measure(base, args.rounds, args.reps)
    proj = projection(parts, proto, base.fed.rounds, args.workers)
    import pandas as pd

    print(markdown_table(pd.DataFrame([{"part": k, "seconds": v} for k, v in parts.items()]), ".2f"))
    print(markdown_table(pd.DataFrame([{"row": k, "seconds per run": v} for k, v in proj["run_seconds"].items()])))
    bf16 = parts["round_off"] / parts["round_bf16"]
    bucket = parts["centralized_round_random"] / parts["centralized_round_bucketed"]
    if args.json:
        Path(args.json).write_text(
            json.dumps({"task": task, "rounds_measured": args.rounds, "parts": parts, **proj}, indent=2) + "\n"
        )
    minutes = proj["grid_minutes_per_task"]
    print(
        f"{task}: {minutes:.1f} min of the grid's wall clock on {args.workers} workers ({len(proto['seeds'])} seeds)"
        if math.isfinite(minutes)
        else ""
    )
    curve = parts["eval_bf16"] / parts.get("eval_curve", parts["eval_bf16"])
    print(
        f"paper_shape_cost bf16_speedup={bf16:.2f} bucket_speedup={bucket:.2f} curve_speedup={curve:.2f} "
        f"grid_minutes={minutes:.1f}"
    )


if __name__ == "__main__":
    main()
