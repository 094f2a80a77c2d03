import math

import pandas as pd

from fedlib.experiment import main
from fedlib.report import markdown_table, rounds_to_target, summarize


def test_default_experiment_cli_writes_table_and_plot(tmp_path, capsys):
    table = main(
        [
            "--rounds",
            "2",
            "--num-clients",
            "3",
            "--clients-per-round",
            "2",
            "--train-limit",
            "48",
            "--eval-limit",
            "32",
            "--out",
            str(tmp_path),
        ]
    )
    assert table["strategy"].tolist() == ["fedavg", "fedpeptao"]
    assert (tmp_path / "results.csv").exists() and (tmp_path / "accuracy_per_round.png").stat().st_size > 10_000
    assert (tmp_path / "fedpeptao" / "selection.json").exists()
    fedavg, fedpeptao = table.set_index("strategy").loc[["fedavg", "fedpeptao"], "bytes_per_round"]
    assert fedpeptao < fedavg  # fewer shared layers travel
    assert "| fedpeptao |" in capsys.readouterr().out


def test_summary_numbers():
    h = pd.DataFrame(
        {
            "round": [1, 2, 3],
            "personal_metric": [0.5, float("nan"), 0.8],
            "global_metric": [0.4, None, 0.7],
            "bytes_up": [10, 10, 10],
            "bytes_down": [20, 20, 20],
            "cum_bytes": [30, 60, 90],
            "seconds_client": [1.0, 1.0, 1.0],
            "seconds_aggregate": [0.5, 0.5, 0.5],
            "cum_seconds": [1.5, 3.0, 4.5],
            "failed": [0, 1, 0],
        }
    )
    s = summarize(h, target=0.7)
    assert (s["final_personal_metric"], s["best_global_metric"], s["final_global_metric"]) == (0.8, 0.7, 0.7)
    assert "final_metric" not in s  # no number without its view
    assert (s["bytes_per_round"], s["seconds_per_round"], s["failed_clients"]) == (30, 1.5, 1)
    assert (s["rounds_to_target"], s["seconds_to_target"]) == (3, 4.5)
    assert all(math.isnan(v) for v in rounds_to_target(h, 0.9))  # never reached
    assert markdown_table(pd.DataFrame({"a": [1.23456], "b": ["x"]})).splitlines()[2] == "| 1.2346 | x |"
