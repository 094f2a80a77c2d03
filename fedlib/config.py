"""The experiment's configuration: typed sections, each validating itself, every field with a help text.

:class:`ExperimentConfig` nests one section per concern::

    model      the frozen backbone, its prompts and head          (ModelConfig)
    train      the device side: AdamW, batch, local epochs/steps  (TrainConfig)
    fed        the federation: task, clients, rounds, seed        (FedConfig)
    data       where the data comes from and how much             (DataConfig)
    partition  how the training data is split over clients        (PartitionConfig)
    strategy   the federated algorithm and its hyper-parameters   (a StrategyConfig of fedlib.strategies)
    selection  which prompt layers are shared (FedPepTAO)         (SelectionConfig)
    run        device, checkpoints, faults, client storage, speed (RunConfig)
    privacy    client-level differential privacy                  (fedlib.privacy.PrivacyConfig)

In YAML, a section is a mapping; ``strategy`` is ``{name: fedadam, server_lr: 0.01, ...}`` with the named
strategy's own fields. On the command line every field is ``--section.field`` (:mod:`fedlib.cli`);
``docs/config.md`` lists them all (:func:`config_reference`). The machinery is :mod:`fedlib.configbase`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import ClassVar

from . import fedpeptao as _fedpeptao  # noqa: F401  (registers the fedpeptao strategy)
from . import server_optimizers as _server_optimizers  # noqa: F401  (registers fedavgm, fedadam, ...)
from .configbase import Config, ConfigError, check, describe, setting
from .partition import METHODS
from .privacy import PrivacyConfig, privacy_refusal
from .prompts import ROLES
from .strategies import STRATEGIES, StrategyConfig, strategy_config
from .tasks import ALIASES, TASKS

__all__ = [
    "ConfigError",
    "ModelConfig",
    "TrainConfig",
    "FedConfig",
    "DataConfig",
    "PartitionConfig",
    "SelectionConfig",
    "RunConfig",
    "PrivacyConfig",
    "ExperimentConfig",
    "StrategyConfig",
    "strategy_config",
    "config_reference",
]


@dataclass
class ModelConfig(Config):
    """The frozen backbone, its deep prompts and its classification head.

    See ``docs/method.md``, "Partial prompt tuning".
    """

    SECTION: ClassVar[str] = "model"

    name: str = setting(
        "bundled", "'bundled' (the offline default, all-MiniLM-L6-v2), a Hugging Face hub id, or a local model folder"
    )
    prompt_mode: typing.Literal["deep", "shallow", "lora"] = setting(
        "deep",
        "'deep': P-tuning v2 prefixes per layer; 'shallow': P soft input tokens; 'lora': LoRA adapters "
        "(set by the strategy)",
    )
    prompt_len: int = setting(8, "P, prompt tokens per layer")
    head: typing.Literal["auto", "linear", "mlm", "lm"] = setting(
        "auto", "'auto': 'lm' for decoders, 'mlm' for encoders with an MLM head, else 'linear'"
    )
    pooling: typing.Literal["mean", "cls"] = setting("mean", "how the linear head pools the last hidden states")
    head_role: typing.Literal["shared", "personal"] = setting("shared", "whether the linear head travels or stays")
    layer_roles: tuple[str, ...] | None = setting(
        None, f"one of {ROLES} per layer; None: every layer shared (FedPepTAO's selection sets them)"
    )
    reparam_hidden: int = setting(0, "hidden size of P-tuning v2's prompt MLP (0: no MLP)")
    prompt_dropout: float = setting(0.1, "dropout on the prompts during training")
    init_std: float = setting(0.02, "standard deviation of the prompts' normal initialisation")
    max_length: int = setting(128, "maximum tokens per example (longer ones are truncated)")
    attn_implementation: str | None = setting(None, "transformers' attention ('sdpa', 'eager'); None: its default")
    lora_r: int = setting(8, "LoRA rank (strategy lora)")
    lora_alpha: int = setting(16, "LoRA scaling alpha (strategy lora)")

    def validate(self) -> None:
        o = "model"
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
    """The device side: AdamW with weight decay and clipping, for ``epochs`` passes (or ``max_steps`` steps) a round.

    Defaults follow the reference scripts (lr 4e-2, weight decay 0.1, clip 1.0, batch 8), except ``head_lr``:
    the linear head (absent in the reference) learns at a smaller rate.
    """

    SECTION: ClassVar[str] = "train"

    lr: float = setting(4e-2, "local learning rate of the prompts (eta_l)")
    head_lr: float = setting(5e-3, "local learning rate of the linear head")
    weight_decay: float = setting(0.1, "AdamW weight decay of the prompts")
    max_grad_norm: float = setting(1.0, "gradient clipping norm (0: no clipping)")
    batch_size: int = setting(8, "local minibatch size")
    eval_batch_size: int = setting(64, "batch size of evaluation")
    epochs: int = setting(1, "local epochs per round (passes over the client's data)")
    max_steps: int = setting(0, "at most this many local steps per round (0: no limit, epochs decide)")
    optimizer: typing.Literal["adamw", "sgd"] = setting("adamw", "the local optimiser")
    autocast: typing.Literal["off", "bf16"] = setting(
        "off",
        "run the forward passes, local training's and evaluation's, under bf16 autocast ('bf16': CUDA with bf16 "
        "support, or a CPU with AVX512-BF16 or AMX: 1.5x faster local rounds and 1.7x faster evaluation on such a "
        "CPU; elsewhere torch emulates it, many times slower than 'off', and fedlib warns; "
        "benchmarks/autocast_cost.py measures it on this machine)",
    )

    def validate(self) -> None:
        o = "train"
        check(self.lr > 0, o, "lr", self.lr, "must be > 0")
        check(self.head_lr > 0, o, "head_lr", self.head_lr, "must be > 0")
        check(self.weight_decay >= 0, o, "weight_decay", self.weight_decay, "must be >= 0")
        check(self.max_grad_norm >= 0, o, "max_grad_norm", self.max_grad_norm, "must be >= 0 (0: no clipping)")
        check(self.batch_size >= 1, o, "batch_size", self.batch_size, "must be >= 1")
        check(self.eval_batch_size >= 1, o, "eval_batch_size", self.eval_batch_size, "must be >= 1")
        check(self.epochs >= 1, o, "epochs", self.epochs, "must be >= 1")
        check(self.max_steps >= 0, o, "max_steps", self.max_steps, "must be >= 0 (0: no limit)")


@dataclass
class FedConfig(Config):
    """The federation: task, clients, rounds, evaluation schedule and the seed of everything random.

    The paper's setting: 100 clients, 10 per round, 2 local epochs, 100 rounds. The defaults are a small CPU run.
    """

    SECTION: ClassVar[str] = "fed"

    task: str = setting("sst2", f"the task: one of {sorted(TASKS)}")
    num_clients: int = setting(20, "N, the number of clients")
    clients_per_round: int = setting(5, "m, clients sampled per round")
    rounds: int = setting(10, "T, communication rounds")
    eval_every: int = setting(1, "evaluate every this many rounds (0: only after the last round)")
    personal_eval: bool = setting(True, "also evaluate each client's personalised model on its eval shard")
    personal_eval_every: int = setting(
        0, "evaluate the personalised views every this many rounds and after the last (0: at every evaluation)"
    )
    curve_examples: int = setting(
        0,
        "the global curve on only the first N eval examples: at the rounds without personalised views only they are "
        "evaluated, at the others the whole eval set too (global_full_metric, the final global view); the area and "
        "the rounds to target are read on the N (0: the whole eval set every round)",
    )
    finetune_epochs: int = setting(
        0,
        "after the last round, each client fine-tunes its copy of the final model on its own training data for this "
        "many local epochs (a fresh optimiser, the train section) and the personalised views are reported for these "
        "copies too, as finetuned_personal_metric and finetuned_personal_iid_metric (fedlib.finetune; 0: off)",
    )
    seed: int = setting(42, "seed of the partition, initial prompts, client sampling and local shuffles")

    def validate(self) -> None:
        o = "fed"
        check(
            self.task.lower() in TASKS or self.task.lower() in ALIASES, o, "task", self.task, f"one of {sorted(TASKS)}"
        )
        check(self.num_clients >= 1, o, "num_clients", self.num_clients, "must be >= 1")
        check(
            1 <= self.clients_per_round <= self.num_clients,
            o,
            "clients_per_round",
            self.clients_per_round,
            f"must be in [1, num_clients={self.num_clients}]",
        )
        check(self.rounds >= 1, o, "rounds", self.rounds, "must be >= 1")
        check(self.eval_every >= 0, o, "eval_every", self.eval_every, "must be >= 0 (0: only after the last round)")
        check(self.personal_eval_every >= 0, o, "personal_eval_every", self.personal_eval_every, "must be >= 0")
        check(self.curve_examples >= 0, o, "curve_examples", self.curve_examples, "must be >= 0 (0: all)")
        check(self.finetune_epochs >= 0, o, "finetune_epochs", self.finetune_epochs, "must be >= 0 (0: off)")
        check(self.seed >= 0, o, "seed", self.seed, "must be >= 0")

    def evaluates(self, round_: int) -> tuple[bool, bool]:
        """Whether round ``round_`` (0-based) evaluates the global view (every ``eval_every`` rounds and after the
        last), and whether it evaluates the personalised views and the whole eval set too (every
        ``personal_eval_every`` rounds and after the last; at every evaluation when 0)."""
        done, last, every = round_ + 1, round_ + 1 == self.rounds, self.personal_eval_every
        evaluated = last or bool(self.eval_every and done % self.eval_every == 0)
        return evaluated, evaluated and (last or not every or done % every == 0)


@dataclass
class DataConfig(Config):
    """Where the task's data is read from, and how much of it."""

    SECTION: ClassVar[str] = "data"

    data_dir: str | None = setting(
        None, "folder of the GLUE-format data (None: $FEDLIB_DATA, else the project's data/)"
    )
    train_limit: int = setting(0, "use the first N training examples (0: all)")
    eval_limit: int = setting(0, "use the first N evaluation examples (0: all)")
    validation: int = setting(
        0,
        "evaluate on N training examples held out (a fixed seeded draw from the first train_limit + N) instead of "
        "the task's eval split: for choosing hyper-parameters without touching the eval set (0: the eval split)",
    )

    def validate(self) -> None:
        check(self.train_limit >= 0, "data", "train_limit", self.train_limit, "must be >= 0 (0: all)")
        check(self.eval_limit >= 0, "data", "eval_limit", self.eval_limit, "must be >= 0 (0: all)")
        check(self.validation >= 0, "data", "validation", self.validation, "must be >= 0 (0: the eval split)")


