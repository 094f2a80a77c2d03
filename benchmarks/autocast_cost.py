"""Should this machine run a protocol under ``train.autocast: bf16``? Measured side by side in one run.

    python benchmarks/autocast_cost.py benchmarks/protocols/paper-shape.yaml

On the protocol's model, task and batch size, one torch thread by default (what each of ``run_grid.py --workers 2``'s
processes gets on 2 cores): one local training step (forward, backward, clipping, AdamW) on a batch of the task's
training examples, and one evaluation of the global model on the first ``--examples`` eval examples
(``Simulation.evaluate``, the curve's rounds), each in fp32 and under bf16 autocast, repetitions interleaved
(fp32, bf16, fp32, ...) so drift hits both alike; medians. bf16 pays only where the hardware computes it (CUDA with
bf16, a CPU with ``avx512_bf16`` or ``amx_bf16``); elsewhere torch emulates it (:func:`fedlib.runtime.cpu_bf16`).

The last line is ``autocast_cost bf16=<hardware|emulated|unknown|cuda> step_ratio=<x> eval_ratio=<y>`` (on a CPU,
whether it computes bf16 in hardware; else the device's kind): bf16's seconds over fp32's (below 1: bf16 is faster
here).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def measure(base, examples: int, reps: int) -> dict[str, float]:
    """Median seconds of a training step and of an evaluation of ``examples`` examples, fp32 and bf16."""
    from step_cost import fedlib_step, task_batch

    from fedlib.models import backbone_for
    from fedlib.runtime import resolve_device
    from fedlib.simulation import Simulation

    backbone, dev = backbone_for(base.model), resolve_device(base.run.device)
    batch = (base.train.batch_size, dev, base.fed.task, base.data.data_dir, base.model.max_length)
    enc, labels = task_batch(backbone.tokenizer, *batch)
    sims, steps = {}, {}
    for precision in ("off", "bf16"):
        cfg = base.replace(
            train=base.train.replace(autocast=precision),
            fed=base.fed.replace(curve_examples=examples),
            data=base.data.replace(eval_limit=max(examples + 1, base.data.eval_limit)),
        )
        sims[precision] = Simulation(cfg, backbone=backbone, progress=False)
        sims[precision].start()
        steps[precision] = fedlib_step(sims[precision].model, enc, labels)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)  # CUDA: timed after a synchronize

    def seconds(fn) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    times = {f"{part}_{p}": [] for part in ("step", "eval") for p in sims}
    for _ in range(reps):
        for precision, sim in sims.items():
            with torch.autocast(dev.type, torch.bfloat16, precision == "bf16"):
                times[f"step_{precision}"].append(seconds(steps[precision]))
            times[f"eval_{precision}"].append(seconds(functools.partial(sim.evaluate, personal=False)))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("protocol", help="a protocol YAML whose 'experiment' sets the model, task and batch size")
    p.add_argument("--task", help="one of the protocol's tasks (default: its first)")
    p.add_argument("--examples", type=int, default=100, help="eval examples in one evaluation (default 100)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each, interleaved (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a --workers 2 process's share)")
    p.add_argument("--device", help="default: fedlib's choice (CUDA when present)")
    args = p.parse_args(argv)

    from fedlib.config import ExperimentConfig
    from fedlib.configbase import yaml_load
    from fedlib.runtime import cpu_bf16, resolve_device

    torch.set_num_threads(args.threads)
    proto = yaml_load(Path(args.protocol).read_text())
    base = ExperimentConfig.from_dict(proto["experiment"]).with_strategy("fedavg")
    base = base.replace(fed=base.fed.replace(task=args.task or proto["tasks"][0]))
    if args.device:
        base = base.replace(run=base.run.replace(device=args.device))
    device = resolve_device(base.run.device)
    t = measure(base, args.examples, args.reps)
    for part in ("step", "eval"):
        what = "training step" if part == "step" else f"evaluation of {args.examples}"
        print(f"{what:>20}: fp32 {t[f'{part}_off']:.3f} s  bf16 {t[f'{part}_bf16']:.3f} s")
    native = {True: "hardware", False: "emulated", None: "unknown"}[cpu_bf16()] if device.type == "cpu" else device.type
    ratio = lambda part: t[f"{part}_bf16"] / t[f"{part}_off"]  # noqa: E731
    print(f"autocast_cost bf16={native} step_ratio={ratio('step'):.2f} eval_ratio={ratio('eval'):.2f}")


if __name__ == "__main__":
    main()
