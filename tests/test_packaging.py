"""The project's set-up promises: dependency lists agree, notebooks are stored clean, CI = README."""

import json
import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pip = [p for p in pip if not p.startswith("-e")]
    py = {_name(r): r for r in reqs}
    conda = {_name(r): r for r in pip}
    assert set(py) == set(conda)
    for name, req in py.items():
        if name != "torch":  # torch: a range in pyproject (keeps a user's CUDA build), an exact pin for conda
            assert req.replace(" ", "") == conda[name].replace(" ", ""), name
    assert conda["torch"] == "torch==2.13.0"
    assert "TORCH_VERSION ?= 2.13.0" in (ROOT / "Makefile").read_text()


def test_notebooks_are_committed_without_outputs():
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        for cell in cells:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, f"{nb.name} has outputs"


def test_ci_runs_exactly_the_readme_test_command():
    ci = [
        l for l in (ROOT / ".ci/run").read_text().splitlines() if l.strip() and not l.startswith(("#", "set ", "cd "))
    ]
    assert ci == ["make test"]
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make experiment" in readme


def test_no_pickle_in_the_library():
    for path in (ROOT / "fedlib").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import pickle|from pickle|import dill)", text, re.M), path
        assert "weights_only=False" not in text, path