@dataclass
class PartitionConfig(Config):
    """How the training data is split over the clients (``docs/method.md``, "Non-IID data")."""

    SECTION: ClassVar[str] = "partition"

    method: typing.Literal[METHODS] = setting(
        "reference",
        "'iid', 'dirichlet' (label skew), 'quantity' (size skew) or 'reference' (the paper's two-level "
        "size and label skew)",
    )
    alpha: float = setting(1.0, "Dirichlet concentration of the label skew (smaller: more skewed)")
    beta: float = setting(1.0, "Dirichlet concentration of the size skew ('quantity')")
    size_concentration: float = setting(5.0, "concentration of the client sizes ('reference')")

    def validate(self) -> None:
        for name in ("alpha", "beta", "size_concentration"):
            check(getattr(self, name) > 0, "partition", name, getattr(self, name), "must be > 0")


@dataclass
class SelectionConfig(Config):
    """Which prompt layers are shared, for strategies that select them (``docs/method.md``, "Layer selection").

    The k best-scored layers are shared; k is ``shared_layers``, else ``share_ratio`` of the layers (default: half),
    else (``share_ratio: 0``) the Hessian criterion (``count_rule``) after ``hessian_warmup_rounds`` of FedAvg on all
    layers. Half is the default because the reference's density rule chose exactly half the layers in every one of
    the 170 runs of ``results/`` (3 of 6), while its warm-up and probes cost 0.92 MB of FedPepTAO's 4.25 MB a run
    (``docs/method.md``, "How many layers").
    """

    SECTION: ClassVar[str] = "selection"

    shared_layers: int = setting(0, "share this many layers (0: share_ratio decides)")
    share_ratio: float = setting(
        0.5, "share this fraction of the layers, rounded (0: the Hessian criterion, count_rule, decides)"
    )
    nonselected: typing.Literal["auto", "personal", "off"] = setting(
        "auto", "the role of the other layers; 'auto': personal for encoders, off for decoders (as the reference)"
    )
    score_batch: int = setting(8, "B, examples per client in the scoring batch (a B x B similarity matrix)")
    hessian_warmup_rounds: int = setting(2, "rounds of FedAvg on all layers before the Hessian is measured")
    hessian_iters: int = setting(
        20, "Hessian-vector products per probed client and rule: Lanczos steps (density), Hutchinson probes (trace)"
    )
    hessian_relative: bool = setting(False, "measure eigenvalues relative to the largest one (scale-free)")
    choose: typing.Literal["score", "random", "first", "last"] = setting(
        "score",
        "which k layers are shared: 'score', the k best-scored (the method); 'random' (seeded by fed.seed), "
        "'first' or 'last' k layers (the ablation's naive choices; scores are still computed and recorded)",
    )
    count_rule: typing.Literal["density", "trace"] = setting(
        "density",
        "how the Hessian sets k: 'density', the reference's eigenvalue-density ratio; 'trace', the fewest layers "
        "whose Hessian-block traces cover trace_coverage of the total (scale-free)",
    )
    trace_coverage: float = setting(0.9, "'trace' rule: the fraction tau of the total trace the shared layers cover")
    compare_rules: bool = setting(
        False,
        "measure both count rules (the one not in count_rule is recorded, not used): twice the Hessian probes' cost; "
        "notebook 02 compares them",
    )

    def validate(self) -> None:
        o = "selection"
        check(self.shared_layers >= 0, o, "shared_layers", self.shared_layers, "must be >= 0 (0: share_ratio decides)")
        check(0.0 <= self.share_ratio <= 1.0, o, "share_ratio", self.share_ratio, "must be in [0, 1] (0: Hessian)")
        check(self.score_batch >= 2, o, "score_batch", self.score_batch, "must be >= 2 (a B x B similarity matrix)")
        check(self.hessian_iters >= 2, o, "hessian_iters", self.hessian_iters, "must be >= 2")
        check(self.hessian_warmup_rounds >= 0, o, "hessian_warmup_rounds", self.hessian_warmup_rounds, "must be >= 0")
        check(0.0 < self.trace_coverage <= 1.0, o, "trace_coverage", self.trace_coverage, "must be in (0, 1]")

    @property
    def automatic(self) -> bool:
        """Whether k comes from the Hessian criterion (no fixed count or ratio)."""
        return not self.shared_layers and not self.share_ratio


