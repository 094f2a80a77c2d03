"""Device choice and seeding: the one place where both are decided.

Every other module takes a ``torch.device`` (or a seed) as an argument; nothing else in ``fedlib``
names ``cuda`` or touches the global RNGs.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["resolve_device", "seed_everything", "rng_state", "set_rng_state"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return the device to run on: ``"auto"`` picks cuda, then mps, then cpu.

    The environment variable ``FEDLIB_DEVICE`` overrides ``"auto"`` (e.g. ``FEDLIB_DEVICE=cpu``).
    """
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        device = os.environ.get("FEDLIB_DEVICE", "auto")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(
            f"device={device!r} is not a device torch knows: use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'"
        ) from err


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so that the same seed gives the same run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The global RNG states (Python, NumPy, torch CPU and CUDA), for checkpoints."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
