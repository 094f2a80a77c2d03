"""Saving and loading trainable state as safetensors with a JSON header (no pickle anywhere).

A prompt file holds the prompt (and head) tensors plus ``__metadata__["fedlib"]``: a JSON object with
model name, layer count, P, kv width, layer roles, head kind and task. Loading checks that header
against the model and every tensor's name and shape before copying anything in.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = [
    "CheckpointError",
    "prompt_header",
    "save_prompt",
    "load_prompt",
    "save_run_checkpoint",
    "load_run_checkpoint",
    "read_log",
]

FORMAT = "fedlib-prompt/1"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupted, or belongs to another model/config."""


def prompt_header(model) -> dict:
    """What a prompt file must agree on with the model it is loaded into."""
    return {
        "format": FORMAT,
        "model": model.info.name,
        "num_layers": model.info.num_layers,
        "prompt_len": model.prompt.prompt_len,
        "kv_dim": model.prompt.kv_dim,
        "roles": list(model.prompt.roles),
        "head": model.head_kind,
        "task": model.task.name,
        "num_labels": model.task.num_labels,
    }


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
    keys = ["format", "model", "num_layers", "prompt_len", "kv_dim", "head", "task", "num_labels"] + (
        ["roles"] if strict_roles else []
    )
    for key in keys:
        if header.get(key) != want[key]:
            raise CheckpointError(f"{path}: {key} is {header.get(key)!r} in the file but {want[key]!r} in this model")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: tensor data unreadable ({err})") from err
    try:
        model.check_state(tensors)
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: {err.args[0]}") from err
    params = model.trainable()
    model.load_state({k: v.to(params[k].device, params[k].dtype) for k, v in tensors.items()})
    return header


# ---- federated run checkpoints ------------------------------------------------------------------
def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_write(path: Path, write) -> None:
    write(path)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_run_checkpoint(
    folder: str | Path, round_: int, server_tensors: dict, clients: dict[int, dict], info: dict
) -> Path:
    """Write ``<folder>/round_<r>/`` atomically: server.safetensors, clients.safetensors, state.json
    (round, info, SHA-256 of both tensor files), then point ``<folder>/LATEST`` at it.

    Files go to a temporary folder first (fsynced), which is renamed into place; LATEST is replaced
    atomically, so a kill at any moment leaves the previous checkpoint usable.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"round_{round_:06d}"
    for stale in folder.glob(".tmp_round_*"):  # left by a run killed while checkpointing
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder / f".tmp_round_{round_:06d}_{os.getpid()}"
    tmp.mkdir()
    flat_clients = {f"{k}/{name}": v.contiguous() for k, state in clients.items() for name, v in state.items()}
    _fsync_write(
        tmp / "server.safetensors", lambda p: save_file({k: v.contiguous() for k, v in server_tensors.items()}, str(p))
    )
    _fsync_write(tmp / "clients.safetensors", lambda p: save_file(flat_clients, str(p)))
    state = {
        "format": "fedlib-run/1",
        "round": round_,
        "info": info,
        "sha256": {n: _sha256(tmp / n) for n in ("server.safetensors", "clients.safetensors")},
    }
    _fsync_write(tmp / "state.json", lambda p: p.write_text(json.dumps(state)))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = folder / ".LATEST.tmp"
    _fsync_write(pointer, lambda p: p.write_text(final.name))
    os.replace(pointer, folder / "LATEST")
    return final


def load_run_checkpoint(folder: str | Path) -> tuple[int, dict, dict[int, dict], dict]:
    """Read the checkpoint LATEST points at: ``(round, server tensors, client states, info)``.

    Every file is checked against its recorded SHA-256 first; a truncated, flipped or missing file
    raises :class:`CheckpointError` naming it, and nothing is returned half-read.
    """
    folder = Path(folder)
    try:
        target = folder / (folder / "LATEST").read_text().strip()
        state = json.loads((target / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder}: no readable checkpoint ({err})") from err
    if state.get("format") != "fedlib-run/1":
        raise CheckpointError(f"{target}/state.json: not a fedlib run checkpoint")
    for name, digest in state["sha256"].items():
        path = target / name
        if not path.exists() or _sha256(path) != digest:
            raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupted file)")
    try:
        server = load_file(str(target / "server.safetensors"))
        flat = load_file(str(target / "clients.safetensors"))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{target}: unreadable tensors ({err})") from err
    clients: dict[int, dict] = {}
    for key, value in flat.items():
        k, name = key.split("/", 1)
        clients.setdefault(int(k), {})[name] = value
    return state["round"], server, clients, state["info"]


def read_log(path: str | Path) -> list[dict]:
    """A run's ``results.jsonl`` as its records, one per line (``[]`` when there is none); a line torn by a kill
    mid-write is skipped with a warning (it is past the last checkpoint)."""
    path, rows = Path(path), []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logging.getLogger(__name__).warning("%s: skipping a torn line", path)
    return rows
