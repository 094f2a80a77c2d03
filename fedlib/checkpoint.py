"""Saving and loading trainable state as safetensors with a JSON header (no pickle anywhere).

A prompt file holds the prompt (and head) tensors plus ``__metadata__["fedlib"]``: a JSON object with
model name, layer count, P, kv width, layer roles, head kind and task. Loading checks that header
against the model and every tensor's name and shape before copying anything in.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = ["CheckpointError", "prompt_header", "save_prompt", "load_prompt"]

FORMAT = "fedlib-prompt/1"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupted, or belongs to another model/config."""


def prompt_header(model) -> dict:
    """What a prompt file must agree on with the model it is loaded into."""
    return {"format": FORMAT, "model": model.info.name, "num_layers": model.info.num_layers,
            "prompt_len": model.prompt.prompt_len, "kv_dim": model.prompt.kv_dim, "roles": list(model.prompt.roles),
            "head": model.head_kind, "task": model.task.name, "num_labels": model.task.num_labels}


def save_prompt(path: str | Path, model, role: str | None = None, extra: dict | None = None) -> Path:
    """Write the trainable tensors (all, or one role's) of ``model`` to ``path`` (``.safetensors``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {**prompt_header(model), "role": role, **(extra or {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state(role).items()}
    save_file(tensors, str(path), metadata={"fedlib": json.dumps(header)})
    return path


def read_header(path: str | Path) -> dict:
    """The JSON header of a fedlib safetensors file, or :class:`CheckpointError`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    if "fedlib" not in meta:
        raise CheckpointError(f"{path}: no fedlib header; not written by fedlib.checkpoint")
    try:
        return json.loads(meta["fedlib"])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: corrupted fedlib header ({err})") from err


def load_prompt(path: str | Path, model, strict_roles: bool = False) -> dict:
    """Load a prompt file into ``model`` after checking it fits; returns the header.

    Raises :class:`CheckpointError` naming the file and the mismatch (model, layer count, P, width,
    task, head, or a tensor's name/shape); nothing is copied unless everything fits.
    """
    header = read_header(path)
    want = prompt_header(model)
    keys = ["format", "model", "num_layers", "prompt_len", "kv_dim", "head", "num_labels"] + (["roles"] if strict_roles else [])
    for key in keys:
        if header.get(key) != want[key]:
            raise CheckpointError(f"{path}: {key} is {header.get(key)!r} in the file but {want[key]!r} in this model")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: tensor data unreadable ({err})") from err
    params = model.trainable()
    for name, value in tensors.items():
        if name not in params:
            raise CheckpointError(f"{path}: tensor {name!r} has no place in this model (its roles: {list(model.prompt.roles)})")
        if params[name].shape != value.shape:
            raise CheckpointError(f"{path}: tensor {name!r} is {tuple(value.shape)}, the model needs {tuple(params[name].shape)}")
    model.load_state({k: v.to(params[k].device, params[k].dtype) for k, v in tensors.items()})
    return header
