"""Test-run settings for both ``notebooks/`` (nbval) and ``tests/``, and how pytest-xdist deals them out; fixtures
are in ``tests/conftest.py``.

``make test`` runs three pytest-xdist workers on 2 cores: one torch thread each, and ``OMP_NUM_THREADS=1`` for every
process a test starts (the notebooks' kernels, benchmark scripts, Flower nodes), since two 2-thread torch processes
slow each other ~5x here; then, alone, the tests marked ``flower_runtime`` (the Makefile says why). The notebooks'
kernels run as a user's papermill run does: figures inline (``make`` exports ``MPLBACKEND=Agg`` for scripts, which
would leave a kernel's figures out of its outputs) and progress as a headless kernel shows it
(``FEDLIB_PROGRESS=headless``), CI or not.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER") is not None:
    os.environ["OMP_NUM_THREADS"] = "1"
if os.environ.get("MPLBACKEND") == "Agg":
    del os.environ["MPLBACKEND"]
os.environ.setdefault("FEDLIB_PROGRESS", "headless")
EXECUTED = Path(__file__).resolve().parent / "notebooks" / "runs" / "executed"


def notebook_group(nodeid: str) -> str | None:
    """The notebook a test belongs to: its nbval cells (``notebooks/03_client_drift.ipynb::Cell 4``) and its checks
    (``tests/test_notebooks.py::test_...[03_client_drift]``); None for every other test."""
    path, _, rest = nodeid.partition("::")
    if path.startswith("notebooks/") and path.endswith(".ipynb"):
        return Path(path).stem
    if path == "tests/test_notebooks.py" and rest.endswith("]") and "[" in rest:
        return rest[rest.rindex("[") + 1 : -1]
    return None


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` by notebook: a notebook's nbval cells (which share one kernel) and the checks of what that
    run wrote go to one worker, in that order, and the checks read the run's files instead of executing the notebook
    again; every other test is a unit of its own. xdist 3.8's own loadgroup (``xdist_group`` markers) renames node ids,
    which pytest 9 no longer allows, so the groups are read off the node ids here. Larger groups are dealt out first.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class NotebookGroups(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return notebook_group(nodeid) or nodeid

        def _assign_work_unit(self, node) -> None:
            if not self.ordered:  # the slow files first, so that no long test starts last (the queue's tail)
                units = sorted(self.workqueue.items(), key=lambda unit: _rank(unit[0]))
                self.workqueue.clear()
                self.workqueue.update(units)
                self.ordered = True
            super()._assign_work_unit(node)

    return NotebookGroups(config, log)


# files whose tests take tens of seconds each (docs/testing.md), in the order they are dealt out, notebooks among them
SLOW_FIRST = (
    "tests/test_readme.py",
    "tests/test_flower_deployment.py",
    "notebooks/",
    "tests/test_benchmarks.py",
    "tests/test_flower.py",
    "tests/test_lab_browser.py",
    "tests/test_robustness.py",
)


def _rank(scope: str) -> int:
    """A work unit's place in the queue: notebook groups rank with ``notebooks/``, the rest by their file."""
    path = "notebooks/" if "::" not in scope else scope.split("::")[0]
    return next((i for i, prefix in enumerate(SLOW_FIRST) if path.startswith(prefix)), len(SLOW_FIRST))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """nbval keeps no executed notebook: each cell's outputs are written back into a copy,
    ``notebooks/runs/executed/<name>.ipynb``, for ``tests/test_notebooks.py`` to read (figures, progress lines)."""
    yield
    if call.when == "call" and item.path.suffix == ".ipynb" and hasattr(item, "test_outputs"):
        import nbformat

        item.cell["outputs"] = list(item.test_outputs or [])
        EXECUTED.mkdir(parents=True, exist_ok=True)
        nbformat.write(item.parent.nb, str(EXECUTED / item.path.name))
