"""Grid summaries: means over seeds and FedPepTAO's deltas, on a hand-made results table."""

import json

import pandas as pd
import pytest

from fedlib.benchmark import fedpeptao_deltas, mean_histories, mean_table


def _table():
    rows = []
    for seed, (fa, fp, lo) in enumerate([(0.70, 0.80, 0.75), (0.60, 0.70, 0.85)]):
        for name, metric, nbytes, rtt in [
            ("fedavg", fa, 1000.0, 4.0),
            ("fedpeptao", fp, 500.0, 2.0),
            ("lora", lo, 3000.0, 6.0),
        ]:
            rows.append(
                {
                    "task": "sst2",
                    "strategy": name,
                    "seed": seed,
                    "final_metric": metric,
                    "best_metric": metric,
                    "bytes_per_round": nbytes,
                    "seconds_per_round": 1.0,
                    "rounds_to_target": rtt,
                }
            )
    return pd.DataFrame(rows)


def test_mean_table_averages_seeds():
    mean = mean_table(_table()).set_index("strategy")
    assert mean.loc["fedavg", "final_metric"] == pytest.approx(0.65)
    assert mean.loc["lora", "final_metric"] == pytest.approx(0.80)
    assert (mean["seeds"] == 2).all() and (mean["reached"] == 2).all()
    assert list(mean.index) == ["fedavg", "fedpeptao", "lora"]


def test_fedpeptao_deltas():
    d = fedpeptao_deltas(_table()).iloc[0]
    assert d["best_baseline"] == "lora"
    assert d["minus_fedavg"] == pytest.approx(0.75 - 0.65)
    assert d["minus_best_baseline"] == pytest.approx(0.75 - 0.80)
    assert d["bytes_ratio"] == pytest.approx(0.5)
    assert d["rounds_to_target_ratio"] == pytest.approx(0.5)


def test_mean_histories_over_seeds(tmp_path):
    for seed, metrics in enumerate([[None, 0.5], [None, 0.7]]):
        run = tmp_path / "sst2" / f"seed{seed}" / "fedavg"
        run.mkdir(parents=True)
        run.joinpath("results.jsonl").write_text(
            "".join(
                json.dumps({"round": r + 1, "personal_metric": m, "global_metric": m, "cum_bytes": 100 * (r + 1)})
                + "\n"
                for r, m in enumerate(metrics)
            )
        )
    h = mean_histories(tmp_path, "sst2", [0, 1])["fedavg"]
    assert h["personal_metric"].isna().iloc[0]
    assert h["personal_metric"].iloc[1] == pytest.approx(0.6)
    assert h["cum_bytes"].tolist() == [100, 200]
