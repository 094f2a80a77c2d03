"""Device choice, seeding and the offline rule: the one place where each is decided.

Every other module takes a ``torch.device`` (or a seed) as an argument; nothing else in ``fedlib``
names ``cuda`` or touches the global RNGs.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["resolve_device", "seed_everything", "offline"]


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


def offline() -> bool:
    """Whether the Hugging Face hub is off limits (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` set to 1/true/yes):
    the one rule for models (:mod:`fedlib.models`) and data (:mod:`fedlib.tasks`)."""
    return any(
        os.environ.get(v, "0").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
