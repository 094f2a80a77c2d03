"""The numbers the docs state about committed results come from the committed CSVs: the generated tables and claims
on docs/results.md and README match what the CSVs give today, and the multiple-comparison statistics are right."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedlib.benchmark import COLUMNS
from fedlib.configbase import yaml_load
from fedlib.grid_tables import paired_table, view_table
from fedlib.protocol import grid_slices, protocol_rows
from fedlib.report import markdown_table
from fedlib.stats import holds, holm, paired_pvalue
from fedlib.verdicts import claims_markdown, verdict

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = [
    p
    for p in sorted((ROOT / "benchmarks" / "protocols").glob("*.yaml"))
    if (ROOT / "results" / f"{p.stem}.csv").exists()
]


def _table(path: Path) -> tuple[dict, pd.DataFrame]:
    proto = yaml_load(path.read_text())
    csv = pd.read_csv(ROOT / "results" / f"{path.stem}.csv").reindex(columns=COLUMNS)
    return proto, protocol_rows(csv, grid_slices(proto))


@pytest.mark.parametrize("path", PROTOCOLS, ids=lambda p: p.stem)
def test_the_results_page_shows_what_the_committed_csv_gives(path):
    proto, table = _table(path)
    page = (ROOT / "docs" / "results.md").read_text()
    section = page.split(f"<!-- results:{path.stem}:begin -->")[1].split(f"<!-- results:{path.stem}:end -->")[0]
    assert markdown_table(view_table(table)) in section
    if proto.get("claims"):
        claims = claims_markdown(table, proto["claims"])
        assert claims in section
        readme = (ROOT / "README.md").read_text()
        if f"<!-- claims:{path.stem}:begin -->" in readme:
            assert claims in readme.split(f"<!-- claims:{path.stem}:begin -->")[1].split("<!-- claims:")[0]


def test_holm_adjusts_a_family_step_down():
    p = [0.01, 0.04, 0.03, np.nan, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4 x 0.005, 3 x 0.01, 2 x 0.03, 1 x 0.04 (running maximum)
    assert np.allclose(holm(p), [0.03, 0.06, 0.06, np.nan, 0.02], equal_nan=True)
    assert holm([0.5, 0.9])[1] == 1.0  # capped at 1 (min(1, 2 x 0.9)), and never below an earlier one
    five = holm([0.01] * 5)  # exactly 0.05 after the adjustment: "below 0.05" does not hold
    assert five[0] == 0.05 and not holds(five[0]) and holds(0.0499) and verdict(0.02, five[0]) == "no difference shown"


def test_paired_pvalue_is_the_t_test_behind_the_interval():
    from scipy import stats

    d = [0.02, 0.01, 0.03, -0.005, 0.015]
    assert paired_pvalue(d) == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
    assert paired_pvalue([0.0, 0.0, 0.0]) == 1.0 and np.isnan(paired_pvalue([0.1]))
    assert verdict(0.02, 0.01) == "ahead" and verdict(-0.02, 0.01) == "behind"
    assert verdict(0.02, 0.2) == "no difference shown" and verdict(0.02, np.nan) == "no difference shown"
    # a non-inferiority claim reads the interval against the margin
    assert verdict(-0.004, 0.5, ci=0.005, margin=0.01) == "within the margin"
    assert verdict(-0.03, 0.01, ci=0.01, margin=0.01) == "beyond the margin"
    assert verdict(-0.01, 0.5, ci=0.02, margin=0.01) == "not shown"


def test_the_family_is_the_whole_paired_table():
    rows = [
        {"task": "sst2", "strategy": s, "seed": seed, "global_metric": m + 0.01 * seed}
        for seed in range(5)
        for s, m in (("fedpeptao", 0.8), ("fedavg", 0.7), ("scaffold", 0.79))
    ]
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    table.loc[table.strategy == "scaffold", "global_metric"] += [0.01, -0.02, 0.015, 0.0, -0.01]
    paired = paired_table(table)
    assert list(paired["vs"]) == ["fedavg", "scaffold"]
    assert np.allclose(paired["p_holm"], holm(paired["p"]))
    assert list(paired["holds"]) == ["yes", "no"]  # 0.1 on every seed holds; scaffold's noise does not


def test_the_density_rule_chose_half_the_layers_in_every_run_that_used_it():
    """docs/method.md, "How many layers: the default": the reason the default is a fixed half."""
    proto, table = _table(ROOT / "benchmarks" / "protocols" / "ablation-cpu-medium.yaml")
    assert proto["experiment"]["selection"]["share_ratio"] == 0.0  # the Hessian criterion decided k in this protocol
    other_k = {"fedpeptao_all_layers", "fedpeptao_trace_k"}  # a fixed ratio 1.0; the trace rule
    selected = table[table.strategy.str.startswith("fedpeptao") | (table.strategy == "fedavg_selected")]
    density = selected[~selected.strategy.isin(other_k)]
    assert len(density) == 9 * 3 * 5 and (density["shared_layers"] == 3).all()  # 9 rows, 3 tasks, 5 seeds: 3 of 6
    mean = table.groupby("strategy")[["selection_bytes", "bytes_total"]].mean()
    hessian_phase = mean.loc["fedpeptao", "selection_bytes"] - mean.loc["fedpeptao_all_layers", "selection_bytes"]
    assert 0.18 < hessian_phase / mean.loc["fedpeptao", "bytes_total"] < 0.25  # "about a fifth" (the scores aside)
