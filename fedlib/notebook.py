"""What every notebook does first and last: :func:`setup` (offline hub, quiet logs, CPU threads, the output folder)
and :func:`save_summary` (the ``summary.json`` that ``tests/test_notebooks.py`` checks after papermill or nbval has
run the notebook). Nothing here runs at import."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

__all__ = ["setup", "save_summary"]


def setup(out_dir: str | Path, threads: int = 2, offline: bool = True, log_level: int = logging.WARNING) -> Path:
    """Prepare a notebook run and return its output folder (created).

    ``offline``: no Hugging Face Hub calls (``HF_HUB_OFFLINE=1`` unless already set; the bundled model and the
    project's ``data/`` need none). ``threads``: at most this many torch CPU threads (the notebooks' defaults are
    sized for 2 cores; device and seeds are chosen by each run's config, ``fedlib.runtime``)."""
    if offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    logging.basicConfig(level=log_level)
    import torch

    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_summary(out: str | Path, summary: dict | None = None, **values) -> dict:
    """Write ``summary`` (and ``values``) to ``<out>/summary.json`` (numpy scalars as floats) and return it."""
    data = {**(summary or {}), **values}
    (Path(out) / "summary.json").write_text(json.dumps(data, indent=2, default=float))
    return data