@dataclass
class RunConfig(Config):
    """How the run executes: device, checkpoints, fault handling, where client state lives, batching."""

    SECTION: ClassVar[str] = "run"

    device: str = setting("auto", "auto (CUDA, then MPS, then CPU; $FEDLIB_DEVICE overrides), or cpu, cuda:0, mps")
    checkpoint_every: int = setting(0, "checkpoint the whole run every this many rounds (0: never)")
    max_failed_rounds: int = setting(3, "stop after this many rounds in a row in which every client failed")
    max_update_norm: float = setting(1e4, "leave out a client whose update norm exceeds this (divergence)")
    client_state: typing.Literal["memory", "disk"] = setting(
        "memory", "where clients' personal state lives between rounds ('disk': safetensors under out_dir)"
    )
    client_memory_mb: float = setting(
        0.0,
        "'memory': keep at most this many MB of client state in memory, writing the least recently used beyond it "
        "to safetensors files (under out_dir/clients, else a temporary folder); 0: no budget",
    )
    tracking: typing.Literal["off", "tensorboard"] = setting(
        "off", "offline experiment tracking: 'tensorboard' writes event files per round (fedlib.tracking)"
    )
    tracking_dir: str | None = setting(None, "where the tracking event files go (None: <out_dir>/tensorboard)")
    batch_clients: typing.Literal["auto", "on", "off"] = setting(
        "auto",
        "train the sampled clients as joint batches when the strategy allows it ('auto' and 'on'), or one "
        "by one ('off')",
    )
    batch_chunk: int = setting(
        0, "examples per joint forward (0: by device: all on an accelerator, one minibatch on CPU)"
    )

    def validate(self) -> None:
        o = "run"
        check(self.checkpoint_every >= 0, o, "checkpoint_every", self.checkpoint_every, "must be >= 0 (0: never)")
        check(self.max_failed_rounds >= 1, o, "max_failed_rounds", self.max_failed_rounds, "must be >= 1")
        check(self.max_update_norm > 0, o, "max_update_norm", self.max_update_norm, "must be > 0")
        check(self.client_memory_mb >= 0, o, "client_memory_mb", self.client_memory_mb, "must be >= 0 (0: no budget)")
        check(self.batch_chunk >= 0, o, "batch_chunk", self.batch_chunk, "must be >= 0 (0: by device)")


