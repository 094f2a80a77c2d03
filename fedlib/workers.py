"""Running one grid in several processes at once, safely (``run_grid.py --workers N``, :mod:`fedlib.protocol`).

On a machine whose cores one process does not keep busy, N processes with a share of the cores each as torch
threads finish a grid sooner (``benchmarks/grid_workers.py`` measures the gain). What keeps them out of each
other's way:

- :func:`grid_lock`: one invocation at a time runs a grid folder (``run.lock``, held for the whole run; a second
  one stops at once instead of running the same runs into the same folders);
- :func:`claim`: each (task, seed) pair with runs to do is taken by the first worker to create its file in
  ``claims/`` (a pair's rows stay in one worker, so they share its layer selection);
- :func:`file_lock` and :func:`write_atomic`: the shared CSV is read, changed and replaced under ``grid.lock``
  (:func:`fedlib.benchmark.record_row`), and every shared file is replaced whole, never written in place;
- a worker whose parent died stops within seconds (an orphan would run on beside the next invocation).

POSIX file locks (Linux, macOS); elsewhere one worker runs. Nothing here runs at import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

__all__ = ["grid_lock", "file_lock", "write_atomic", "claim", "usable_cores", "run_workers"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: Path, wait: bool = True):
    """An exclusive advisory lock on ``path`` (POSIX ``flock``; a no-op where fcntl does not exist). ``wait=False``:
    raise BlockingIOError at once if another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: one worker per grid
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: readers (and other workers)
    see the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def claim(claims: Path, task: str, seed: int, row: str | None = None) -> bool:
    """Claim (task, seed) for this worker, or one ``row`` of it: True if no other worker claimed it first (an exclusive
    create)."""
    try:
        (claims / (f"{task}-seed{seed}" + (f"-{row}" if row else ""))).open("x").close()
        return True
    except FileExistsError:
        return False


@contextlib.contextmanager
def grid_lock(out: Path):
    """Hold ``out/run.lock`` while this invocation runs the grid; another one on the same folder stops at once
    (two would run the same pairs into the same folders). POSIX only; elsewhere nothing is locked."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(out / "run.lock", wait=False))
        except BlockingIOError:
            raise SystemExit(f"{out}: another run_grid is running this grid (it holds {out / 'run.lock'})") from None
        yield


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _worker(target, args: tuple, threads: int, parent: int) -> None:
    """One of :func:`run_workers`' processes (spawned: a fresh interpreter); it exits if its parent dies."""
    import threading

    import torch

    def watch() -> None:  # an orphan would run on beside the next invocation: stop it within seconds
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    target(*args)


def run_workers(target, args: tuple, workers: int, claims: Path) -> None:
    """``target(*args)`` in ``workers`` spawned processes at once, the cores split between them as torch threads;
    ``claims`` (emptied before and after) is the folder where they claim their (task, seed) pairs (:func:`claim`).
    ``target`` must be a module-level function (spawn pickles it by name). The caller holds the grid's lock
    (:func:`grid_lock`), so no other invocation runs the grid meanwhile."""
    import multiprocessing

    shutil.rmtree(claims, ignore_errors=True)
    claims.mkdir()
    threads = max(1, usable_cores() // workers)
    log.info("%d workers, %d torch thread(s) each", workers, threads)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch's thread pools
    procs = [
        ctx.Process(target=_worker, args=(target, args, threads, os.getpid()), name=f"grid-worker-{i}")
        for i in range(workers)
    ]
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
    finally:
        for proc in procs:  # interrupted (Ctrl-C): stop the workers too
            if proc.is_alive():
                proc.terminate()
                proc.join()
        shutil.rmtree(claims, ignore_errors=True)
    failed = [proc.name for proc in procs if proc.exitcode]
    if failed:
        raise SystemExit(f"{', '.join(failed)} failed (see the log above); run the command again to resume")
