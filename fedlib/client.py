"""One client update: load global shared + own personal state, train locally, report back.

:func:`client_update` is a plain function of the model workspace, the global shared tensors, the
client's own state (a flat dict of tensors: ``personal/<name>``, ``opt/<name>/<key>``, ``control/<name>``)
and its data. The in-process simulator and the Flower ClientApp both call it.

Client rules (digest 1.5 step 2 and :mod:`fedlib.strategies`): plain AdamW; FedProx's proximal term;
SCAFFOLD's gradient correction ``g + c - c_i`` and control update
``c_i+ = c_i - c + (x - y_i) / (K * lr)`` (Karimireddy et al. 2020, option II).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig
from .encode import Encoded
from .strategies import Strategy
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
    its example count ``n_i``, local steps ``K_i``, mean training loss and wall seconds."""

    client: int
    num_examples: int
    steps: int
    loss: float
    shared: Tensors
    extra: Tensors = field(default_factory=dict)
    seconds: float = 0.0

    def finite(self) -> bool:
        return math.isfinite(self.loss) and all(
            torch.isfinite(t).all() for t in (*self.shared.values(), *self.extra.values())
        )


def personal_tensors(state: Tensors, init_personal: Tensors) -> Tensors:
    """A client's personal tensors from its stored state, or ``init_personal`` before its first round."""
    return {k[len("personal/") :]: v for k, v in state.items() if k.startswith("personal/")} or init_personal


def client_seed(seed: int, round_: int, client: int, stream: int = 0) -> int:
    """Seed for client ``client``'s work in round ``round_``: derived, so a resumed run redraws the same.
    ``stream`` separates uses (0: training; FedPepTAO's warm-up and Hessian probes use others)."""
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
    t0: float = 0.0


def prepare_client(
    model,
    global_shared: Tensors,
    state: Tensors,
    init_personal: Tensors,
    cfg: TrainConfig,
    strategy: Strategy,
    hp: dict,
    download: Tensors,
    device: torch.device,
) -> LocalRun:
    """Load (global shared, own personal) into ``model``, build AdamW with the client's saved state and the
    strategy's client rule (FedProx term, SCAFFOLD correction). Digest 1.5 steps 1-2."""
    t0 = time.perf_counter()
    model.load_state({k: v.to(device) for k, v in global_shared.items()})
    model.load_state({k: v.to(device) for k, v in personal_tensors(state, init_personal).items()})
    train_cfg = cfg.replace(lr=hp["lr"]) if "lr" in hp else cfg
    opt = make_optimizer(model, train_cfg)
    import_optimizer(opt, model, state)
    params = model.trainable()
    run = LocalRun(model, opt, train_cfg, {k: v.to(device) for k, v in global_shared.items()}, t0=t0)
    if strategy.client == "prox":
        mu, x = hp.get("prox_mu", 0.01), run.x

        def extra_loss(m):
            return 0.5 * mu * sum(((params[k] - x[k]) ** 2).sum() for k in x)

        run.extra_loss = extra_loss
    elif strategy.client == "scaffold":
        c = {k: v.to(device) for k, v in download.items()}
        c_i = {k: state.get(f"control/{k}", torch.zeros_like(v)).to(device) for k, v in c.items()}

        def after_backward(m):
            for k in c:
                if params[k].grad is not None:
                    params[k].grad.add_(c[k] - c_i[k])

        run.after_backward, run.controls = after_backward, (c, c_i)
    return run


def finish_client(run: LocalRun, client: int, num_examples: int, stats: dict) -> tuple[ClientResult, Tensors]:
    """The report ``y_i`` (shared tensors; SCAFFOLD's ``dc_i``) and the client's new state (personal tensors,
    AdamW state, SCAFFOLD's ``c_i``) after local training."""
    model = run.model
    shared = {k: v.cpu() for k, v in model.state("shared").items()}
    new_state = {f"personal/{k}": v.cpu() for k, v in model.state("personal").items()}
    new_state.update(export_optimizer(run.opt, model))
    extra = {}
    if run.controls is not None and stats["steps"] > 0:
        c, c_i = run.controls
        params = model.trainable()
        scale = 1.0 / (stats["steps"] * run.cfg.lr)
        for k in c:
            new_c = c_i[k] - c[k] + (run.x[k] - params[k].detach()) * scale
            extra[k] = (new_c - c_i[k]).cpu()
            new_state[f"control/{k}"] = new_c.cpu()
    seconds = time.perf_counter() - run.t0
    return ClientResult(client, num_examples, stats["steps"], stats["loss"], shared, extra, seconds), new_state


def client_update(
    model,
    client: int,
    global_shared: Tensors,
    state: Tensors,
    init_personal: Tensors,
    data: Encoded,
    cfg: TrainConfig,
    strategy: Strategy,
    hp: dict,
    download: Tensors,
    seed: int,
    device: torch.device,
) -> tuple[ClientResult, Tensors]:
    """Train client ``client`` from (global shared, own personal) and return ``(result, new state)``.

    ``init_personal``: personal tensors for a client's first round (the initial model's values).
    ``download``: extra tensors from the server (SCAFFOLD's global control ``c``).
    """
    run = prepare_client(model, global_shared, state, init_personal, cfg, strategy, hp, download, device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    stats = local_train(
        model,
        run.opt,
        data,
        run.cfg,
        device,
        gen,
        epochs=hp.get("local_epochs"),
        max_steps=hp.get("local_steps") or None,
        extra_loss=run.extra_loss,
        after_backward=run.after_backward,
    )
    return finish_client(run, client, len(data), stats)


class ClientStore:
    """Every client's state between rounds: in memory (CPU tensors) or on disk (one safetensors file each)."""

    def __init__(self, where: str = "memory", folder: str | Path | None = None) -> None:
        self.where, self.folder = where, Path(folder) if folder else None
        self._mem: dict[int, Tensors] = {}
        if where == "disk":
            if self.folder is None:
                raise ValueError("ClientStore('disk') needs a folder")
            self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, client: int) -> Tensors:
        if self.where == "memory":
            return self._mem.get(client, {})
        from safetensors.torch import load_file

        path = self.folder / f"client_{client:05d}.safetensors"
        return load_file(str(path)) if path.exists() else {}

    def put(self, client: int, state: Tensors) -> None:
        if self.where == "memory":
            self._mem[client] = state
            return
        from safetensors.torch import save_file

        path = self.folder / f"client_{client:05d}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        tmp.replace(path)

    def clients(self) -> list[int]:
        if self.where == "memory":
            return sorted(self._mem)
        return sorted(int(p.stem.split("_")[1]) for p in self.folder.glob("client_*.safetensors"))
