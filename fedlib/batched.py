"""Batched clients: the m sampled clients' local steps as joint forward/backward passes of the frozen backbone.

Each client has its own workspace (a :class:`~fedlib.classifier.PromptClassifier` sharing the one frozen
backbone, holding that client's prompts and head) and its own AdamW, set up by the same
:func:`fedlib.client.prepare_client` as the sequential loop. At local step s the clients that still have a
minibatch (the very minibatches the sequential loop draws, from the same per-client generators) are joined;
each example gets its own client's prefixes in the cache, ``[n, L, 2, H_kv, P, hd]`` gathered from the
clients' prompts, and the backbone runs once per chunk. The loss is the sum over clients of each client's
mean minibatch loss: the prompts are disjoint, so each client's gradient is exactly its own. Each client
then applies its own rule (SCAFFOLD correction, FedProx term), clips and steps its own optimizer; a client
with fewer minibatches simply drops out of the later steps.

Chunks: the joined examples are sorted by length and cut into chunks of at most ``chunk`` examples
(gradients accumulate over chunks). On a GPU one chunk of all m x B examples fills the device; on a CPU,
whose cores a single minibatch already keeps busy, chunks of the minibatch size sorted by length pad less
than the sequential loop, which is what keeps batching from being slower there (benchmarks/batched_clients.py).

Measured on this project's 2-core CPU (benchmarks/batched_clients.py, 10 clients x 32 examples, batch 8):
chunks of one minibatch 1.56x the sequential loop's speed, one joint chunk 0.77x; in a cpu-small run client
training took 1.36x (SST-2) and 1.43x (RTE) less time. So ``FedConfig.batch_clients="auto"`` batches on
every device, with the chunk size chosen per device (:func:`default_chunk`).

Results equal the sequential loop's up to float rounding when dropout is off (tested). With dropout on, the
masks come from one RNG stream seeded by the first client's seed: reproducible, not bit-equal to sequential.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .client import LocalRun, finish_client, prepare_client
from .encode import Encoded, collate
from .train import autocast, optimizer_step, step_plan

__all__ = ["supports_batching", "workspaces", "batched_local_train", "client_updates_batched", "default_chunk"]


def supports_batching(model) -> bool:
    """Batching needs deep prompts (per-example prefixes); LoRA and shallow prompts live in shared modules."""
    return model.cfg.prompt_mode == "deep" and model.prompt.prompt_len > 0 and bool(model.prompt.on_layers)


def default_chunk(device: torch.device, clients: int, batch_size: int) -> int:
    """Examples per joint forward: all of them on an accelerator, one minibatch's worth on a CPU."""
    return clients * batch_size if device.type != "cpu" else batch_size


def workspaces(model, m: int, cache: list | None = None) -> list:
    """``m`` classifiers sharing ``model``'s frozen backbone: ``model`` itself and m - 1 with their own prompt
    and head (same roles). ``cache``: a list reused across rounds (grown as needed)."""
    from .classifier import PromptClassifier

    spaces = cache if cache is not None else []
    if not spaces or spaces[0] is not model:
        spaces[:] = [model]
    device = next(model.parameters()).device
    while len(spaces) < m:
        extra = PromptClassifier(model.info, model.task, model.cfg).to(device)
        extra.prompt.disabled = model.prompt.disabled
        extra.bf16 = getattr(model, "bf16", False)  # evaluation's precision, as the lead model's
        spaces.append(extra)
    return spaces[:m]


