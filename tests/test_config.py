import pytest

from fedlib.config import ConfigError, ModelConfig, TrainConfig


@pytest.mark.parametrize(
    "cls,field,value,needle",
    [
        (TrainConfig, "lr", -1.0, "must be > 0"),
        (TrainConfig, "batch_size", 0, "must be >= 1"),
        (TrainConfig, "batch_size", 2.5, "expected int"),
        (TrainConfig, "lr", float("nan"), "expected float"),
        (TrainConfig, "optimizer", "adam", "one of 'adamw', 'sgd'"),
        (ModelConfig, "prompt_len", -3, "must be in [0, 512]"),
        (ModelConfig, "head", "svm", "one of"),
        (ModelConfig, "layer_roles", ("shared", "gone"), "each entry must be one of"),
        (ModelConfig, "prompt_dropout", 1.0, "must be in [0, 1)"),
    ],
)
def test_invalid_value_names_field_and_value(cls, field, value, needle):
    with pytest.raises(ConfigError) as err:
        cls(**{field: value})
    msg = str(err.value)
    section = {TrainConfig: "train", ModelConfig: "model"}[cls]
    assert f"{section}.{field}={value!r}" in msg and needle in msg


@pytest.mark.parametrize(
    "cfg", [TrainConfig(lr=1e-3, epochs=2), ModelConfig(prompt_len=5, layer_roles=("shared", "off"))]
)
def test_round_trip_json_and_yaml(cfg, tmp_path):
    cls = type(cfg)
    assert cls.from_json(cfg.to_json()) == cfg
    assert cls.from_yaml(cfg.to_yaml()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert cls.from_json(tmp_path / "c.json") == cfg


def test_unknown_key_is_an_error_listing_valid_fields():
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['lrr'\].*'lr'"):
        TrainConfig.from_dict({"lrr": 0.1})


def test_bad_json_and_yaml_are_config_errors():
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.from_json("{lr: ")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainConfig.from_yaml("lr: [1, 2\n")


def test_replace_validates_again():
    with pytest.raises(ConfigError, match="train.epochs=0"):
        TrainConfig().replace(epochs=0)


def test_sections_round_trip_with_the_strategys_own_fields():
    from fedlib.config import ExperimentConfig

    cfg = ExperimentConfig().with_strategy("fedyogi", server_lr=0.02)
    data = cfg.to_dict()
    assert data["strategy"] == {
        "name": "fedyogi",
        "server_lr": 0.02,
        "server_beta1": 0.9,
        "server_beta2": 0.99,
        "server_tau": 1e-3,
    }
    assert ExperimentConfig.from_yaml(cfg.to_yaml()) == cfg and ExperimentConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match=r"strategy 'fedavg' has no hyper-parameter\(s\) \['mu'\]"):
        ExperimentConfig.from_dict({"strategy": {"name": "fedavg", "mu": 0.1}})
    with pytest.raises(ConfigError, match=r"ExperimentConfig: unknown field\(s\) \['fedd'\]"):
        ExperimentConfig.from_dict({"fedd": {}})


def test_every_field_has_help():
    from fedlib.config import ExperimentConfig, config_reference
    from fedlib.configbase import describe
    from fedlib.strategies import STRATEGIES

    rows = describe(ExperimentConfig) + [r for cls in STRATEGIES.values() for r in describe(cls.Config)]
    assert all(help_.strip() for _, _, _, help_ in rows), [name for name, _, _, h in rows if not h.strip()]
    text = config_reference()
    assert "`fed.rounds`" in text and "`strategy.server_tau`" in text and "### `fedpeptao`" in text


def test_docs_config_md_is_current():
    from pathlib import Path

    from fedlib.config import config_reference

    path = Path(__file__).resolve().parent.parent / "docs" / "config.md"
    assert path.read_text() == config_reference(), "regenerate: python -m fedlib.cli docs > docs/config.md"


def test_command_line_sets_every_field_and_strategy_hyper_parameters(capsys):
    import argparse

    from fedlib.cli import add_config_arguments, apply_overrides, config_from_args
    from fedlib.config import ExperimentConfig

    parser = add_config_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "--fed.rounds",
            "3",
            "--strategy.name",
            "fedadam",
            "--strategy.server_tau",
            "1e-6",
            "--train.lr",
            "0.01",
            "--selection.shared_layers",
            "2",
            "--rounds",
            "4",
            "--model.layer_roles",
            "[shared, off, shared, off, shared, off]",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.fed.rounds, cfg.strategy.name, cfg.strategy.server_tau, cfg.train.lr) == (4, "fedadam", 1e-6, 0.01)
    assert cfg.selection.shared_layers == 2 and cfg.model.layer_roles == ("shared", "off") * 3
    with pytest.raises(ConfigError, match=r"strategy 'fedavg' has no hyper-parameter\(s\) \['server_tau'\]"):
        apply_overrides(ExperimentConfig(), {"strategy.server_tau": 0.1})
    with pytest.raises(ConfigError, match=r"fed: unknown field\(s\) \['round'\]"):
        apply_overrides(ExperimentConfig(), {"fed.round": 1})
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--fed.rounds" in out and "T, communication rounds" in out and "--strategy.server_momentum" in out


def test_with_overrides_changes_sections_and_replaces_a_named_strategy():
    from fedlib.config import ExperimentConfig

    base = ExperimentConfig().with_strategy("fedpeptao", server_lr=0.1)
    cfg = base.with_overrides({"selection": {"choose": "first"}, "strategy": {"server_momentum": 0.0}})
    assert (cfg.selection.choose, cfg.strategy.server_lr, cfg.strategy.server_momentum) == ("first", 0.1, 0.0)
    fresh = base.with_overrides({"strategy": {"name": "fedpeptao", "server_variant": "parallel"}})
    assert (fresh.strategy.server_lr, fresh.strategy.server_variant) == (0.05, "parallel")  # defaults again
    with pytest.raises(ConfigError, match="selection.choose='best' is invalid"):
        base.with_overrides({"selection": {"choose": "best"}})
    with pytest.raises(ConfigError, match="'sel' must be a config section"):
        base.with_overrides({"sel": {"choose": "first"}})


def test_the_evaluation_schedule_is_one_rule():
    """FedConfig.evaluates: the global view every eval_every rounds and after the last; the personalised views (and
    the whole eval set) every personal_eval_every rounds of those and after the last; 0 means at every evaluation."""
    from fedlib.config import FedConfig

    fed = FedConfig(rounds=7, eval_every=2, personal_eval_every=4)
    assert [fed.evaluates(t) for t in range(7)] == [
        (False, False), (True, False), (False, False), (True, True), (False, False), (True, False), (True, True)
    ]  # fmt: skip
    assert all(FedConfig(rounds=3, eval_every=1).evaluates(t) == (True, True) for t in range(3))
    assert [FedConfig(rounds=3, eval_every=0).evaluates(t) for t in range(3)] == [(False, False)] * 2 + [(True, True)]
