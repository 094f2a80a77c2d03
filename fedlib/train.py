"""Local optimisation and evaluation: the device side of one client, and centralized training.

:func:`local_train` is the device update (``docs/method.md``, "The round": AdamW, weight decay, gradient
clipping, ``zero_grad`` every step — the reference's decoder trees forgot it). The federated client update
and the centralized baseline both call it.
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .encode import Encoded, batch_indices, collate
from .progress import bar as progress_bar
from .tasks import compute_metric

__all__ = [
    "autocast",
    "make_optimizer",
    "step_plan",
    "bucket_by_length",
    "optimizer_step",
    "local_train",
    "predict",
    "evaluate",
    "train_centralized",
]

log = logging.getLogger(__name__)


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD) over the trainable tensors: the head at ``cfg.head_lr``, the rest (prompts, LoRA) at ``cfg.lr``.

    Weight decay applies to the prompts as in the reference (transformers.AdamW with wd 0.1); torch's
    AdamW decays before the update, a negligible difference (``docs/deviations.md``).
    """
    prompt = [p for n, p in model.trainable().items() if not n.startswith("head.")]
    head = [p for n, p in model.trainable().items() if n.startswith("head.")]
    groups = [
        g
        for g in ({"params": prompt, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr, "weight_decay": 0.0})
        if g["params"]
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def autocast(cfg: TrainConfig, device: torch.device):
    """The forward's precision context: bf16 autocast when ``cfg.autocast == "bf16"``, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16")


def step_plan(
    n: int, cfg: TrainConfig, generator: torch.Generator, epochs: int | None = None, max_steps: int | None = None
) -> list[list[int]]:
    """The example indices of each local step: ``epochs`` shuffled passes over ``n`` examples in minibatches of
    ``cfg.batch_size``, cut at ``max_steps`` (else ``cfg.max_steps``). The one definition of which minibatches a
    client sees, for :func:`local_train` and the batched clients (:mod:`fedlib.batched`)."""
    limit = max_steps if max_steps else (cfg.max_steps or math.inf)
    steps: list[list[int]] = []
    for _ in range(epochs or cfg.epochs):
        for idx in batch_indices(n, cfg.batch_size, shuffle=True, generator=generator):
            steps.append(idx)
            if len(steps) >= limit:  # stop before the next pass draws a permutation from ``generator``
                return steps
    return steps


def bucket_by_length(
    steps: list[list[int]], lengths: list[int], pool: int, generator: torch.Generator
) -> list[list[int]]:
    """Length bucketing of a step plan: each run of ``pool`` consecutive minibatches is pooled, sorted by length and cut
    again into minibatches of the same sizes, whose order within the run is then shuffled. Every example keeps its
    pass; a minibatch holds examples of similar length, so less compute goes to padding (what the batched clients'
    length-sorted chunks do for a round's joint step, :mod:`fedlib.batched`). ``pool <= 1``: ``steps`` unchanged."""
    if pool <= 1:
        return steps
    out: list[list[int]] = []
    for start in range(0, len(steps), pool):
        group = steps[start : start + pool]
        pooled = sorted((i for idx in group for i in idx), key=lambda i: lengths[i])
        cut, at = [], 0
        for idx in group:
            cut.append(pooled[at : at + len(idx)])
            at += len(idx)
        out.extend(cut[int(j)] for j in torch.randperm(len(cut), generator=generator))
    return out


def optimizer_step(model, optimizer, params: list, cfg: TrainConfig, after_backward=None) -> None:
    """After the backward pass: the strategy's gradient edit (``after_backward(model)``), clipping, the step."""
    if after_backward is not None:
        after_backward(model)
    if cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()


def local_train(
    model,
    optimizer,
    data: Encoded,
    cfg: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    epochs: int | None = None,
    max_steps: int | None = None,
    extra_loss=None,
    after_backward=None,
    bucket: int = 0,
    plan: list[list[int]] | None = None,
) -> dict:
    """Run ``epochs`` passes (or ``max_steps`` steps) of minibatch AdamW over ``data`` (:func:`step_plan`; with
    ``bucket`` > 1, its minibatches bucketed by length in runs of ``bucket``, :func:`bucket_by_length`); ``plan``:
    these minibatches instead (a slice of a longer run's plan), drawing nothing from ``generator``.

    ``extra_loss(model) -> scalar`` is added to the loss (FedProx's proximal term uses it);
    ``after_backward(model)`` may edit gradients before clipping (SCAFFOLD's correction uses it).
    Returns ``{"loss": mean loss, "steps": K}``; K is what SCAFFOLD-style control variates divide by.
    """
    model.train()
    pad = model.info.tokenizer.pad_token_id
    params = list(model.trainable().values())
    total, steps = 0.0, 0
    plan = plan if plan is not None else step_plan(len(data), cfg, generator, epochs, max_steps)
    lengths = [len(ids) for ids in data.input_ids] if bucket > 1 else []
    for idx in bucket_by_length(plan, lengths, bucket, generator):
        batch = _to(collate(data, idx, pad), device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(cfg, device):
            loss = F.cross_entropy(model(**batch).float(), batch["labels"])
        if extra_loss is not None:
            loss = loss + extra_loss(model)
        loss.backward()
        optimizer_step(model, optimizer, params, cfg, after_backward)
        total += loss.item()
        steps += 1
    return {"loss": total / max(steps, 1), "steps": steps}


@torch.no_grad()
def predict(model, data: Encoded, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and loss per example: ``([N], [N])``, in ``data``'s order.

    Batches are formed over examples sorted by length, so little compute goes to padding. Under bf16 autocast when
    the model was built for it (``model.bf16``, set from ``train.autocast`` by :func:`fedlib.simulation.build_model`).
    """
    model.eval()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(getattr(model, "bf16", False))):
        return _predict(model, data, batch_size, device)


def _predict(model, data: Encoded, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    pad = model.info.tokenizer.pad_token_id
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    preds, losses = torch.empty(len(data), dtype=torch.long), torch.empty(len(data))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = _to(collate(data, idx, pad), device)
        logits = model(**batch).float()
        preds[idx] = logits.argmax(-1).cpu()
        losses[idx] = F.cross_entropy(logits, batch["labels"], reduction="none").cpu()
    return preds, losses


def evaluate(model, data: Encoded, task, batch_size: int, device: torch.device, return_preds: bool = False) -> dict:
    """The task metric on ``data`` (plus ``loss``; plus ``preds`` ``[N]`` when ``return_preds``)."""
    preds, losses = predict(model, data, batch_size, device)
    out = compute_metric(task, preds.numpy(), data.labels)
    out["loss"] = float(losses.mean())
    if return_preds:
        out["preds"] = preds
    return out


def train_centralized(
    model,
    train: Encoded,
    evalset: Encoded,
    cfg: TrainConfig,
    device: torch.device,
    eval_every: int = 0,
    progress: bool | None = None,
    seed: int = 42,
) -> list[dict]:
    """Single-client training (the sanity baseline; ``seed`` shuffles the minibatches): one record per evaluation."""
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    history = [{"step": 0, **evaluate(model, evalset, model.task, cfg.eval_batch_size, device)}]
    plan = step_plan(len(train), cfg, gen)  # one plan for the run: every epoch a whole pass, however it is evaluated
    total = len(plan)
    chunk = eval_every or total
    done, t0 = 0, time.perf_counter()
    bar = progress_bar(total=total, desc="train", enabled=progress)
    while done < total:
        n = int(min(chunk, total - done))
        stats = local_train(model, optimizer, train, cfg, device, gen, plan=plan[done : done + n])
        done += stats["steps"]
        bar.update(stats["steps"])
        rec = {
            "step": done,
            "train_loss": stats["loss"],
            "seconds": time.perf_counter() - t0,
            **evaluate(model, evalset, model.task, cfg.eval_batch_size, device),
        }
        log.info("step %d: %s %.4f", done, model.task.metric, rec["metric"])
        history.append(rec)
    bar.close()
    return history
