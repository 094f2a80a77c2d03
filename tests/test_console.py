"""The ``fedlib`` command: every subcommand parses its options from the typed configs and calls the library."""

import json
import re
from pathlib import Path

import pytest

from fedlib.console import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent


def test_the_command_is_installed_with_the_package():
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib needs Python 3.11; the project supports 3.10)
    scripts = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^fedlib = "fedlib\.console:main"$', scripts, re.M)


def test_no_command_lists_them_and_an_unknown_one_fails(capsys):
    main([])
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    with pytest.raises(SystemExit) as err:
        main(["trian"])
    assert err.value.code == 2 and "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "experiment", "grid", "partition"])
def test_help_is_generated_from_the_configs(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert f"fedlib {command}" in out
    assert not re.search(r":(mod|func|class|data|meth):`|``", out), out  # plain text, not Sphinx markup
    if command != "grid":
        assert "--strategy.server_variant" in out and "--selection.count_rule" in out


def test_config_show_applies_flags(capsys):
    main(["config", "show", "--fed.rounds", "3", "--strategy.name", "fedpeptao", "--strategy.correction_scale", "0.5"])
    out = capsys.readouterr().out
    assert "rounds: 3" in out and "correction_scale: 0.5" in out


def test_partition_prints_sizes_saves_json_and_plots(tmp_path, capsys):
    args = [
        "--task",
        "rte",
        "--num-clients",
        "4",
        "--clients-per-round",
        "2",
        "--train-limit",
        "80",
        "--eval-limit",
        "40",
    ]
    plot = tmp_path / "not" / "yet" / "p.png"  # folders are created, as for runs/ on a fresh clone
    main(["partition", *args, "--save", str(tmp_path / "p.json"), "--plot", str(plot)])
    out = capsys.readouterr().out
    assert "entailment" in out and plot.stat().st_size > 0
    part = json.loads((tmp_path / "p.json").read_text())
    assert part["num_clients"] == 4 and sum(len(s) for s in part["train"]) == 80


def test_run_trains_and_reports_the_three_views(tmp_path, capsys):
    args = ["--task", "rte", "--num-clients", "2", "--clients-per-round", "2", "--rounds", "1", "--train-limit", "16"]
    main(["run", *args, "--eval-limit", "8", "--model.prompt_len", "2", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    summary = json.loads(out[: out.rindex("}") + 1])
    assert 0 <= summary["final_global_metric"] <= 1 and (tmp_path / "r" / "results.jsonl").exists()
    assert set(summary["majority_local_floor"]) == {"global_metric", "personal_metric", "personal_iid_metric"}


def test_null_on_the_command_line_clears_what_a_config_file_set(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("model: {attn_implementation: eager}\ndata: {data_dir: /tmp/somewhere}\nfed: {rounds: 7}\n")
    main(["config", "show", "--config", str(path), "--model.attn_implementation", "null", "--data.data_dir", "null"])
    out = capsys.readouterr().out
    assert "attn_implementation: null" in out and "data_dir: null" in out and "rounds: 7" in out  # the rest kept


def test_the_experiment_refuses_a_strategy_it_would_not_run():
    from fedlib.configbase import ConfigError
    from fedlib.experiment import main as experiment

    with pytest.raises(ConfigError, match="strategy.name='fedprox' .* not among --strategies fedavg,fedpeptao"):
        experiment(["--strategy.name", "fedprox", "--strategy.mu", "0.5"])
