"""How many layers to share: the Hessian eigenvalue density of the prompt loss (``docs/method.md``, "Layer selection").

1. Stochastic Lanczos quadrature (Ghorbani et al. 2019, PyHessian): ``iters`` Lanczos steps with full
   re-orthogonalisation on Hessian-vector products from torch autograd (double backward, no finite
   differences), from a Rademacher probe. The tridiagonal T's eigenpairs give Ritz values lambda_i and
   weights w_i = (first eigenvector component)^2.
2. Density: Gaussian kernels of variance ``sigma2 = 1e-5 * max(1, lambda_max - lambda_min)`` at the Ritz
   values, on 10,000 grid points over [lambda_min - 0.01, lambda_max + 0.01], normalised to integrate to 1.
3. ``ratio(t) = 1 - integral_{lambda <= t} density``: the mass of eigenvalues above t.
4. The reference's threshold search: t = 0, 0.1, 0.2, ...; if ratio(t) < ratio(0)/2, halve the step and
   restart from 0; once each of 4 consecutive ratios differs from the one before by < 0.005 (get_ratio.py's
   three neighbour tests, not a spread of 0.005 over all four), return the last ratio.
   The fraction of layers to keep is that ratio (averaged over clients by the caller).

That rule is not scale-free: with eigenvalues far below its absolute kernel width it returns about one half
whatever the spectrum. :func:`layer_traces` is the scale-free alternative (``selection.count_rule: trace``):
Hutchinson estimates of the trace of each layer's diagonal Hessian block, tr(H_ll) = E[v_l^T (H v)_l] for
Rademacher v (one Hessian-vector product estimates all L blocks at once; the cross terms have mean zero);
:func:`coverage_count` keeps the fewest layers whose client-averaged |trace| covers ``tau`` of the total.
A run measures only the rule it uses (``selection.compare_rules`` measures both, as notebook 02 does).

Double backward through PyTorch's fused CPU attention is not implemented, so the model runs with its
eager attention inside :func:`keep_ratio` (and the fast kernel again afterwards). The loss is the
task's classification loss on the batch (the reference used a plain LM loss on ``labels=input_ids``,
padding included; ``docs/deviations.md``).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "lanczos",
    "ritz",
    "eigen_density",
    "ratio_above",
    "threshold_ratio",
    "keep_ratio",
    "layer_count",
    "block_traces",
    "layer_traces",
    "client_curvature",
    "coverage_count",
]


def lanczos(
    hvp, dim: int, iters: int, generator: torch.Generator, dtype=torch.float64, device=None
) -> tuple[np.ndarray, np.ndarray]:
    """Lanczos on a symmetric operator ``hvp: [dim] -> [dim]``; returns (alphas ``[m]``, betas ``[m-1]``). It stops
    early when the Krylov space is exhausted: a beta below 1e-10 of ``||H v_0||``, relative so that an operator's
    scale (a loss times 1e-11) changes nothing."""
    v = (torch.randint(0, 2, (dim,), generator=generator).to(dtype) * 2 - 1).to(device)  # Rademacher
    v = v / v.norm()
    basis, alphas, betas = [v], [], []
    beta, scale = 0.0, 0.0
    for i in range(min(iters, dim)):
        w = hvp(basis[-1]).to(dtype)
        scale = scale or float(w.norm())
        alpha = torch.dot(w, basis[-1])
        alphas.append(float(alpha))
        w = w - alpha * basis[-1] - (beta * basis[-2] if i > 0 else 0)
        for b in basis:  # full re-orthogonalisation
            w = w - torch.dot(w, b) * b
        beta = float(w.norm())
        if i == min(iters, dim) - 1 or beta <= 1e-10 * scale:
            break
        betas.append(beta)
        basis.append(w / beta)
    return np.array(alphas), np.array(betas[: len(alphas) - 1])


def ritz(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of the tridiagonal T and weights (first eigenvector components squared)."""
    t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    evals, evecs = np.linalg.eigh(t)
    return evals, evecs[0] ** 2


