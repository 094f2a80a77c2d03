"""One client update: load global shared + own personal state, train locally, report back.

:func:`client_update` is a plain function of the model workspace, the global shared tensors, the
client's own state (a flat dict of tensors: ``personal/<name>``, ``opt/<name>/<key>``, ``control/<name>``)
and its data. The in-process simulator and the Flower ClientApp both call it.

The local step is AdamW with state kept across rounds (``docs/method.md``, "The round"); what a strategy
changes on the client (FedProx's proximal term, SCAFFOLD's gradient correction and control update) are its
hooks, :meth:`fedlib.strategies.Strategy.client_setup` and :meth:`~fedlib.strategies.Strategy.client_report`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .client_store import ClientStore
from .config import TrainConfig
from .encode import Encoded
from .train import local_train, make_optimizer

__all__ = [
    "ClientResult",
    "LocalRun",
    "prepare_client",
    "finish_client",
    "client_update",
    "client_seed",
    "personal_tensors",
    "ClientStore",
    "export_optimizer",
    "import_optimizer",
]

log = logging.getLogger(__name__)
Tensors = dict[str, torch.Tensor]


@dataclass
class ClientResult:
    """What a client sends back: its shared tensors ``y_i`` (``shared``), extra uploads (SCAFFOLD ``dc_i``),
    its example count ``n_i``, local steps ``K_i``, mean training loss, wall seconds, and ``lrs``: the local
    learning rate each shared tensor was trained at (what control variates divide by)."""

    client: int
    num_examples: int
    steps: int
    loss: float
    shared: Tensors
    extra: Tensors = field(default_factory=dict)
    seconds: float = 0.0
    lrs: dict[str, float] = field(default_factory=dict)
    update_norm: float = math.nan  # ||y_i - x|| before DP clipping (a diagnostic; only computed under DP)

    def finite(self) -> bool:
        return math.isfinite(self.loss) and all(
            torch.isfinite(t).all() for t in (*self.shared.values(), *self.extra.values())
        )


def personal_tensors(state: Tensors, init_personal: Tensors) -> Tensors:
    """A client's personal tensors from its stored state, or ``init_personal`` before its first round."""
    return {k[len("personal/") :]: v for k, v in state.items() if k.startswith("personal/")} or init_personal


def client_seed(seed: int, round_: int, client: int, stream: int = 0) -> int:
    """Seed for client ``client``'s work in round ``round_``: derived, so a resumed run redraws the same.
    ``stream`` separates uses (0: training; layer selection's warm-up and Hessian probes use others)."""
    return int(np.random.SeedSequence([seed, round_, client, stream]).generate_state(1)[0])


def export_optimizer(opt: torch.optim.Optimizer, model) -> Tensors:
    """Optimiser state as ``opt/<param name>/<key>`` tensors (AdamW: step, exp_avg, exp_avg_sq)."""
    names = {id(p): n for n, p in model.trainable().items()}
    out = {}
    for p, st in opt.state.items():
        for key, value in st.items():
            value = value if torch.is_tensor(value) else torch.tensor(float(value))
            out[f"opt/{names[id(p)]}/{key}"] = value.detach().cpu().clone()
    return out


def import_optimizer(opt: torch.optim.Optimizer, model, state: Tensors) -> None:
    """Load what :func:`export_optimizer` wrote (missing entries: the parameter starts fresh)."""
    params = model.trainable()
    for name, value in state.items():
        if not name.startswith("opt/"):
            continue
        pname, key = name[4:].rsplit("/", 1)
        if pname in params:
            p = params[pname]
            opt.state[p][key] = value.clone() if key == "step" else value.to(p.device, p.dtype).clone()


@dataclass
class LocalRun:
    """One client's local training, set up: its model (global shared + own personal tensors loaded), AdamW
    with its persistent state, the strategy's hooks, and what the report needs (start values ``x``)."""

    model: object
    opt: torch.optim.Optimizer
    cfg: TrainConfig
    x: Tensors
    extra_loss: object = None
    after_backward: object = None
    controls: tuple[Tensors, Tensors] | None = None  # SCAFFOLD (c, c_i)
    diagnostics: dict | None = None  # what a strategy's hooks measure during local training (SCAFFOLD's norms)
    t0: float = 0.0
    seed: int = 0  # the client's seed of the round (local DP draws its noise from it)

    def lrs(self) -> dict[str, float]:
        """The learning rate of each trainable tensor, as the optimiser's parameter groups set it."""
        group_lr = {id(p): g["lr"] for g in self.opt.param_groups for p in g["params"]}
        return {name: float(group_lr[id(p)]) for name, p in self.model.trainable().items()}


def prepare_client(
    model,
    global_shared: Tensors,
    state: Tensors,
    init_personal: Tensors,
    cfg: TrainConfig,
    strategy,
    download: Tensors,
    device: torch.device,
) -> LocalRun:
    """Load (global shared, own personal) into ``model``, build AdamW with the client's saved state, and let the
    strategy set its client rule (:meth:`fedlib.strategies.Strategy.client_setup`)."""
    t0 = time.perf_counter()
    model.load_state({k: v.to(device) for k, v in global_shared.items()})
    model.load_state({k: v.to(device) for k, v in personal_tensors(state, init_personal).items()})
    train_cfg = strategy.client_train(cfg)
    opt = make_optimizer(model, train_cfg)
    import_optimizer(opt, model, state)
    run = LocalRun(model, opt, train_cfg, {k: v.to(device) for k, v in global_shared.items()}, t0=t0)
    strategy.client_setup(run, state, download)
    return run


def finish_client(run: LocalRun, client: int, num_examples: int, stats: dict, strategy) -> tuple[ClientResult, Tensors]:
    """The report ``y_i`` (shared tensors, the strategy's extra uploads, each tensor's learning rate) and the
    client's new state (personal tensors, AdamW state, what the strategy keeps) after local training."""
    model = run.model
    shared = {k: v.cpu() for k, v in model.state("shared").items()}
    norm = math.nan
    if strategy.privacy is not None:  # clipped (and in local mode noised) here, on every path (fedlib.privacy)
        shared, norm = strategy.privacy.finish_upload({k: v.cpu() for k, v in run.x.items()}, shared, run.seed)
    new_state = {f"personal/{k}": v.cpu() for k, v in model.state("personal").items()}
    new_state.update(export_optimizer(run.opt, model))
    extra = strategy.client_report(run, stats["steps"], new_state)
    lrs = run.lrs()
    seconds = time.perf_counter() - run.t0
    return ClientResult(
        client, num_examples, stats["steps"], stats["loss"], shared, extra, seconds, {k: lrs[k] for k in shared}, norm
    ), new_state


def client_update(
    model,
    client: int,
    global_shared: Tensors,
    state: Tensors,
    init_personal: Tensors,
    data: Encoded,
    cfg: TrainConfig,
    strategy,
    download: Tensors,
    seed: int,
    device: torch.device,
) -> tuple[ClientResult, Tensors]:
    """Train client ``client`` from (global shared, own personal) and return ``(result, new state)``.

    ``init_personal``: personal tensors for a client's first round (the initial model's values).
    ``download``: extra tensors from the server (SCAFFOLD's global control ``c``). ``cfg.epochs`` passes
    (at most ``cfg.max_steps`` steps) of :func:`fedlib.train.local_train`.
    """
    run = prepare_client(model, global_shared, state, init_personal, cfg, strategy, download, device)
    run.seed = seed
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    stats = local_train(
        model, run.opt, data, run.cfg, device, gen, extra_loss=run.extra_loss, after_backward=run.after_backward
    )
    return finish_client(run, client, len(data), stats, strategy)
