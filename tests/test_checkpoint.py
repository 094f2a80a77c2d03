import pytest
import torch

from fedlib.checkpoint import CheckpointError, load_prompt, read_header, save_prompt
from fedlib.classifier import PromptClassifier
from fedlib.config import ModelConfig
from fedlib.tasks import get_task


def _model(backbone, **kw):
    return PromptClassifier(backbone, get_task(kw.pop("task", "sst2")), ModelConfig(**{"prompt_len": 4, **kw}))


def test_round_trip_restores_every_tensor(bundled_backbone, tmp_path):
    a = _model(bundled_backbone)
    path = save_prompt(tmp_path / "p.safetensors", a)
    b = _model(bundled_backbone)
    header = load_prompt(path, b)
    assert header["model"] == "bundled" and header["prompt_len"] == 4 and header["task"] == "sst2"
    assert all(torch.equal(v, b.state()[k]) for k, v in a.state().items())


def test_shared_role_file_holds_only_shared_tensors(bundled_backbone, tmp_path):
    a = _model(bundled_backbone, layer_roles=("shared", "personal") * 3)
    path = save_prompt(tmp_path / "s.safetensors", a, role="shared")
    from safetensors.torch import load_file

    assert sorted(load_file(str(path))) == sorted(a.state("shared"))
    assert read_header(path)["role"] == "shared"


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"prompt_len": 5}, "prompt_len is 4 in the file but 5"),
        ({"task": "trec"}, "task is 'sst2' in the file but 'trec'"),
        ({"task": "boolq"}, "task is 'sst2' in the file but 'boolq'"),  # two labels as well: the task tells them apart
    ],
)
def test_other_shape_or_task_is_refused_before_loading(bundled_backbone, tmp_path, change, needle):
    path = save_prompt(tmp_path / "p.safetensors", _model(bundled_backbone))
    other = _model(bundled_backbone, **change)
    before = other.state()
    with pytest.raises(CheckpointError, match=needle):
        load_prompt(path, other)
    assert all(torch.equal(v, other.state()[k]) for k, v in before.items())  # nothing loaded half-way


def test_tensor_with_no_place_is_refused(bundled_backbone, tmp_path):
    path = save_prompt(tmp_path / "p.safetensors", _model(bundled_backbone))
    other = _model(bundled_backbone, layer_roles=("off",) + ("shared",) * 5)
    with pytest.raises(CheckpointError, match="'prompt.layer.0' is not a trainable tensor of this model"):
        load_prompt(path, other)


def test_truncated_and_foreign_files(bundled_backbone, tmp_path):
    path = save_prompt(tmp_path / "p.safetensors", _model(bundled_backbone))
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_prompt(tmp_path / "cut.safetensors", _model(bundled_backbone))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="no fedlib header"):
        load_prompt(tmp_path / "foreign.safetensors", _model(bundled_backbone))