def eigen_density(
    eigs: np.ndarray, weights: np.ndarray, num_bins: int = 10_000, sigma2: float = 1e-5, overhead: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-smoothed spectral density ``(grid [num_bins], density [num_bins])`` (PyHessian's)."""
    lo, hi = eigs.min() - overhead, eigs.max() + overhead
    sigma2 = sigma2 * max(1.0, hi - lo)
    grid = np.linspace(lo, hi, num_bins)
    dens = (
        weights[None, :]
        * np.exp(-((grid[:, None] - eigs[None, :]) ** 2) / (2 * sigma2))
        / math.sqrt(2 * math.pi * sigma2)
    ).sum(1)
    dens /= _trapezoid(dens, grid)
    return grid, dens


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2) if len(y) > 1 else 0.0


def ratio_above(grid: np.ndarray, density: np.ndarray, t: float) -> float:
    """Mass of the density above ``t``: ``1 - integral_{lambda <= t}`` (trapezoid rule, as the normalisation)."""
    below = grid <= t
    return float(1.0 - _trapezoid(density[below], grid[below]))


def threshold_ratio(
    grid: np.ndarray,
    density: np.ndarray,
    inc: float = 0.1,
    tol: float = 0.005,
    plateau: int = 4,
    max_evals: int = 100_000,
) -> float:
    """The reference's search (get_ratio.py): the ratio where the mass above t stops changing."""
    first = ratio_above(grid, density, 0.0)
    t, ratios, evals = 0.0, [], 0
    while evals < max_evals and inc > 1e-9:
        r = ratio_above(grid, density, t)
        evals += 1
        if ratios and r < first / 2:
            inc, t, ratios = inc / 2, 0.0, []
            continue
        ratios.append(r)
        last = ratios[-plateau:]
        if len(last) == plateau and all(abs(a - b) < tol for a, b in zip(last, last[1:])):
            return last[-1]
        t += inc
    return ratios[-1] if ratios else first


@contextlib.contextmanager
def prompt_hvp(model, batch: dict, device: torch.device, names=lambda n: n.startswith("prompt.")):
    """``(params, hvp)``: the prompt parameters selected by ``names`` and ``hvp: [dim] -> [dim]`` (float64), the
    Hessian of the batch's task loss w.r.t. them times a vector (double backward under eager attention)."""
    from .prompts import eager_attention

    params = [p for n, p in model.trainable().items() if names(n)]
    batch = {k: v.to(device) for k, v in batch.items()}
    model.eval()
    with eager_attention(model.backbone):
        loss = F.cross_entropy(model(**batch).float(), batch["labels"])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])

        def hvp(v):
            hv = torch.autograd.grad(flat, params, grad_outputs=v.view(-1).to(flat.dtype), retain_graph=True)
            return torch.cat([h.reshape(-1) for h in hv]).detach().double()

        yield params, hvp


def keep_ratio(model, batch: dict, iters: int, seed: int, device: torch.device, relative: bool = False) -> dict:
    """One client's fraction of prompt layers to keep, from the Hessian of its batch's loss w.r.t. all
    prompt tensors (all layers together, as the reference). Returns ratio, Ritz values and weights.

    The reference's kernel width and grid margin are absolute (1e-5 * range, 0.01): when the eigenvalues
    are much smaller than that (small models, untrained prompts) the density is one Gaussian at 0 and the
    rule returns about 0.5 whatever the spectrum. ``relative=True`` divides the Ritz values by their
    largest magnitude first, making the rule scale-free (not in the reference).
    """
    with prompt_hvp(model, batch, device) as (params, hvp):
        return _density(hvp, sum(p.numel() for p in params), iters, seed, device, relative)


def _density(hvp, dim: int, iters: int, seed: int, device, relative: bool) -> dict:
    alphas, betas = lanczos(hvp, dim, iters, torch.Generator().manual_seed(seed), device=device)
    eigs, weights = ritz(alphas, betas)
    scaled = eigs / max(np.abs(eigs).max(), 1e-30) if relative else eigs
    grid, dens = eigen_density(scaled, weights)
    return {
        "ratio": threshold_ratio(grid, dens),
        "eigenvalues": eigs.tolist(),
        "weights": weights.tolist(),
        "relative": relative,
    }


