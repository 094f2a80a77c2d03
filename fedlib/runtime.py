"""Device choice, seeding and the offline rule: the one place where each is decided.

Every other module takes a ``torch.device`` (or a seed) as an argument; nothing else in ``fedlib``
names ``cuda`` or touches the global RNGs.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

__all__ = ["resolve_device", "seed_everything", "offline", "cpu_bf16", "warn_emulated_bf16", "platform_name"]

log = logging.getLogger(__name__)


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


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of Linux's ``/proc/cpuinfo`` ({} elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8").split("\n\n")[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if k.strip()}


def cpu_bf16() -> bool | None:
    """Whether this CPU computes bf16 in hardware (the ``avx512_bf16`` or ``amx_bf16`` instructions); None where
    ``/proc/cpuinfo`` does not say. Without them torch emulates bf16 and ``train.autocast: bf16`` is far slower than
    fp32 (on a 2-core AMD EPYC with AVX2 only: a training step 11x, an evaluation 6x; docs/benchmarks.md)."""
    flags = _cpuinfo().get("flags")
    return None if flags is None else bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


@functools.cache
def warn_emulated_bf16(device_type: str) -> None:
    """Log a warning, once per process, when bf16 autocast is asked for on a device that would emulate it."""
    emulated = (device_type == "cpu" and cpu_bf16() is False) or (
        device_type == "cuda" and not torch.cuda.is_bf16_supported()
    )
    if emulated:
        log.warning(
            "train.autocast='bf16' on a %s without bf16 in hardware%s: torch emulates it, many times slower than "
            "fp32 (docs/benchmarks.md); train.autocast='off' is faster here (and computes other numbers)",
            "CPU" if device_type == "cpu" else "GPU",
            " (no avx512_bf16 or amx_bf16)" if device_type == "cpu" else "",
        )


def platform_name() -> str:
    """What a grid's runs ran on, for the results page: the GPU's name, or the CPU cores, model and whether they
    compute bf16 in hardware; and torch's version."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    bf16 = {True: "bf16 in hardware", False: "no bf16 in hardware", None: None}[cpu_bf16()]
    about = ", ".join(x for x in (_cpuinfo().get("model name"), bf16) if x)
    return f"{os.cpu_count()} CPU cores" + (f" ({about})" if about else "") + f", torch {torch.__version__}"
