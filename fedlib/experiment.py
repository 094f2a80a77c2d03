"""The default experiment (``make experiment``): offline, on the bundled model, a few minutes on CPU.

Centralized deep-prompt tuning on SST-2: train on a slice of the training set, print dev accuracy
before and after, and save the prompt as safetensors. Run ``python -m fedlib.experiment --help``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from .checkpoint import save_prompt
from .classifier import build_classifier, role_report
from .config import ModelConfig, TrainConfig
from .encode import encode_dataset
from .runtime import resolve_device, seed_everything
from .tasks import load_task
from .train import train_centralized

log = logging.getLogger("fedlib.experiment")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fedlib.experiment", description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--model", default="bundled", help="'bundled' (offline default), a hub id or a local folder")
    p.add_argument("--train-size", type=int, default=4800, help="first N training examples")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/experiment", help="folder for results.json and prompt.safetensors")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seed_everything(args.seed)
    device = resolve_device(args.device)
    mcfg = ModelConfig(name=args.model, prompt_len=args.prompt_len)
    tcfg = TrainConfig(batch_size=args.batch_size, max_steps=args.steps, seed=args.seed, device=args.device)
    model = build_classifier(args.task, mcfg, device=device)
    tok = model.info.tokenizer
    train = encode_dataset(load_task(args.task, "train", limit=args.train_size), tok, model.task, model.head_kind, mcfg.max_length)
    dev = encode_dataset(load_task(args.task, "eval"), tok, model.task, model.head_kind, mcfg.max_length)
    log.info("task %s: %d train / %d eval examples; model %s (%s head) on %s; trainable %s",
             args.task, len(train), len(dev), args.model, model.head_kind, device, role_report(model))
    history = train_centralized(model, train, dev, tcfg, device, eval_every=max(args.steps // 3, 1),
                                progress=sys.stderr.isatty())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_prompt(out / "prompt.safetensors", model)
    result = {"task": args.task, "model": args.model, "metric_name": model.task.metric,
              "before": history[0]["metric"], "after": history[-1]["metric"], "history": history,
              "config": {"model": mcfg.to_dict(), "train": tcfg.to_dict(), "train_size": len(train)}}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"{args.task} dev {model.task.metric}: {result['before']:.4f} before training, "
          f"{result['after']:.4f} after {history[-1]['step']} steps ({history[-1]['seconds']:.0f} s); "
          f"results in {out}/results.json")
    return result


if __name__ == "__main__":
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    main()
