"""The notebooks' numbers are sane, each notebook executing once per ``make test``.

``make test`` runs ``pytest notebooks tests --nbval-lax``: nbval executes every committed notebook first (its
job: the notebook as shipped runs top to bottom in a fresh kernel, with no error), each writing its
``summary.json`` to its default ``out_dir`` (under ``notebooks/runs/``). The checks below read those
summaries when they were written in this session; run on their own (``pytest tests/test_notebooks.py``),
they execute the notebook with papermill instead. papermill's own job is the parameter variant:
a notebook run with injected parameters whose effect is checked.
"""

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SESSION_START = time.time()
pytestmark = pytest.mark.slow


def test_the_sequence_is_complete():
    assert NOTEBOOKS == [
        "00_overview",
        "01_non_iid_partitioning",
        "02_layer_selection_scoring",
        "03_client_drift",
        "04_adaptive_optimizers",
        "05_full_experiments",
        "06_privacy",
    ]


def test_notebooks_follow_the_template():
    """Title, learning goals, the ``parameters`` cell first among code cells, ``fedlib.notebook``'s ``setup`` and
    ``save_summary`` instead of copied set-up and summary code, a "What to see" after every figure, a summary and
    exercises whose papermill commands name parameters the notebook has."""
    import re

    import nbformat

    for name in NOTEBOOKS:
        cells = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells
        assert cells[0].source.startswith("# ") and cells[1].source.startswith("## Learning goals"), name
        code = [c for c in cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []) and "out = setup(out_dir)" in code[1].source, name
        source = "\n".join(c.source for c in code)
        assert re.search(r"save_summary\(\s*out", source) and "summary.json" not in source, name
        assert not re.search(r"basicConfig|set_num_threads|HF_HUB_OFFLINE", source), name
        for i, cell in enumerate(cells[:-1]):
            if cell.cell_type == "code" and ("savefig" in cell.source or "plt.show" in cell.source):
                assert cells[i + 1].source.startswith("**What to see.**"), f"{name}: no 'What to see' after cell {i}"
        assert cells[-2].source.startswith("## Summary") and cells[-1].source.startswith("## Exercises"), name
        named = set(re.findall(r"-p (\w+) ", cells[-1].source)) | set(re.findall(r'-y "(\w+):', cells[-1].source))
        assert named and named <= set(parameters(name)), (name, named - set(parameters(name)))


