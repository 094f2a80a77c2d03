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
    assert f"{cls.__name__}.{field}={value!r}" in msg and needle in msg


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
    with pytest.raises(ConfigError, match="TrainConfig.epochs=0"):
        TrainConfig().replace(epochs=0)
