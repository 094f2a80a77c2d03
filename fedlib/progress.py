"""Progress bars that behave wherever the library runs: a terminal, JupyterLab, papermill, CI, a log file.

:func:`progress_mode` decides once per call:

- ``"off"``: ``$CI`` set, ``$FEDLIB_PROGRESS=0``, or stderr is neither a terminal nor a Jupyter kernel's (output
  redirected to a file: no bar lines in the log);
- ``"terminal"``: stderr is a terminal: tqdm's text bar, redrawn in place;
- ``"widget"``: a Jupyter kernel whose client is an interactive front end (JupyterLab, Notebook, VS Code): tqdm's
  ipywidgets bar;
- ``"headless"``: a Jupyter kernel run by papermill, nbclient, nbconvert or pytest (nbval): no one sees a widget
  there, a widget saved in the output notebook shows its first state forever (a stalled bar), and a redrawn text bar
  leaves its carriage returns and cursor moves in the saved notebook. So one plain line per bar when it ends
  (``"fedavg on sst2: 4/4 in 12.3 s"``), and nothing for inner bars (``leave=False``, e.g. a round's clients).

``$FEDLIB_PROGRESS`` = ``terminal``, ``widget``, ``headless`` or ``off`` forces a mode.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["progress_mode", "bar", "interactive_front_end", "OneLine"]

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


def _program(cmdline: str) -> str:
    """What a command line runs: its executable's name and, for a Python interpreter, the module (``-m``) or script
    it runs (so that an argument such as ``--root_dir=/tmp/pytest-of-root`` does not count)."""
    words = [w for w in cmdline.split() if w not in ("-u", "-B", "-E", "-I", "-O")]
    if not words:
        return ""
    names = [os.path.basename(words[0])]
    if names[0].startswith("python") and len(words) > 1:
        names.append(words[2] if words[1] == "-m" and len(words) > 2 else os.path.basename(words[1]))
    return " ".join(names).lower()


def interactive_front_end() -> bool:
    """Whether a person's front end (JupyterLab, Notebook, VS Code) shows this kernel's widgets: a Jupyter kernel
    that papermill, nbclient, nbconvert or pytest did not start (``$FEDLIB_PROGRESS`` = ``headless`` or ``widget``
    says so instead: the test suite runs nbval's kernels as headless). :func:`fedlib.notebook.interact` draws a static
    figure where it is not."""
    forced = os.environ.get("FEDLIB_PROGRESS", "").strip().lower()
    if forced in ("headless", "widget"):
        return forced == "widget"
    if not _in_kernel():
        return False
    program = _program(_kernel_parent_cmdline())
    return not any(name in program for name in HEADLESS_PARENTS)


def progress_mode() -> str:
    forced = os.environ.get("FEDLIB_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    if os.environ.get("CI") or forced in ("0", "false", "no"):
        return "off"
    if _in_kernel():
        return "widget" if interactive_front_end() else "headless"
    return "terminal" if sys.stderr.isatty() else "off"


class OneLine:
    """The headless bar: iterates (or counts :meth:`update`) silently and writes one line when it ends."""

    disable = False

    def __init__(self, iterable=None, desc: str | None = None, total=None, initial: int = 0, file=None, **_unused):
        self.iterable, self.desc, self.n, self.file = iterable, desc or "progress", initial, file or sys.stderr
        self.total = total if total is not None or not hasattr(iterable, "__len__") else len(iterable)
        self.t0, self.closed = time.perf_counter(), False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            total = "" if self.total is None else f"/{self.total}"
            print(f"{self.desc}: {self.n}{total} in {time.perf_counter() - self.t0:.1f} s", file=self.file, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(iterable=None, enabled: bool | None = None, **kwargs):
    """A tqdm bar for :func:`progress_mode` (``enabled=False``: none; ``True``: one even where the mode is off,
    as text); headless, a :class:`OneLine` (none for ``leave=False`` bars). ``kwargs`` go to tqdm (``desc``,
    ``total``, ``leave`` ...)."""
    mode = progress_mode()
    if enabled is False or (enabled is None and mode == "off") or (mode == "headless" and not kwargs.get("leave", 1)):
        from tqdm import tqdm

        return tqdm(iterable, disable=True, **kwargs)
    if mode == "widget":
        from tqdm.notebook import tqdm

        return tqdm(iterable, **kwargs)
    if mode == "headless":
        return OneLine(iterable, **kwargs)
    from tqdm import tqdm

    return tqdm(iterable, **kwargs)
