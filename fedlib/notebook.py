"""What every notebook does first and last: :func:`setup` (offline hub, quiet logs, CPU threads, the output folder)
and :func:`save_summary` (the ``summary.json`` that ``tests/test_notebooks.py`` checks after papermill or nbval has
run the notebook); and :func:`interact`, the notebooks' sliders with a static figure where no one can move them.
Nothing here runs at import."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

__all__ = ["setup", "save_summary", "interact"]


def setup(out_dir: str | Path, threads: int = 2, offline: bool = True, log_level: int = logging.WARNING) -> Path:
    """Prepare a notebook run and return its output folder (created), with transformers' own progress bars off.

    ``offline``: no Hugging Face Hub calls (``HF_HUB_OFFLINE=1`` unless already set; the bundled model and the
    project's ``data/`` need none). ``threads``: at most this many torch CPU threads, and no more than the kernel was
    started with (``OMP_NUM_THREADS``: ``make test`` runs two notebooks at once, one thread each); the notebooks'
    defaults are sized for 2 cores; device and seeds are chosen by each run's config, ``fedlib.runtime``."""
    if offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    logging.basicConfig(level=log_level)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars: noise in a saved notebook, fedlib.progress reports runs
    import torch

    given = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(max(1, min(threads, given, os.cpu_count() or 1)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_summary(out: str | Path, summary: dict | None = None, **values) -> dict:
    """Write ``summary`` (and ``values``) to ``<out>/summary.json`` (numpy scalars as floats) and return it."""
    data = {**(summary or {}), **values}
    (Path(out) / "summary.json").write_text(json.dumps(data, indent=2, default=float))
    return data


def interact(fn, **controls) -> None:
    """``ipywidgets.interact(fn, **controls)`` where a person's front end shows widgets (JupyterLab, Notebook, VS
    Code); elsewhere (papermill, nbval, nbconvert, no ipywidgets) ``fn()`` once with its defaults, so the executed
    notebook holds the figure a static viewer shows. ``fn``'s defaults should be the controls' initial values."""
    from .progress import interactive_front_end

    if interactive_front_end():
        try:
            import ipywidgets
        except ImportError:
            pass
        else:
            ipywidgets.interact(fn, **controls)
            return
    fn()