def block_traces(hvp, sizes: list[int], probes: int, generator: torch.Generator, device=None) -> np.ndarray:
    """Hutchinson estimates of the traces of the diagonal blocks of a symmetric operator ``hvp: [sum(sizes)] ->
    [sum(sizes)]`` whose blocks have ``sizes``: ``[len(sizes)]``, the mean over ``probes`` Rademacher vectors of
    ``v_b . (H v)_b`` (unbiased: the off-diagonal blocks' terms have mean zero)."""
    out = np.zeros(len(sizes))
    for _ in range(probes):
        v = (torch.randint(0, 2, (sum(sizes),), generator=generator).double() * 2 - 1).to(device)
        out += np.array([float(part.sum()) for part in (v * hvp(v)).split(sizes)]) / probes
    return out


def layer_traces(model, batch: dict, probes: int, seed: int, device: torch.device) -> np.ndarray:
    """tr(H_ll), each prompt layer's Hessian block of the batch's task loss (:func:`block_traces`): ``[L]``,
    0 for layers without prompt parameters (off)."""
    with prompt_hvp(model, batch, device) as (params, hvp):
        return _layer_traces(model, params, hvp, probes, seed, device)


def _layer_traces(model, params, hvp, probes: int, seed: int, device) -> np.ndarray:
    """:func:`layer_traces` on the prompt Hessian ``hvp`` over ``params`` (all ``prompt.*``), restricted to the
    ``prompt.layer.<l>`` blocks (other prompt parameters, e.g. the reparametrisation MLP, padded with zeros)."""
    names = [n for n in model.trainable() if n.startswith("prompt.")]
    keep = [i for i, n in enumerate(names) if n.startswith("prompt.layer.")]
    sizes = [p.numel() for p in params]
    if len(keep) < len(names):  # H_LL v = [H (v, 0)]_L
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        index = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in keep]).to(device)
        full = hvp

        def hvp(v):
            padded = torch.zeros(int(offsets[-1]), dtype=v.dtype, device=v.device).index_copy(0, index, v)
            return full(padded)[index]

    blocks = block_traces(hvp, [sizes[i] for i in keep], probes, torch.Generator().manual_seed(seed), device)
    traces = np.zeros(model.info.num_layers)
    for i, value in zip(keep, blocks):
        traces[int(names[i].rsplit(".", 1)[1])] = value
    return traces


def client_curvature(
    model,
    batch: dict,
    iters: int,
    seed: int,
    device: torch.device,
    relative: bool = False,
    rules: tuple[str, ...] = ("density", "trace"),
) -> dict:
    """The ``rules``' measurements on one Hessian-vector-product graph (one forward, one differentiable backward):
    ``"density"``, :func:`keep_ratio`'s result (``iters`` Lanczos steps); ``"trace"``, ``"traces"``
    (:func:`layer_traces` with ``iters`` probes). Each rule costs ``iters`` Hessian-vector products."""
    unknown = set(rules) - {"density", "trace"}
    if unknown or not rules:
        raise ValueError(f"rules {rules!r}: expected one or both of 'density', 'trace'")
    with prompt_hvp(model, batch, device) as (params, hvp):
        out = _density(hvp, sum(p.numel() for p in params), iters, seed, device, relative) if "density" in rules else {}
        if "trace" in rules:
            out["traces"] = _layer_traces(model, params, hvp, iters, seed, device)
    return out


def coverage_count(traces: np.ndarray, tau: float) -> int:
    """The fewest layers whose curvature magnitudes |tr H_ll| cover ``tau`` of their sum (at least 1; all layers
    when every trace is 0). Magnitudes, because at untrained or briefly warmed-up prompts the blocks' curvature is
    often negative (measured on the bundled model after one warm-up round: all six layers on RTE, three on SST-2)."""
    t = np.abs(np.asarray(traces, float))
    if t.sum() <= 0:
        return len(t)
    covered = np.cumsum(np.sort(t)[::-1]) / t.sum()
    return int(min(len(t), np.searchsorted(covered, tau - 1e-12) + 1))


def layer_count(ratio: float, num_layers: int) -> int:
    """``round(ratio * L)``, at least 1 and at most L (the reference leaves the rounding unstated)."""
    return int(min(num_layers, max(1, math.floor(ratio * num_layers + 0.5))))
