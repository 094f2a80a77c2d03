"""The README runs as written: its Python blocks and every shell line a user would paste, each in a folder of its
own that holds the repository's files (so ``runs/...``, ``notebooks/...`` and ``benchmarks/...`` resolve as in a
clone), each checked for the file it promises. ``fedlib`` and ``.venv/bin/`` are this environment's. A line that
cannot run here is listed in :data:`NOT_RUN` with the reason; a new README line that is in neither list fails
:func:`test_every_readme_command_is_run_or_says_why_not`."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent

# command (as the README writes it, comment dropped) -> why CI does not run it here
NOT_RUN = {
    "make experiment": "the default experiment, 2-3 minutes: run by hand and measured in the README's table "
    "(tests/test_experiment.py runs the same code at its smallest size)",
    "make test": "this suite is make test",
    ".venv/bin/papermill notebooks/05_full_experiments.ipynb runs/paper_roberta_large.ipynb -f "
    "notebooks/params/paper_roberta_large.yaml": "paper scale: RoBERTa-large from the hub and a GPU "
    "(tests/test_notebooks.py checks that the parameter file makes valid configs)",
}


def blocks(lang: str) -> list[str]:
    """The README's fenced code blocks in ``lang``."""
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.M | re.S)


def shell_lines() -> list[str]:
    """Every command of the README's bash blocks, without its comment."""
    lines = [line.split("  #")[0].strip() for block in blocks("bash") for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


RUN = [line for line in shell_lines() if line not in NOT_RUN]


@pytest.fixture
def clone(tmp_path):
    """A folder that looks like the repository to a relative path, with an empty ``runs/``."""
    for entry in ROOT.iterdir():
        if entry.name not in ("runs", ".git"):
            (tmp_path / entry.name).symlink_to(entry)
    return tmp_path


def sh(line: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``line`` in a shell, in an environment like a user's: this environment's commands first on PATH, no CI
    variables (progress and figures as a user sees them)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "FEDLIB_PROGRESS", "MPLBACKEND")}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    line = re.sub(r"(?<![\w/.])\.venv/bin/", f"{BIN}/", line)  # the README's .venv is this environment
    proc = subprocess.run(line, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_every_readme_command_is_run_or_says_why_not():
    assert set(NOT_RUN) <= set(shell_lines()), set(NOT_RUN) - set(shell_lines())  # no stale exemption
    promised = {line: promised_file(line) for line in RUN}
    assert all(promised.values()), [line for line, path in promised.items() if not path]


def promised_file(line: str) -> str | None:
    """The file a command promises: ``--plot``'s figure, ``--out``'s results, papermill's output notebook."""
    if m := re.search(r"--plot (\S+)", line):
        return m.group(1)
    if line.startswith("fedlib run") and (m := re.search(r"--out (\S+)", line)):
        return f"{m.group(1)}/results.jsonl"
    if line.startswith("fedlib grid") and (m := re.search(r"--out (\S+)", line)):
        return f"{m.group(1)}/results.csv"
    if "papermill" in line:
        words = line.split()
        return words[next(i for i, w in enumerate(words) if w.endswith("papermill")) + 2]
    return None


@pytest.mark.parametrize("line", RUN, ids=lambda line: " ".join(line.split()[:2]))
def test_readme_shell_line_runs_and_writes_its_file(line, clone):
    proc = sh(line, clone)
    path = clone / promised_file(line)
    assert path.exists() and path.stat().st_size > 0, f"{line} did not write {path}\n{proc.stdout[-2000:]}"
    if line.startswith("fedlib partition"):  # the per-client table first, then where the plot went
        assert "plot: " in proc.stdout and re.search(r"^\s*0\s", proc.stdout, re.M), proc.stdout[-2000:]
    if line.startswith("fedlib run"):
        assert '"final_global_metric"' in proc.stdout and '"final_personal_iid_metric"' in proc.stdout
        assert '"majority_local_floor"' in proc.stdout
        assert ('"epsilon"' in proc.stdout) == ("--privacy.mode central" in line), proc.stdout[-2000:]
    if "papermill" in line:
        check_selection_notebook(path)


def check_selection_notebook(path: Path) -> None:
    """Notebook 02 as the README runs it (MR alone, via papermill's YAML parameter): the selection line names MR and
    its shared layers, no progress escape codes, and every figure and the summary table are in the saved notebook."""
    import nbformat

    cells = nbformat.read(path, as_version=4).cells
    text = "".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.outputs)
    assert "\r" not in text and "\x1b" not in text, text[:500]
    lines = re.findall(r"^(\w+): ranking \[[\d, ]+\], keep ratio [0-9.]+ -> share (\d) layers", text, flags=re.M)
    assert [task for task, _ in lines] == ["mr"], text[:2000]
    outputs = [o for c in cells for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5
    assert any("text/html" in o.get("data", {}) and "mr" in o["data"]["text/plain"] for o in outputs)


def test_readme_quick_start_runs_as_written(clone):
    """The quick start prints every view of both runs beside the floor, and saves the three views' figure."""
    (quick,) = [b for b in blocks("python") if "run_simulation" in b and "views_table" in b]
    proc = sh(f"python -c {quote(quick)}", clone)
    for name in ("fedavg", "fedpeptao", "majority_local"):
        assert name in proc.stdout, proc.stdout
    assert "personal_iid_metric" in proc.stdout and (clone / "runs" / "quick" / "curves.png").stat().st_size > 10_000


def test_readme_configuration_example_runs_as_written(clone):
    """The YAML example, saved as ``my.yaml`` as the text says, and the Python block that reads it."""
    (yaml_block,) = blocks("yaml")
    (code,) = [b for b in blocks("python") if "my.yaml" in b]
    (clone / "my.yaml").write_text(yaml_block)
    sh(f"python -c {quote(code)}", clone)
    assert (clone / "runs" / "mine" / "results.jsonl").exists()


def quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