def _joint_chunk_loss(
    runs: list[LocalRun], joint: Encoded, owner: list[int], sizes: dict[int, int], idx: list[int], device: torch.device
) -> tuple[torch.Tensor, dict[int, float]]:
    """Sum over the clients present in chunk ``idx`` of (their rows' summed loss / their minibatch size)."""
    lead = runs[0].model
    idx = sorted(idx, key=lambda j: owner[j])  # each client's rows contiguous (stable: lengths kept)
    batch = {k: v.to(device) for k, v in collate(joint, idx, lead.info.tokenizer.pad_token_id).items()}
    counts = {}
    for j in idx:
        counts[owner[j]] = counts.get(owner[j], 0) + 1
    kvs = [runs[c].model.prompt.key_values() for c in counts]  # each [L, 2, H_kv, P, hd]
    kv = torch.cat([v.unsqueeze(0).expand(n, *v.shape) for v, n in zip(kvs, counts.values())])  # [n, L, 2, ...]
    hidden = lead.encode(
        batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), prompt_kv=kv
    ).last_hidden_state  # [n, T, d]
    total, parts, start = 0.0, {}, 0
    for c, n in counts.items():  # slices, not gathers: a deterministic backward
        rows = slice(start, start + n)
        start += n
        logits = runs[c].model.head(hidden[rows], batch["attention_mask"][rows], batch["target_pos"][rows]).float()
        loss = F.cross_entropy(logits, batch["labels"][rows], reduction="sum") / sizes[c]
        total = total + loss
        parts[c] = loss.item()
    return total, parts


def batched_local_train(
    runs: list[LocalRun], datas: list[Encoded], device: torch.device, generators: list[torch.Generator], chunk: int = 0
) -> list[dict]:
    """:func:`fedlib.train.local_train` for several clients at once; one ``{"loss", "steps"}`` per client."""
    cfg = runs[0].cfg
    chunk = chunk or default_chunk(device, len(runs), cfg.batch_size)
    plans = [step_plan(len(d), cfg, g) for d, g in zip(datas, generators)]
    for run in runs:
        run.model.train()
    params = [list(run.model.trainable().values()) for run in runs]
    totals, steps = [0.0] * len(runs), [0] * len(runs)
    for s in range(max((len(p) for p in plans), default=0)):
        active = [c for c in range(len(runs)) if s < len(plans[c])]
        for c in active:
            runs[c].opt.zero_grad(set_to_none=True)
        joint = Encoded.concat([datas[c].subset(plans[c][s]) for c in active])
        owner = [c for c in active for _ in plans[c][s]]
        sizes = {c: len(plans[c][s]) for c in active}
        order = sorted(range(len(joint)), key=lambda j: len(joint.input_ids[j]))
        losses = dict.fromkeys(active, 0.0)
        for start in range(0, len(order), chunk):
            with autocast(cfg, device):
                loss, parts = _joint_chunk_loss(runs, joint, owner, sizes, order[start : start + chunk], device)
            loss.backward()
            for c, v in parts.items():
                losses[c] += v
        for c in active:
            run = runs[c]
            if run.extra_loss is not None:
                extra = run.extra_loss(run.model)
                extra.backward()
                losses[c] += extra.item()
            optimizer_step(run.model, run.opt, params[c], cfg, run.after_backward)
            totals[c] += losses[c]
            steps[c] += 1
    return [{"loss": totals[c] / max(steps[c], 1), "steps": steps[c]} for c in range(len(runs))]


def client_updates_batched(
    models: list,
    clients: list[int],
    global_shared: dict,
    states: list[dict],
    init_personal: dict,
    datas: list[Encoded],
    cfg,
    strategy,
    download: dict,
    seeds: list[int],
    device: torch.device,
    chunk: int = 0,
) -> list[tuple]:
    """:func:`fedlib.client.client_update` for ``clients`` at once (``models`` from :func:`workspaces`):
    one ``(ClientResult, new state)`` per client, in order."""
    runs = [
        prepare_client(model, global_shared, state, init_personal, cfg, strategy, download, device)
        for model, state in zip(models, states)
    ]
    for run, seed in zip(runs, seeds):
        run.seed = seed
    torch.manual_seed(seeds[0])
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    stats = batched_local_train(runs, datas, device, gens, chunk)
    return [finish_client(run, k, len(d), st, strategy) for run, k, d, st in zip(runs, clients, datas, stats)]
