"""Progress bars that behave wherever the library runs: a terminal, JupyterLab, papermill, CI, a log file.

:func:`progress_mode` decides once per call:

- ``"off"``: ``$CI`` set, ``$FEDLIB_PROGRESS=0``, or stderr is neither a terminal nor a Jupyter kernel's (output
  redirected to a file: no bar lines in the log);
- ``"terminal"``: stderr is a terminal: tqdm's text bar, redrawn in place;
- ``"widget"``: a Jupyter kernel whose client is an interactive front end (JupyterLab, Notebook, VS Code): tqdm's
  ipywidgets bar;
- ``"headless"``: a Jupyter kernel run by papermill, nbclient, nbconvert or pytest (nbval): no one sees a widget
  there, and a widget saved in the output notebook shows its first state forever (a stalled bar). A text bar
  instead, redrawn at most every ``HEADLESS_INTERVAL`` seconds (plus its final state), so the saved notebook
  holds a few lines per bar, not one per update.

``$FEDLIB_PROGRESS`` = ``terminal``, ``widget``, ``headless`` or ``off`` forces a mode.
"""

from __future__ import annotations

import os
import sys

__all__ = ["progress_mode", "bar", "HEADLESS_INTERVAL"]

HEADLESS_INTERVAL = 30.0
MODES = ("off", "terminal", "widget", "headless")
HEADLESS_PARENTS = ("papermill", "nbclient", "nbconvert", "pytest", "nbval", "nbmake")


def _kernel_parent_cmdline() -> str:
    """The command line of the process that started this kernel ('' when unknown)."""
    try:
        import psutil

        return " ".join(psutil.Process().parent().cmdline())
    except Exception:  # no psutil, no parent, no permission
        try:
            with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""


def _in_kernel() -> bool:
    """Whether this code runs inside a Jupyter kernel (not merely in a process that imported ipykernel, as pytest
    does under nbval)."""
    if "IPython" not in sys.modules:
        return False
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except Exception:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress_mode() -> str:
    forced = os.environ.get("FEDLIB_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    if os.environ.get("CI") or forced in ("0", "false", "no"):
        return "off"
    if _in_kernel():
        parent = _kernel_parent_cmdline().lower()
        return "headless" if any(name in parent for name in HEADLESS_PARENTS) else "widget"
    return "terminal" if sys.stderr.isatty() else "off"


def bar(iterable=None, enabled: bool | None = None, **kwargs):
    """A tqdm bar for :func:`progress_mode` (``enabled=False``: none; ``True``: one even where the mode is off,
    as text). ``kwargs`` go to tqdm (``desc``, ``total``, ``leave`` ...)."""
    mode = progress_mode()
    if enabled is False or (enabled is None and mode == "off"):
        from tqdm import tqdm

        return tqdm(iterable, disable=True, **kwargs)
    if mode == "widget":
        from tqdm.notebook import tqdm

        return tqdm(iterable, **kwargs)
    from tqdm import tqdm

    if mode == "headless":
        kwargs = {"mininterval": HEADLESS_INTERVAL, "file": sys.stderr, "ascii": True, **kwargs}
    return tqdm(iterable, **kwargs)
