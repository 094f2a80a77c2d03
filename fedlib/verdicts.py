"""The claims a protocol holds a method to, with their numbers and verdicts, generated from its results CSV.

A protocol lists its claims (``claims:`` in its YAML), each one comparison of FedPepTAO with another row on one
view, or one byte ratio:

    claims:
      - {claim: "more accurate than FedAvg on all layers", vs: fedavg, view: global_metric}
      - {claim: "at most half FedAvg's bytes", vs: fedavg, bytes: 0.5}
      - {claim: "loses at most one point to FedAvg", vs: fedavg, view: auc, margin: 0.01}

:func:`claims_table` gives, per claim and task, the paired difference (mean ± 95% CI over seeds, seeds ahead) and its
Holm-adjusted p-value, adjusted over the protocol's whole family of comparisons
(:func:`fedlib.grid_tables.paired_table`: FedPepTAO against every other row, task and view), and a verdict: ``ahead`` or
``behind`` when the adjusted p-value is below 0.05 (the family's error rate held at 5%), else ``no difference shown``
(the interval may still exclude zero: then it is exploratory, one of many comparisons). A byte claim gives FedPepTAO's
mean bytes per run over the other row's, with and without layer selection's, against the stated bound.
:func:`claims_markdown` renders it; the results page and README carry that text, and ``tests/test_results_docs.py``
checks that they match the committed CSVs.
"""

from __future__ import annotations

import pandas as pd

from .grid_tables import paired_table
from .stats import holds, p_text

__all__ = ["claims_table", "claims_markdown", "verdict"]


def verdict(diff: float, p_holm: float, level: float = 0.95, ci: float = float("nan"), margin=None) -> str:
    """``ahead`` / ``behind`` when the Holm-adjusted p-value is below 1 - level, else ``no difference shown``. With a
    ``margin`` (a non-inferiority claim: "loses at most ``margin``"): ``within the margin`` when the paired 95%
    interval's lower end ``diff - ci`` lies above ``-margin``, ``beyond the margin`` when its upper end lies below it,
    else ``not shown`` (the interval is the comparison's own, not Holm-adjusted: the page says so)."""
    if margin is not None:
        if diff - ci > -margin:
            return "within the margin"
        return "beyond the margin" if diff + ci < -margin else "not shown"
    if holds(p_holm, level):
        return "ahead" if diff > 0 else "behind"
    return "no difference shown"


def _bytes_cells(table: pd.DataFrame, method: str, claim: dict) -> dict:
    means = table.groupby(["task", "strategy"])[["bytes_total", "selection_bytes"]].mean()
    cells = {}
    for task in dict.fromkeys(table["task"]):
        if (task, method) not in means.index or (task, claim["vs"]) not in means.index:
            continue
        mine, other = means.loc[(task, method)], means.loc[(task, claim["vs"])]
        total = mine["bytes_total"] / other["bytes_total"]
        rounds = (mine["bytes_total"] - mine["selection_bytes"]) / (other["bytes_total"] - other["selection_bytes"])
        holds = "yes" if total <= claim["bytes"] + 1e-12 else "no"
        cells[task] = (f"{total:.2f}x with selection, {rounds:.2f}x without", holds)
    return cells


def claims_table(table: pd.DataFrame, claims: list[dict], method: str = "fedpeptao") -> pd.DataFrame:
    """One row per claim and task: ``claim``, ``task``, ``numbers`` and ``verdict`` (module docstring)."""
    paired = paired_table(table, method)
    rows = []
    for claim in claims:
        if "bytes" in claim:
            for task, (numbers, holds) in _bytes_cells(table, method, claim).items():
                rows.append({"claim": claim["claim"], "task": task, "numbers": numbers, "verdict": holds})
            continue
        view = claim.get("view", "global_metric")
        found = paired[(paired["vs"] == claim["vs"]) & (paired["view"] == view)] if len(paired) else paired
        for r in found.to_dict("records"):
            numbers = f"{r['diff ± CI']}, {r['wins']}/{r['seeds']} seeds ahead, p_holm {p_text(r['p_holm'])}"
            margin = claim.get("margin")
            if margin is not None:
                numbers += f", margin {margin}"
            rows.append(
                {
                    "claim": claim["claim"],
                    "task": r["task"],
                    "numbers": numbers,
                    "verdict": verdict(r["diff"], r["p_holm"], ci=r["ci"], margin=margin),
                }
            )
    return pd.DataFrame(rows, columns=["claim", "task", "numbers", "verdict"])


def claims_markdown(table: pd.DataFrame, claims: list[dict], method: str = "fedpeptao") -> str:
    """The claims as a markdown table: one line per claim, one cell per task (numbers; verdict)."""
    rows = claims_table(table, claims, method)
    tasks = list(dict.fromkeys(table["task"]))
    lines = ["| claim | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for claim in dict.fromkeys(rows["claim"]):
        mine = rows[rows["claim"] == claim].set_index("task")
        cells = [f"{mine.loc[t, 'numbers']}: **{mine.loc[t, 'verdict']}**" if t in mine.index else "—" for t in tasks]
        lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
