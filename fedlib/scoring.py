"""Layer importance scores for partial prompt tuning (``docs/method.md``, "Layer selection"; the paper's
layer-scoring step).

For client k and layer l, take one batch of B examples through the frozen model with its prompts,
flatten layer l's output hidden states to ``H_l`` ``[B, T*d]`` (padding positions zeroed), form the
cosine-similarity matrix ``K_l = cos(H_i, H_j)`` ``[B, B]``, and score

    s_{k,l} = sum_j ( log lambda_j + 1 / lambda_j ),   lambda = eig(K_l) + eps   (eps = 1e-5)

= log det(K+eps I) + tr((K+eps I)^-1): at least B, and larger the more collinear (redundant) the
batch's representations are. The consensus score is ``S_l = sum_k (n_k / sum_j n_j) s_{k,l}``; layers
are ranked by it, highest first, and the top ones shared.

Differences from the reference code (``docs/deviations.md``): all L layers are scored (the reference skips the
last); the model runs in eval mode (no dropout noise); padding is excluded; eigenvalues come from
``torch.linalg.eigvalsh`` on all layers at once (symmetric K: real, sorted) instead of
``np.linalg.eigvals`` in an O(B^2) Python loop.
"""

from __future__ import annotations

import numpy as np
import torch

from .encode import Encoded, collate

__all__ = ["similarity_matrices", "similarity_scores", "client_layer_scores", "batch_hidden_states", "score_layers"]

EPS = 1e-5


def similarity_matrices(hidden: torch.Tensor) -> torch.Tensor:
    """Cosine-similarity matrices ``[L, B, B]`` from hidden states ``[L, B, ...]`` (flattened per example)."""
    h = torch.nn.functional.normalize(hidden.flatten(2).double(), dim=-1)  # [L, B, F]
    return h @ h.transpose(1, 2)


def similarity_scores(hidden: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Scores ``[L]`` from hidden states ``[L, B, ...]``: sum(log lambda + 1/lambda) of each K_l."""
    lam = torch.linalg.eigvalsh(similarity_matrices(hidden)).clamp_min(0.0) + eps  # [L, B]
    return (lam.log() + 1.0 / lam).sum(-1)


@torch.no_grad()
def batch_hidden_states(model, batch: dict, device: torch.device) -> torch.Tensor:
    """Each layer's output on a batch, padding zeroed: ``[L, B, T, d]`` (eval mode, prompts active)."""
    model.eval()
    batch = {k: v.to(device) for k, v in batch.items()}
    _, hidden = model(**batch, output_hidden_states=True)
    mask = batch["attention_mask"].to(hidden[0].dtype)[None, :, :, None]  # [1, B, T, 1]
    return (torch.stack(hidden[1:]) * mask).cpu()


def client_layer_scores(model, batch: dict, device: torch.device) -> torch.Tensor:
    """One client's scores ``[L]``: one batch through the prompted model, all layers at once."""
    return similarity_scores(batch_hidden_states(model, batch, device))


def score_layers(
    model, data: Encoded, shards: list[list[int]], batch_size: int, seed: int, device: torch.device
) -> dict:
    """Scores of every client (one seeded random batch each) and their size-weighted consensus.

    Returns ``{"per_client": [N, L], "weights": [N], "scores": [L], "ranking": [L]}`` (numpy / lists),
    clients with fewer than 2 examples skipped (weight 0).
    """
    pad = model.info.tokenizer.pad_token_id
    per_client, weights = [], []
    for k, idx in enumerate(shards):
        if len(idx) < 2:
            per_client.append(np.full(model.info.num_layers, np.nan))
            weights.append(0.0)
            continue
        order = np.random.default_rng([seed, k, 11]).permutation(len(idx))[:batch_size]
        batch = collate(data, [idx[i] for i in order], pad)
        per_client.append(client_layer_scores(model, batch, device).numpy())
        weights.append(float(len(idx)))
    per_client = np.stack(per_client)
    w = np.asarray(weights) / np.sum(weights)
    scores = np.nansum(per_client * w[:, None], axis=0)
    ranking = [int(i) for i in np.argsort(-scores, kind="stable")]
    return {"per_client": per_client, "weights": w, "scores": scores, "ranking": ranking}