@dataclass
class ExperimentConfig(Config):
    """Everything one federated run needs, one section per concern (module docstring)."""

    model: ModelConfig = setting(factory=ModelConfig, help="the backbone, prompts and head")
    train: TrainConfig = setting(factory=TrainConfig, help="local (device) training")
    fed: FedConfig = setting(factory=FedConfig, help="the federation")
    data: DataConfig = setting(factory=DataConfig, help="the data")
    partition: PartitionConfig = setting(factory=PartitionConfig, help="the non-IID partition")
    strategy: StrategyConfig = setting(factory=lambda: strategy_config("fedavg"), help="the federated strategy")
    selection: SelectionConfig = setting(factory=SelectionConfig, help="layer selection")
    run: RunConfig = setting(factory=RunConfig, help="execution")
    privacy: PrivacyConfig = setting(factory=PrivacyConfig, help="client-level differential privacy")

    def validate(self) -> None:
        why = privacy_refusal(self)
        if why:
            raise ConfigError(why)

    def with_strategy(self, name: str, **params) -> "ExperimentConfig":
        """A copy running strategy ``name`` with ``params`` (its defaults for the rest)."""
        return self.replace(strategy=strategy_config(name, **params))

    def with_overrides(self, overrides: dict) -> "ExperimentConfig":
        """A copy with ``{section: {field: value}}`` changed (validated); a ``strategy`` mapping with a ``name``
        replaces the strategy (its defaults for the fields not given), without one it changes fields."""
        data = self.to_dict()
        for section, fields in overrides.items():
            if not isinstance(fields, dict) or section not in data:
                raise ConfigError(f"overrides: {section!r} must be a config section mapping; sections: {list(data)}")
            fresh = section == "strategy" and "name" in fields
            data[section] = dict(fields) if fresh else {**data[section], **fields}
        return ExperimentConfig.from_dict(data)


def config_reference() -> str:
    """Every config field as a markdown table per section (``docs/config.md`` is this text)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `fedlib.config` by `python -m fedlib.cli docs` (a test checks it is current).",
        "Every field is settable in YAML (`section: {field: value}`) and on the command line "
        "(`--section.field value`).",
        "",
    ]
    sections: dict[str, list] = {}
    for name, tp, default, help_ in describe(ExperimentConfig):
        sections.setdefault(name.split(".")[0], []).append((name, tp, default, help_))
    for section, rows in sections.items():
        lines += [f"## `{section}`", "", "| field | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{n}` | {t} | `{d!r}` | {h} |" for n, t, d, h in rows if n != "strategy.name"]
        if section == "strategy":
            lines += [f"| `strategy.name` | str | `'fedavg'` | one of {', '.join(STRATEGIES)} |", ""]
            for sname, cls in STRATEGIES.items():
                lines += [f"### `{sname}`: {cls.doc}", "", "| field | type | default | meaning |", "|---|---|---|---|"]
                lines += [
                    f"| `strategy.{n}` | {t} | `{d!r}` | {h} |" for n, t, d, h in describe(cls.Config) if n != "name"
                ] or ["| (none) | | | |"]
                lines.append("")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
