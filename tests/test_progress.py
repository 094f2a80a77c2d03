"""Progress bars: a terminal redraws in place, JupyterLab gets a widget, papermill and CI get no stalled widget and
no line per update (fedlib.progress)."""

import io
import json
import os
import subprocess
import sys

import pytest

from fedlib import progress
from fedlib.progress import bar, progress_mode


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("FEDLIB_PROGRESS", raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("parent", "mode"),
    [
        ("/usr/bin/python3 -m papermill in.ipynb out.ipynb", "headless"),
        ("python -m pytest notebooks --nbval-lax", "headless"),
        ("jupyter-nbconvert --execute x.ipynb", "headless"),
        ("/venv/bin/python /venv/bin/jupyter-lab notebooks/", "widget"),
        ("/venv/bin/python /venv/bin/jupyter-lab --ServerApp.root_dir=/tmp/pytest-of-root/lab", "widget"),
    ],
)
def test_a_kernel_gets_a_widget_only_under_an_interactive_front_end(clean_env, parent, mode):
    clean_env.setattr(progress, "_in_kernel", lambda: True)
    clean_env.setattr(progress, "_kernel_parent_cmdline", lambda: parent)
    assert progress_mode() == mode


def test_ci_forced_and_redirected_modes(clean_env):
    clean_env.setattr(sys, "stderr", io.StringIO())  # not a terminal, not a kernel: a log file
    clean_env.setattr(progress, "_in_kernel", lambda: False)
    assert progress_mode() == "off"
    clean_env.setenv("FEDLIB_PROGRESS", "terminal")
    assert progress_mode() == "terminal"
    clean_env.setenv("FEDLIB_PROGRESS", "0")
    assert progress_mode() == "off"
    clean_env.delenv("FEDLIB_PROGRESS")
    clean_env.setenv("CI", "1")
    assert progress_mode() == "off" and bar(range(3)).disable


def test_a_process_that_merely_imported_ipykernel_is_not_a_kernel(clean_env):
    """pytest under nbval imports ipykernel: its own bars must not become widgets that nobody renders."""
    pytest.importorskip("ipykernel")

    clean_env.setattr(sys, "stderr", io.StringIO())
    assert not progress._in_kernel() and progress_mode() == "off"


def test_headless_bar_is_one_line_when_it_ends_and_inner_bars_are_silent(clean_env):
    clean_env.setenv("FEDLIB_PROGRESS", "headless")
    out = io.StringIO()
    for _ in bar(range(5000), desc="rounds", file=out):
        for _ in bar(range(3), desc="round clients", leave=False, file=out):
            pass
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rounds: 5000/5000 in ") and "\r" not in out.getvalue()
    counted = bar(total=10, desc="train", file=out)
    counted.update(4)
    counted.close()
    counted.close()  # closing twice writes once
    assert out.getvalue().splitlines()[1].startswith("train: 4/10 in ")


@pytest.mark.slow
def test_papermill_run_saves_a_text_bar_not_a_widget(tmp_path):
    """The README's headless command: papermill executes a notebook whose cell runs a fedlib bar."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    code = (
        "from fedlib.progress import bar, progress_mode\nprint(progress_mode())\n"
        "for _ in bar(range(3000)):\n    for _ in bar(range(2), leave=False): pass"
    )
    nb.cells = [nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, dst = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "FEDLIB_PROGRESS")}
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", str(src), str(dst), "--log-level", "WARNING"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs = json.loads(dst.read_text())["cells"][0]["outputs"]
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert text.startswith("headless") and "3000/3000" in text and "\r" not in text and "\x1b" not in text, text
    assert len(text.splitlines()) == 2, text  # the mode, then the bar's one line


def test_interact_draws_once_with_the_defaults_where_nobody_can_move_a_slider(clean_env):
    """fedlib.notebook.interact: a widget in JupyterLab, the function once with its defaults elsewhere."""
    from fedlib.notebook import interact

    calls = []
    clean_env.setenv("FEDLIB_PROGRESS", "headless")
    interact(lambda alpha=1.0: calls.append(alpha), alpha=(0.1, 10.0))
    assert calls == [1.0]
    clean_env.delenv("FEDLIB_PROGRESS")
    clean_env.setattr(progress, "_in_kernel", lambda: False)  # a plain script: no front end either
    interact(lambda alpha=2.0: calls.append(alpha), alpha=(0.1, 10.0))
    assert calls == [1.0, 2.0]