def parameters(name: str) -> dict:
    """The notebook's ``parameters`` cell, evaluated."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values: dict = {}
    exec(cell.source, {}, values)
    return values


def papermill_run(name: str, out: Path, **params) -> dict:
    import papermill as pm

    old = os.environ.get("FEDLIB_PROGRESS")
    os.environ["FEDLIB_PROGRESS"] = "headless"  # as papermill shows it to a user, CI or not
    try:
        pm.execute_notebook(
            str(ROOT / "notebooks" / f"{name}.ipynb"),
            str(out / f"{name}.ipynb"),
            parameters={"out_dir": str(out), **params},
            cwd=str(ROOT / "notebooks"),
            progress_bar=False,
            kernel_name="python3",
        )
    finally:
        os.environ.pop("FEDLIB_PROGRESS") if old is None else os.environ.__setitem__("FEDLIB_PROGRESS", old)
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module", params=NOTEBOOKS)
def executed(request, tmp_path_factory):
    """(name, output folder, summary, executed notebook): nbval's run of this session (its outputs written back by
    tests/conftest.py), else a papermill run now."""
    name = request.param
    out = ROOT / "notebooks" / parameters(name)["out_dir"]
    summary, nb = out / "summary.json", ROOT / "notebooks" / "runs" / "executed" / f"{name}.ipynb"
    if summary.exists() and summary.stat().st_mtime >= SESSION_START and nb.exists():
        return name, out, json.loads(summary.read_text()), nb
    out = tmp_path_factory.mktemp(name)
    return name, out, papermill_run(name, out), out / f"{name}.ipynb"


def test_notebook_runs_and_its_numbers_are_sane(executed):
    name, out, s, _ = executed
    assert list(out.glob("*.png")), f"{name} saved no figure"
    CHECKS[name](s, out)


def _images(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def test_executed_notebook_shows_every_figure_and_no_progress_noise(executed):
    """Run headless, as papermill or nbval runs it: every slider cell (``fedlib.notebook.interact``) still draws its
    figure, every "What to see" has a figure above it, and progress is at most one plain line per run (no carriage
    returns or cursor moves left in the outputs)."""
    import nbformat

    name, _, _, path = executed
    cells = nbformat.read(path, as_version=4).cells
    for i, cell in enumerate(cells):
        if cell.cell_type == "code" and "interact(" in cell.source:
            assert _images(cell), f"{name}: the slider cell {i} left no figure"
        if cell.cell_type == "markdown" and cell.source.startswith("**What to see.**"):
            above = next(c for c in reversed(cells[:i]) if c.cell_type == "code")
            assert _images(above), f"{name}: no figure above 'What to see' (cell {i})"
        text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
        assert "\r" not in text and "\x1b" not in text, f"{name}: progress escape codes in cell {i}: {text[:300]!r}"
        bars = re.findall(r"^.+: \d+(?:/\d+)? in [0-9.]+ s$", text, flags=re.M)
        assert len(bars) <= PROGRESS_LINES.get(name, 10), f"{name}: {len(bars)} progress lines in cell {i}"


# progress lines a notebook's busiest cell may print: one per run (03: 5 strategies x 3 seeds; 04: 8 runs; 06: 3
# strategies x 3 settings x 3 seeds, local_only's 3, and the utility grid's own line)
PROGRESS_LINES = {"03_client_drift": 15, "04_adaptive_optimizers": 8, "06_privacy": 37}


def _overview(s, out):
    per_layer = 8 * 2 * 384 * 4  # P x 2 x d floats
    assert s["num_layers"] == 6 and s["frozen_parameters"] == 22_713_216
    assert s["bytes_per_role"] == {
        "shared": 3 * per_layer + (384 * 2 + 2) * 4,
        "personal": 2 * per_layer,
        "off": per_layer,
    }


def _partitioning(s, out):
    assert set(s["sizes_total"].values()) == {s["num_examples"]} == {67349}
    assert set(s["eval_total"].values()) == {s["num_eval"]} == {872}
    e = s["entropy"]
    a = s["alphas"]
    assert e[f"dirichlet a={a[0]}"] < e[f"dirichlet a={a[1]}"] < e[f"dirichlet a={a[2]}"] <= e["iid"] + 1e-9
    assert e[f"reference a={a[0]}"] < e[f"reference a={a[2]}"]


def _scoring(s, out):
    for r in s.values():
        assert sorted(r["ranking"]) == list(range(6))
        assert min(r["scores"]) >= r["score_batch"] - 1e-6  # s >= B always
        assert 1 <= r["k"] <= 6 and r["chosen"] == sorted(r["ranking"][: r["k"]])
        assert 0.0 <= r["ratio"] <= 1.0
        assert 1 <= r["trace_count"] <= 6 and len(r["traces"]) == 6 and max(abs(t) for t in r["traces"]) > 0
        assert r["rescored_ranking"] == r["ranking"]  # the widget's scoring at the default B is the run's


def _drift(s, out):
    assert len(s["mean_drift"]) == 5 and len(s["seeds"]) >= 3
    assert all(np.isfinite(v) and v > 0 for v in s["mean_drift"].values())
    assert all(-1 <= v <= 1 for v in s["mean_cosine"].values())
    for view in s["views"].values():  # five strategies and the floor, each view
        assert len(view) == 6 and all(0 <= v <= 1 for v in view.values())
    assert s["at_or_below_floor"]["majority_local"] == "" and set(s["drift_minus_fedavg"]) == set(s["mean_drift"]) - {
        "fedavg"
    }


def _optimizers(s, out):
    assert s["quadratic_corrected_beats_fedavg"] >= 0.5 and (out / "results.csv").exists()
    for view in ("final_global_metric", "final_personal_metric", "final_personal_iid_metric"):
        assert len(s[view]) == 9 and all(0 <= v <= 1 for v in s[view].values()), view  # 8 runs and the floor
        assert "majority_local (floor, no model)" in s[view]


def _full(s, out):
    rows = {(r["strategy"], r["seed"]): r for r in s["rows"]}
    assert set(rows) == {(n, seed) for n in s["strategies"] for seed in s["seeds"]}
    assert (out / "results.csv").exists() and (out / "results.md").exists()
    views = ("global_metric", "personal_metric", "personal_iid_metric")
    assert all(0 <= r[v] <= 1 for r in s["rows"] for v in views)
    for seed in s["seeds"]:
        pep, sel = rows["fedpeptao", seed], rows["fedavg_selected", seed]
        assert pep["bytes_per_round"] == sel["bytes_per_round"]  # the same selected layers travel
        assert pep["selection_bytes"] > 0 and pep["bytes_total"] > pep["selection_bytes"]
        assert rows["majority_local", seed]["bytes_total"] == 0
    committed = ROOT / "results" / "paper-shape.csv"  # section 4 draws the committed protocol's curves and claims
    assert s["committed_rows"] == (len(pd.read_csv(committed)) if committed.exists() else 0)


def _privacy(s, out):
    """The accountant's figures for N = 100, m = 10, 100 rounds (z = 2: 2.6 with sampling, 35 without), epsilon
    falling with N at the same noise, every utility row a real run with its epsilon, the noise's norm near
    z C sqrt(d) / (qN)."""
    last = {r["z"]: r for r in s["epsilon_last"]}
    assert last[2.0]["rdp"] == pytest.approx(2.58, abs=0.01) and last[2.0]["no_amplification"] > 30
    assert all(r["prv"] < r["rdp"] < r["no_amplification"] for r in last.values())
    for z in {r["z"] for r in s["scale"]}:
        eps = [r["epsilon"] for r in sorted(s["scale"], key=lambda r: r["N"]) if r["z"] == z]
        assert eps == sorted(eps, reverse=True), eps
    rows = s["rows"]
    private = [r for r in rows if r["epsilon"] is not None and r["z"] == r["z"]]
    assert private and all(0 < r["epsilon"] < 100 for r in private)
    assert {r["strategy"] for r in rows} >= {"fedavg", "fedavg_selected", "shallow", "local_only", "majority_local"}
    assert all(0 <= r["personal_iid_metric"] <= 1 for r in rows)
    assert s["update_norm_median"] > 0
    for r in s["noise_to_signal"]:
        assert r["noise_over_signal"] > 1 and r["clipped_fraction"] >= 0
    assert (out / "utility.png").exists() and (out / "epsilon.png").exists()


CHECKS = {
    "00_overview": _overview,
    "01_non_iid_partitioning": _partitioning,
    "02_layer_selection_scoring": _scoring,
    "03_client_drift": _drift,
    "04_adaptive_optimizers": _optimizers,
    "05_full_experiments": _full,
    "06_privacy": _privacy,
}


def test_papermill_parameter_variant(tmp_path):
    """papermill injects parameters: notebook 00 with P = 4 reports half the default's bytes per prompt layer."""
    s = papermill_run("00_overview", tmp_path, prompt_len=4)
    per_layer = 4 * 2 * 384 * 4
    assert s["prompt_len"] == 4
    assert s["bytes_per_role"] == {
        "shared": 3 * per_layer + (384 * 2 + 2) * 4,
        "personal": 2 * per_layer,
        "off": per_layer,
    }


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks" / "params").glob("*.yaml")), ids=lambda p: p.stem)
def test_paper_parameter_files_name_only_parameters_of_notebook_05(path):
    from fedlib.config import (
        DataConfig,
        ExperimentConfig,
        FedConfig,
        ModelConfig,
        PartitionConfig,
        SelectionConfig,
        TrainConfig,
    )
    from fedlib.configbase import yaml_load

    names = set(parameters("05_full_experiments"))
    params = yaml_load(path.read_text())
    assert set(params) <= names, set(params) - names
    # the values make valid configs (every field is validated on construction), as the notebook builds them
    base = ExperimentConfig(
        model=ModelConfig(
            name=params["model_name"],
            head=params["head"],
            prompt_len=params["prompt_len"],
            max_length=params["max_length"],
        ),
        train=TrainConfig(batch_size=params["batch_size"], lr=params["lr"], epochs=params["local_epochs"]),
        fed=FedConfig(
            num_clients=params["num_clients"],
            clients_per_round=params["clients_per_round"],
            rounds=params["rounds"],
            eval_every=params["eval_every"],
        ),
        data=DataConfig(train_limit=params["train_limit"], eval_limit=params["eval_limit"]),
        partition=PartitionConfig(method=params["partition"], alpha=params["alpha"]),
        selection=SelectionConfig(shared_layers=params["shared_layers"]),
    )
    for s in params["strategies"]:
        base.with_strategy(s)
    assert params["num_clients"] == 100 and params["clients_per_round"] == 10 and params["rounds"] == 100
