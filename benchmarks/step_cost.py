"""Cost of one prompt-tuning step, measured side by side in one run (issue: deep prompts).

Prints, as its last line, ``step_cost floor_ratio=<x> peft_ratio=<y> peak_mem_ratio=<z>``:

- floor_ratio: bundled model (BERT, 6 x 384), one fedlib step (forward, backward, AdamW) over the
  frozen model's forward + backward to the input embeddings on the same batch: the least any
  prompt method can cost. Goal <= 1.15.
- peft_ratio: fedlib step / Hugging Face PEFT ``PrefixTuning`` step on a GPT-2-shaped decoder built from
  a config (6 layers, hidden 384; PEFT refuses BERT-family classifiers), same batch, same P, both with a
  linear classification head on the same transformer. Goal <= 1.0.
- peak_mem_ratio: fedlib's peak resident memory during steps / PEFT's, each measured in its own
  subprocess, median of --mem-reps processes (CPU on Linux: peak RSS reset through /proc/self/clear_refs, read
  from VmHWM; CUDA: peak allocated beyond what was allocated before the steps).

Runs on --device (default: fedlib's choice, CUDA when present, as ``FEDLIB_DEVICE`` says); CUDA times are
taken after a synchronize.

Times are medians over interleaved repetitions (A B A B ...), so drift hits both sides alike.
Usage: python benchmarks/step_cost.py [--batch 16] [--prompt-len 8] [--reps 30] [--mem-reps 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def task_batch(tokenizer, n: int, device: torch.device, task: str = "sst2", data_dir=None, max_length=None):
    """The first ``n`` training examples of ``task`` (a single-sentence task), padded to the longest (cut to
    ``max_length`` when given), and their labels, on ``device``."""
    from fedlib.tasks import load_task

    ds = load_task(task, "train", data_dir=data_dir, limit=n)
    texts = list(ds["text"])
    enc = tokenizer(texts, padding=True, truncation=max_length is not None, max_length=max_length, return_tensors="pt")
    return enc.to(device), torch.tensor(ds["label"], device=device)


def fedlib_step(model, enc, labels):
    """Build a closure doing one fedlib training step on a fixed batch."""
    from fedlib.config import TrainConfig
    from fedlib.train import make_optimizer

    opt = make_optimizer(model, TrainConfig())
    batch = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "target_pos": torch.zeros(len(labels), dtype=torch.long, device=labels.device),
    }
    if "token_type_ids" in enc:
        batch["token_type_ids"] = enc["token_type_ids"]
    params = list(model.trainable().values())

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(**batch), labels).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    model.train()
    return step


def floor_step(backbone, enc):
    base = backbone.base
    embed = base.get_input_embeddings()
    base.train()

    def step():
        x = embed(enc["input_ids"]).detach().requires_grad_(True)
        out = base(inputs_embeds=x, attention_mask=enc["attention_mask"], token_type_ids=enc.get("token_type_ids"))
        out.last_hidden_state.sum().backward()

    return step


def gpt2_models(prompt_len: int, vocab: int):
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    from fedlib.classifier import PromptClassifier
    from fedlib.config import ModelConfig
    from fedlib.models import bundled_model_path, wrap_backbone
    from fedlib.tasks import get_task

    class PeftGPT2(GPT2ForSequenceClassification):
        """transformers >= 5.24 names the cache argument ``cache``; PEFT 0.21.2's PrefixTuning looks for a
        ``past_key_values`` parameter ("Model does not support past key values") and passes its prefixes under that
        name. This signature forwards them to ``cache``: the same computation, under the pinned versions."""

        def forward(self, input_ids=None, attention_mask=None, past_key_values=None, **kwargs):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, cache=past_key_values, **kwargs)

    def make(cls=GPT2ForSequenceClassification):
        torch.manual_seed(0)
        return cls(GPT2Config(n_embd=384, n_head=12, n_layer=6, vocab_size=vocab, num_labels=2, pad_token_id=0))

    tok = AutoTokenizer.from_pretrained(bundled_model_path())
    ours = PromptClassifier(
        wrap_backbone(make(), tok, "gpt2-6x384"),
        get_task("sst2"),
        ModelConfig(prompt_len=prompt_len, head="linear", pooling="mean"),
    )
    peft = get_peft_model(make(PeftGPT2), PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=prompt_len))
    return tok, ours, peft


def peft_step(model, enc, labels):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=4e-2, weight_decay=0.1)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return step


def timed_pair(a, b, reps: int, device: torch.device) -> tuple[float, float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a(), b()
    ta, tb = [], []
    for _ in range(reps):
        for fn, acc in ((a, ta), (b, tb)):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            acc.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def _rss_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def child_peak_memory(which: str, args) -> float:
    """Peak memory (MiB) of steps beyond what was resident before them, in this fresh process."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tok, ours, peft = gpt2_models(args.prompt_len, 30522)
    enc, labels = task_batch(tok, args.batch, device)
    model = ours if which == "fedlib" else peft
    model.to(device)
    step = fedlib_step(model, enc, labels) if which == "fedlib" else peft_step(model, enc, labels)
    del ours, peft
    if device.type == "cuda":
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(5):
            step()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_kb("VmRSS:")
    for _ in range(5):
        step()
    return (_rss_kb("VmHWM:") - before) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--mem-reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="auto", help="auto (fedlib's choice: CUDA when present), cpu, cuda, ...")
    p.add_argument("--child", choices=["fedlib", "peft"], help=argparse.SUPPRESS)
    args = p.parse_args()
    from fedlib.runtime import resolve_device

    args.device = str(resolve_device(args.device))
    device = torch.device(args.device)
    if args.child:
        print(json.dumps({"peak_mib": child_peak_memory(args.child, args)}))
        return
    torch.set_num_threads(args.threads)
    from fedlib.classifier import PromptClassifier
    from fedlib.config import ModelConfig
    from fedlib.models import load_backbone
    from fedlib.tasks import get_task

    backbone = load_backbone("bundled")
    enc, labels = task_batch(backbone.tokenizer, args.batch, device)
    model = PromptClassifier(backbone, get_task("sst2"), ModelConfig(prompt_len=args.prompt_len)).to(device)
    t_ours, t_floor = timed_pair(fedlib_step(model, enc, labels), floor_step(backbone, enc), args.reps, device)
    print(
        f"device {device}: bundled model, batch {args.batch} x {enc['input_ids'].shape[1]} tokens, "
        f"P={args.prompt_len}: "
        f"fedlib step {t_ours * 1e3:.1f} ms, floor (fwd+bwd to embeddings) {t_floor * 1e3:.1f} ms"
    )

    tok, ours, peft = gpt2_models(args.prompt_len, 30522)
    ours.to(device), peft.to(device)
    enc, labels = task_batch(tok, args.batch, device)
    t_ours2, t_peft = timed_pair(fedlib_step(ours, enc, labels), peft_step(peft, enc, labels), args.reps, device)
    print(f"GPT-2 6x384 decoder: fedlib step {t_ours2 * 1e3:.1f} ms, PEFT PrefixTuning step {t_peft * 1e3:.1f} ms")
    prefix = [p for n, p in peft.named_parameters() if p.requires_grad and "prompt_encoder" in n]
    if not prefix or not all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in prefix):
        raise SystemExit("PEFT's prefix got no gradient: its prompts did not reach the model, the timing is void")

    samples = {"fedlib": [], "peft": []}
    for _ in range(args.mem_reps):  # interleaved fresh processes; RSS peaks vary by a few MiB
        for which in samples:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    which,
                    "--batch",
                    str(args.batch),
                    "--prompt-len",
                    str(args.prompt_len),
                    "--threads",
                    str(args.threads),
                    "--device",
                    args.device,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            samples[which].append(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])
    mem = {k: statistics.median(v) for k, v in samples.items()}
    print(
        f"peak memory during steps (median of {args.mem_reps} processes each): fedlib {mem['fedlib']:.1f} MiB "
        f"{[round(x) for x in samples['fedlib']]}, PEFT {mem['peft']:.1f} MiB {[round(x) for x in samples['peft']]}"
    )
    print(
        f"step_cost floor_ratio={t_ours / t_floor:.3f} peft_ratio={t_ours2 / t_peft:.3f} "
        f"peak_mem_ratio={mem['fedlib'] / mem['peft']:.3f}"
    )


if __name__ == "__main__":
    main()
