"""Typed, self-validating configuration dataclasses.

Every config validates itself on construction and raises :class:`ConfigError` naming the field,
the value and what is allowed. Configs round-trip through dicts, JSON and YAML; unknown keys are
errors (a typo must not be silently ignored).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "Config", "ModelConfig", "TrainConfig", "FedConfig", "ExperimentConfig"]

ROLES = ("shared", "personal", "off")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field, the value and what is allowed."""


def check(ok: bool, owner: str, name: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` ``"<owner>.<name>=<value!r>: <allowed>"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{owner}.{name}={value!r} is invalid: {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


class Config:
    """Mixin for dataclass configs: type checks, ``validate()``, dict/JSON/YAML round trips."""

    def __post_init__(self) -> None:
        self._check_types()
        self.validate()

    def validate(self) -> None:  # overridden by subclasses
        pass

    def _check_types(self) -> None:
        owner = type(self).__name__
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            want = hints[f.name]
            if not _matches(value, want):
                check(False, owner, f.name, value, f"expected {_type_name(want)}")

    # ---- round trips -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping of fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; valid fields are {sorted(names)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in data.items():
            sub = _dataclass_in(hints[key])
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value)
            elif isinstance(value, list) and _wants_tuple(hints[key]):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "Config":
        text = _read(text_or_path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{cls.__name__}: not valid JSON ({err})") from err
        return cls.from_dict(data)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> "Config":
        try:
            data = yaml.safe_load(_read(text_or_path))
        except yaml.YAMLError as err:
            raise ConfigError(f"{cls.__name__}: not valid YAML ({err})") from err
        return cls.from_dict(data or {})

    def replace(self, **changes: Any) -> "Config":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _read(text_or_path: str | Path) -> str:
    if isinstance(text_or_path, Path) or (
        isinstance(text_or_path, str) and "\n" not in text_or_path and text_or_path.endswith((".json", ".yaml", ".yml"))
    ):
        path = Path(text_or_path)
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {str(path)!r}: {err}") from err
    return str(text_or_path)


def _to_plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _dataclass_in(tp: Any) -> type | None:
    for t in (tp, *typing.get_args(tp)):
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            return t
    return None


def _wants_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(tp))


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return _is_num(value)
    if tp is int:
        return _is_int(value)
    if tp is bool:
        return isinstance(value, bool)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


@dataclass
class ModelConfig(Config):
    """The frozen backbone, its deep prompts and its classification head (paper Sec. 3.1; digest 1.1).

    ``name``: ``"bundled"`` (the offline default, all-MiniLM-L6-v2), a Hugging Face hub id, or a local folder.
    ``prompt_mode``: ``"deep"`` (P-tuning v2 prefixes per layer), ``"shallow"`` (P soft input tokens,
    Lester et al. 2021) or ``"lora"`` (no prompt; LoRA adapters of rank ``lora_r`` through PEFT).
    ``prompt_len``: P, prompt tokens per layer. ``head``: ``"auto"`` picks ``"mlm"`` for encoders with an MLM
    head, ``"lm"`` for decoders, ``"linear"`` otherwise. ``layer_roles``: one of ``"shared"``, ``"personal"``,
    ``"off"`` per layer, or ``None`` for all shared.
    """

    name: str = "bundled"
    prompt_mode: typing.Literal["deep", "shallow", "lora"] = "deep"
    prompt_len: int = 8
    head: typing.Literal["auto", "linear", "mlm", "lm"] = "auto"
    pooling: typing.Literal["mean", "cls"] = "mean"
    head_role: typing.Literal["shared", "personal"] = "shared"
    layer_roles: tuple[str, ...] | None = None
    reparam_hidden: int = 0
    prompt_dropout: float = 0.1
    init_std: float = 0.02
    max_length: int = 128
    attn_implementation: str | None = None
    lora_r: int = 8
    lora_alpha: int = 16

    def validate(self) -> None:
        o = "ModelConfig"
        check(self.lora_r >= 1, o, "lora_r", self.lora_r, "must be >= 1")
        check(bool(self.name.strip()), o, "name", self.name, "give 'bundled', a hub id or a local folder")
        check(0 <= self.prompt_len <= 512, o, "prompt_len", self.prompt_len, "must be in [0, 512]")
        check(self.reparam_hidden >= 0, o, "reparam_hidden", self.reparam_hidden, "must be >= 0 (0: no MLP)")
        check(0.0 <= self.prompt_dropout < 1.0, o, "prompt_dropout", self.prompt_dropout, "must be in [0, 1)")
        check(self.init_std > 0, o, "init_std", self.init_std, "must be > 0")
        check(8 <= self.max_length <= 8192, o, "max_length", self.max_length, "must be in [8, 8192]")
        if self.layer_roles is not None:
            bad = [r for r in self.layer_roles if r not in ROLES]
            check(
                not bad and len(self.layer_roles) > 0,
                o,
                "layer_roles",
                self.layer_roles,
                f"each entry must be one of {ROLES}",
            )


@dataclass
class TrainConfig(Config):
    """Local (device-side) optimisation: AdamW with weight decay and clipping (digest 1.5 step 2).

    Defaults follow the reference scripts (lr 4e-2, weight decay 0.1, clip 1.0, batch 8), except
    ``head_lr``: the linear head (absent in the reference) learns at a smaller rate.
    """

    lr: float = 4e-2
    head_lr: float = 5e-3
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    batch_size: int = 8
    eval_batch_size: int = 64
    epochs: int = 1
    max_steps: int = 0
    optimizer: typing.Literal["adamw", "sgd"] = "adamw"
    seed: int = 42
    device: str = "auto"

    def validate(self) -> None:
        o = "TrainConfig"
        check(self.lr > 0, o, "lr", self.lr, "must be > 0")
        check(self.head_lr > 0, o, "head_lr", self.head_lr, "must be > 0")
        check(self.weight_decay >= 0, o, "weight_decay", self.weight_decay, "must be >= 0")
        check(self.max_grad_norm >= 0, o, "max_grad_norm", self.max_grad_norm, "must be >= 0 (0: no clipping)")
        check(self.batch_size >= 1, o, "batch_size", self.batch_size, "must be >= 1")
        check(self.eval_batch_size >= 1, o, "eval_batch_size", self.eval_batch_size, "must be >= 1")
        check(self.epochs >= 1, o, "epochs", self.epochs, "must be >= 1")
        check(self.max_steps >= 0, o, "max_steps", self.max_steps, "must be >= 0 (0: no limit)")
        check(self.seed >= 0, o, "seed", self.seed, "must be >= 0")


STRATEGY_NAMES = (
    "fedavg",
    "fedprox",
    "scaffold",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "shallow",
    "lora",
    "fedavg_selected",
    "fedpeptao",
)
PARTITIONS = ("iid", "dirichlet", "quantity", "reference")


@dataclass
class FedConfig(Config):
    """The federated run: task, strategy, clients, rounds, partition, evaluation, checkpoints.

    Paper settings (digest 3.1): 100 clients, 10 per round, 2 local epochs, 100 rounds, reference
    partition with alpha 1. The defaults here are a small CPU run. ``server_*``/``prox_mu`` left at
    ``None`` take the strategy's defaults (:mod:`fedlib.strategies`). FedPepTAO: ``shared_layers``
    (0: chosen by the Hessian criterion) or ``share_ratio``; ``nonselected`` layers ``"personal"``, ``"off"`` or ``"auto"`` (personal for encoders, off
    for decoders, as the reference);
    ``server_variant`` ``"parallel"`` (default) or ``"sequential"`` (reference-faithful).
    ``batch_clients``: train the sampled clients as joint batches (:mod:`fedlib.batched`) when the strategy
    allows it (deep prompts; ``"auto"`` and ``"on"`` alike), or one by one (``"off"``); ``batch_chunk``
    examples per joint forward (0: by device, all of them on an accelerator, one minibatch on a CPU).
    """

    task: str = "sst2"
    strategy: str = "fedavg"
    num_clients: int = 20
    clients_per_round: int = 5
    rounds: int = 10
    local_epochs: int = 1
    local_steps: int = 0
    partition: typing.Literal["iid", "dirichlet", "quantity", "reference"] = "reference"
    alpha: float = 1.0
    beta: float = 1.0
    size_concentration: float = 5.0
    train_limit: int = 0
    eval_limit: int = 0
    eval_every: int = 1
    personal_eval: bool = True
    checkpoint_every: int = 0
    max_failed_rounds: int = 3
    max_update_norm: float = 1e4
    client_state: typing.Literal["memory", "disk"] = "memory"
    batch_clients: typing.Literal["auto", "on", "off"] = "auto"
    batch_chunk: int = 0
    data_dir: str | None = None
    server_lr: float | None = None
    server_momentum: float | None = None
    server_tau: float | None = None
    prox_mu: float | None = None
    shared_layers: int = 0
    share_ratio: float = 0.0
    nonselected: typing.Literal["auto", "personal", "off"] = "auto"
    server_variant: typing.Literal["parallel", "sequential"] = "parallel"
    control_variates: bool = True
    score_batch: int = 8
    hessian_warmup_rounds: int = 2
    hessian_iters: int = 20
    hessian_relative: bool = False
    seed: int = 42

    def validate(self) -> None:
        o = "FedConfig"
        from .tasks import ALIASES, TASKS

        check(
            self.task.lower() in TASKS or self.task.lower() in ALIASES, o, "task", self.task, f"one of {sorted(TASKS)}"
        )
        check(self.strategy in STRATEGY_NAMES, o, "strategy", self.strategy, f"one of {list(STRATEGY_NAMES)}")
        check(self.num_clients >= 1, o, "num_clients", self.num_clients, "must be >= 1")
        check(
            1 <= self.clients_per_round <= self.num_clients,
            o,
            "clients_per_round",
            self.clients_per_round,
            f"must be in [1, num_clients={self.num_clients}]",
        )
        check(self.rounds >= 1, o, "rounds", self.rounds, "must be >= 1")
        check(self.local_epochs >= 1, o, "local_epochs", self.local_epochs, "must be >= 1")
        check(self.local_steps >= 0, o, "local_steps", self.local_steps, "must be >= 0 (0: use local_epochs)")
        check(self.alpha > 0, o, "alpha", self.alpha, "must be > 0")
        check(self.beta > 0, o, "beta", self.beta, "must be > 0")
        check(self.size_concentration > 0, o, "size_concentration", self.size_concentration, "must be > 0")
        check(self.train_limit >= 0, o, "train_limit", self.train_limit, "must be >= 0 (0: all)")
        check(self.eval_limit >= 0, o, "eval_limit", self.eval_limit, "must be >= 0 (0: all)")
        check(self.eval_every >= 0, o, "eval_every", self.eval_every, "must be >= 0 (0: only after the last round)")
        check(self.checkpoint_every >= 0, o, "checkpoint_every", self.checkpoint_every, "must be >= 0 (0: never)")
        check(self.max_failed_rounds >= 1, o, "max_failed_rounds", self.max_failed_rounds, "must be >= 1")
        check(self.max_update_norm > 0, o, "max_update_norm", self.max_update_norm, "must be > 0")
        check(self.batch_chunk >= 0, o, "batch_chunk", self.batch_chunk, "must be >= 0 (0: by device)")
        for name in ("server_lr", "server_momentum", "server_tau", "prox_mu"):
            v = getattr(self, name)
            check(v is None or v >= 0, o, name, v, "must be >= 0 or None (strategy default)")
        check(self.shared_layers >= 0, o, "shared_layers", self.shared_layers, "must be >= 0 (0: automatic)")
        check(0.0 <= self.share_ratio <= 1.0, o, "share_ratio", self.share_ratio, "must be in [0, 1] (0: automatic)")
        check(self.score_batch >= 2, o, "score_batch", self.score_batch, "must be >= 2 (a B x B similarity matrix)")
        check(self.hessian_iters >= 2, o, "hessian_iters", self.hessian_iters, "must be >= 2")
        check(self.hessian_warmup_rounds >= 0, o, "hessian_warmup_rounds", self.hessian_warmup_rounds, "must be >= 0")


@dataclass
class ExperimentConfig(Config):
    """Everything one federated run needs: ``model``, local ``train`` settings and the ``fed`` run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fed: FedConfig = field(default_factory=FedConfig)
