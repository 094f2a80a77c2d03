"""Random draws for differential privacy from the operating system's CSPRNG (``os.urandom``), not from a seed.

A DP guarantee assumes nobody but the mechanism knows its noise. Drawn from ``fed.seed`` (the default, for
reproducible runs), the noise and the Poisson cohorts can be rebuilt by anyone who knows the seed: every client
receives the run's configuration, and in local mode the server sends each client the very seed its noise comes
from. ``privacy.secure_rng: true`` draws both from here instead (as Opacus' ``secure_mode``), at the cost of
runs that no longer repeat.

The Gaussian is Box-Muller on 53-bit uniforms from ``os.urandom``, and each coordinate is the sum of four such draws
halved (the same variance), as Opacus does in secure mode against the floating-point attack on a single draw
(Mironov 2012, "On significance of the least significant bits for differential privacy").
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

__all__ = ["secure_uniform", "secure_normal", "secure_gaussian_like", "secure_poisson_sample"]


def secure_uniform(n: int) -> np.ndarray:
    """``n`` uniforms in (0, 1), float64, from ``os.urandom`` (53 random bits each, never 0 or 1): ``[n]``."""
    bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) / float(2**53)


def secure_normal(n: int) -> np.ndarray:
    """``n`` standard normal draws, float64: Box-Muller on :func:`secure_uniform`, four summed and halved: ``[n]``."""
    out = np.zeros(n)
    for _ in range(4):
        u1, u2 = secure_uniform(n), secure_uniform(n)
        out += np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)
    return out / 2.0


def secure_gaussian_like(tensors: dict[str, torch.Tensor], std: float) -> dict[str, torch.Tensor]:
    """Independent N(0, std^2) noise shaped as ``tensors`` (float64, CPU), from the OS's CSPRNG."""
    return {
        k: torch.from_numpy(secure_normal(v.numel()).reshape(tuple(v.shape))) * std for k, v in sorted(tensors.items())
    }


def secure_poisson_sample(n: int, q: float) -> list[int]:
    """Poisson sampling from the OS's CSPRNG: each of ``n`` clients independently with probability ``q``."""
    return [int(k) for k in np.flatnonzero(secure_uniform(n) < q)]
