"""Client-level differential privacy: clipping, Gaussian noise, Poisson client sampling and the accountant.

Central mode is DP-FedAvg (McMahan et al. 2018, "Learning differentially private recurrent language models",
Algorithm 1 with the fixed-size denominator). Per round t, with N clients, sampling rate q = m / N, clip norm C
and noise multiplier z:

    S_t ~ Poisson(q): each client joins independently with probability q (an empty round is still a release)
    u_i = y_i - theta                                   (client i's change of the shared tensors, all of them jointly)
    u_i <- u_i min(1, C / ||u_i||)                      (clipped where the client's result is finished)
    Delta_t = (sum_{i in S_t} u_i + N(0, (z C)^2 I)) / (q N)    (uniform weights; q N = m, the expected cohort)

and the strategy's server step runs on ``Delta_t`` alone (post-processing: momentum, adaptivity). The release
``Delta_t`` is the sampled Gaussian mechanism with sensitivity C under adding or removing one client, so the
run is (epsilon, delta)-DP at the client level with epsilon from the accountant over the rounds released so far.
Local mode (for contrast) adds N(0, (z C)^2 I) to each clipped ``u_i`` on the client before it is sent and the
server takes the plain mean; each upload is then a Gaussian mechanism on that client's data with sensitivity 2C
(replacing its whole dataset), composed over the rounds the client took part in.

What is covered: the shared tensors. Personal layers, the personal head and the AdamW state never leave a client
and are not noised; evaluation metrics, example counts and the un-clipped norms recorded as diagnostics are not
covered either. Strategies that keep per-client state on the server or upload more than the shared tensors are
refused (:meth:`fedlib.strategies.Strategy.privacy_refusal`), and so is layer selection from private data.

Randomness: by default the noise and the cohorts are drawn from the run's seed, so a run repeats (and a resumed
run equals an uninterrupted one); the guarantee then holds only against parties who do not know that seed, and
every client receives it. ``privacy.secure_rng: true`` draws both from the OS's CSPRNG (:mod:`fedlib.secure_random`);
a warning says so when a run adds seeded noise.

The accountant is Opacus' (``opacus.accountants``): RDP (Mironov 2017; Mironov et al. 2019 for the sampled
Gaussian) for the running figure, PRV (Gopi et al. 2021, numerical composition) for a tighter one. Google's
``dp-accounting``, which Flower's own accountant wraps, pins ``attrs<24`` and cannot be installed beside this
project's Jupyter stack (``constraints.txt`` has attrs 26); Opacus adds one small package. Flower's DP wrappers account
with no amplification by sampling (:func:`epsilon` with ``sampling="none"`` gives that figure).
"""

from __future__ import annotations

import functools
import logging
import math
import typing
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .configbase import Config, ConfigError, check, setting
from .secure_random import secure_gaussian_like, secure_poisson_sample
from .server import tensor_norm

__all__ = [
    "PrivacyConfig",
    "Privacy",
    "epsilon",
    "noise_for_epsilon",
    "clip_update",
    "privacy_refusal",
    "strategy_for",
]

Tensors = dict[str, torch.Tensor]
log = logging.getLogger(__name__)
NOISE_STREAM = 7717  # separates the noise's random draws from every other use of (seed, round)


@dataclass
class PrivacyConfig(Config):
    """Client-level differential privacy (module docstring; ``docs/privacy.md``)."""

    SECTION: ClassVar[str] = "privacy"

    mode: typing.Literal["off", "central", "local"] = setting(
        "off",
        "'central': DP-FedAvg, clipped updates summed and noised on the server; 'local': each client noises its own "
        "clipped update before sending it; 'off'",
    )
    clip_norm: float = setting(0.5, "C, the L2 norm each client's shared-tensor update is clipped to (jointly)")
    noise_multiplier: float = setting(1.0, "z: the noise's standard deviation is z C (0: clipping only, no privacy)")
    target_epsilon: float = setting(
        0.0, "> 0: choose z before the run so that epsilon after fed.rounds rounds is at most this (overrides z)"
    )
    delta: float = setting(1e-5, "delta of the (epsilon, delta) guarantee")
    accountant: typing.Literal["rdp", "prv"] = setting(
        "rdp", "Opacus' accountant: 'rdp', Renyi DP (an upper bound); 'prv', privacy random variables (tighter)"
    )
    secure_rng: bool = setting(
        False,
        "draw the noise and the Poisson cohorts from the OS's CSPRNG (fedlib.secure_random), not from fed.seed: "
        "needed for the guarantee against anyone who knows the seed (every client; in local mode the server); "
        "runs then do not repeat",
    )

    def validate(self) -> None:
        o = "privacy"
        check(self.clip_norm > 0, o, "clip_norm", self.clip_norm, "must be > 0")
        check(self.noise_multiplier >= 0, o, "noise_multiplier", self.noise_multiplier, "must be >= 0")
        check(self.target_epsilon >= 0, o, "target_epsilon", self.target_epsilon, "must be >= 0 (0: use z)")
        check(0 < self.delta < 1, o, "delta", self.delta, "must be in (0, 1)")

    @property
    def on(self) -> bool:
        return self.mode != "off"


# ---- accounting ----------------------------------------------------------------------------------------
RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 256)))


@functools.lru_cache(maxsize=1024)
def _rdp_per_release(q: float, z: float) -> np.ndarray:
    """Renyi DP of one sampled Gaussian release at each of :data:`RDP_ORDERS` (it adds up over releases)."""
    from opacus.accountants.analysis.rdp import compute_rdp

    return np.asarray(compute_rdp(q=q, noise_multiplier=z, steps=1, orders=list(RDP_ORDERS)), dtype=float)


@functools.lru_cache(maxsize=8192)
def epsilon(
    q: float, z: float, releases: int, delta: float, accountant: str = "rdp", sampling: str = "poisson"
) -> float:
    """Epsilon at ``delta`` after ``releases`` Gaussian releases with noise multiplier ``z`` (sensitivity 1),
    each on a Poisson sample of rate ``q`` (``sampling="poisson"``), or counted without amplification
    (``sampling="none"``: every release as if every client took part, as Flower's DP wrappers account).
    0 releases: 0; ``z == 0``: infinity. ``accountant``: Opacus' "rdp" or "prv" (tighter)."""
    if releases <= 0:
        return 0.0
    if z <= 0:
        return math.inf
    if sampling not in ("poisson", "none"):
        raise ValueError(f"sampling {sampling!r}: expected 'poisson' or 'none'")
    rate = q if sampling == "poisson" else 1.0
    with warnings.catch_warnings():  # Opacus warns when the best RDP order is its largest: still a valid bound
        warnings.simplefilter("ignore", UserWarning)
        if accountant == "rdp":
            from opacus.accountants.analysis.rdp import get_privacy_spent

            rdp = _rdp_per_release(float(rate), float(z)) * int(releases)
            return float(get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)[0])
        if accountant == "prv":
            from opacus.accountants import PRVAccountant

            acc = PRVAccountant()
            acc.history = [(float(z), float(rate), int(releases))]
            return float(acc.get_epsilon(delta))
    raise ValueError(f"accountant {accountant!r}: expected 'rdp' or 'prv'")


def noise_for_epsilon(target: float, q: float, releases: int, delta: float, accountant: str = "rdp") -> float:
    """The smallest noise multiplier z (to 0.1%) whose epsilon after ``releases`` rounds is at most ``target``."""
    lo, hi = 0.0, 1.0
    while epsilon(q, hi, releases, delta, accountant) > target:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ConfigError(f"privacy.target_epsilon={target} is unreachable (z > 1e4 needed)")
    while hi - lo > 1e-3 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if epsilon(q, mid, releases, delta, accountant) > target else (lo, mid)
    return hi


# ---- the mechanism -------------------------------------------------------------------------------------
def clip_update(x: Tensors, y: Tensors, clip: float) -> tuple[Tensors, float]:
    """``(x + u min(1, C / ||u||), ||u||)`` with ``u = y - x`` over every tensor jointly (float64 norm)."""
    u = {k: y[k].double() - x[k].double().to(y[k].device) for k in x}
    norm = tensor_norm(u)
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: (x[k].double().to(y[k].device) + u[k] * factor).to(y[k].dtype) for k in x}, norm


def gaussian_like(tensors: Tensors, std: float, seed: int) -> Tensors:
    """Independent N(0, std^2) noise shaped as ``tensors`` (float64, CPU), drawn from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    return {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) * std for k, v in sorted(tensors.items())}


@functools.lru_cache(maxsize=1)
def _warn_seeded() -> None:
    """Said once per process, as Opacus does outside its secure mode."""
    log.warning(
        "DP noise and cohorts are drawn from fed.seed (privacy.secure_rng: false), so runs repeat; whoever knows "
        "the seed (every client receives the configuration) can rebuild them, and the guarantee does not hold "
        "against them: set privacy.secure_rng: true for a deployment"
    )


def noise_seed(*keys: int) -> int:
    """The noise's seed from ``keys`` ((seed, round) for the server's draw; a client's round seed in local mode)."""
    return int(np.random.SeedSequence([*keys, NOISE_STREAM]).generate_state(1)[0])


class Privacy:
    """The run's mechanism: :class:`PrivacyConfig` with z resolved (a target epsilon fixes it before the run),
    the sampling rate q = m / N and the seed; used by the client (clip, local noise), the sampler, the server
    (noised aggregate) and the accountant. ``None`` stands for no privacy everywhere."""

    def __init__(self, cfg: PrivacyConfig, num_clients: int, clients_per_round: int, rounds: int, seed: int) -> None:
        self.cfg, self.N, self.m, self.rounds, self.seed = cfg, num_clients, clients_per_round, rounds, seed
        self.q = clients_per_round / num_clients
        self.z = cfg.noise_multiplier
        if cfg.target_epsilon > 0:
            q_eff, z_scale = (self.q, 1.0) if cfg.mode == "central" else (1.0, 0.5)
            self.z = noise_for_epsilon(cfg.target_epsilon, q_eff, rounds, cfg.delta, cfg.accountant) / z_scale
        if not cfg.secure_rng and self.z > 0:
            _warn_seeded()

    @classmethod
    def of(cls, cfg) -> "Privacy | None":
        """The mechanism of an ExperimentConfig, or None when ``privacy.mode`` is off."""
        p = cfg.privacy
        return cls(p, cfg.fed.num_clients, cfg.fed.clients_per_round, cfg.fed.rounds, cfg.fed.seed) if p.on else None

    @property
    def std(self) -> float:
        """The noise's standard deviation per coordinate, z C."""
        return self.z * self.cfg.clip_norm

    def sample(self, round_: int) -> list[int]:
        """Round ``round_``'s clients: each of the N independently with probability q (possibly none); from the
        OS's CSPRNG under ``secure_rng``, else from (seed, round)."""
        if self.cfg.secure_rng:
            return secure_poisson_sample(self.N, self.q)
        rng = np.random.default_rng([self.seed, round_, NOISE_STREAM])
        return [int(k) for k in np.flatnonzero(rng.random(self.N) < self.q)]

    def noise(self, like: Tensors, *keys: int) -> Tensors:
        """N(0, (z C)^2) per coordinate, shaped as ``like`` (float64, CPU): from the OS's CSPRNG under
        ``secure_rng``, else drawn from ``keys`` (reproducible by whoever knows them)."""
        if self.cfg.secure_rng:
            return secure_gaussian_like(like, self.std)
        return gaussian_like(like, self.std, noise_seed(*keys))

    def finish_upload(self, x: Tensors, y: Tensors, seed: int) -> tuple[Tensors, float]:
        """Client side, where its result is finished: clip ``y - x`` to C (and, in local mode, add the noise: drawn
        from ``seed``, the client's seed of the round, or from the OS under ``secure_rng``); returns the upload and
        the norm before clipping."""
        y, norm = clip_update(x, y, self.cfg.clip_norm)
        if self.cfg.mode == "local" and self.z > 0:
            noise = self.noise(y, seed)
            y = {k: (v.double() + noise[k].to(v.device)).to(v.dtype) for k, v in y.items()}
        return y, norm

    def aggregate(self, shared: Tensors, results: list, round_: int) -> tuple[Tensors, dict]:
        """Server side: ``Delta_t`` (module docstring) from the clipped uploads; central mode adds the noise and
        divides by q N (also for an empty round), local mode takes the plain mean of the (already noised) uploads.
        Also the round's diagnostics: ``signal_norm``, || sum of clipped updates || / (q N) before the noise, and
        ``noise_norm``, || noise || / (q N) (about z C sqrt(d) / (q N)); NaN in local mode, where the noise is
        inside each upload."""
        total = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in shared.items()}
        for r in results:
            for k in total:
                total[k] += r.shared[k].double() - shared[k].double()
        if self.cfg.mode == "central":
            noise = self.noise(shared, self.seed, round_) if self.z > 0 else {}
            denom = self.q * self.N
            norms = {"signal_norm": tensor_norm(total) / denom, "noise_norm": tensor_norm(noise) / denom}
            return {k: ((total[k] + noise.get(k, 0.0)) / denom).to(shared[k].dtype) for k in total}, norms
        norms = {"signal_norm": math.nan, "noise_norm": math.nan}
        return {k: (total[k] / max(len(results), 1)).to(shared[k].dtype) for k in total}, norms

    # ---- accounting over the run ------------------------------------------------------------------------
    def account(self, scalars: dict, results: list, uploaded: list[int] | None = None) -> dict:
        """Count this round's release into ``scalars["privacy"]`` (kept in checkpoints, so a resumed run continues
        the count) and return the round's record fields: epsilon so far, z, q, the releases, and the un-clipped
        update norms (median, and the fraction clipped: how to choose C; diagnostics, not private). ``uploaded``:
        every client whose upload reached the server, left out of the mean or not (default: those of ``results``);
        under local DP each is a release of that client's data."""
        old = scalars.get("privacy", {"releases": 0, "participations": {}})
        st = {"releases": old["releases"] + 1, "participations": dict(old["participations"])}
        for k in [r.client for r in results] if uploaded is None else uploaded:
            st["participations"][str(k)] = st["participations"].get(str(k), 0) + 1
        scalars["privacy"] = st
        norms = [r.update_norm for r in results]
        return {
            "epsilon": self.epsilon_of(st),
            "noise_multiplier": self.z,
            "sample_rate": self.q,
            "releases": st["releases"],
            "update_norms": [float(n) for n in norms],
            "update_norm_median": float(np.median(norms)) if norms else math.nan,
            "clipped_fraction": float(np.mean([n > self.cfg.clip_norm for n in norms])) if norms else math.nan,
        }

    def epsilon_of(self, st: dict) -> float:
        """Epsilon at delta so far: central, the sampled Gaussian over every release; local, the Gaussian with
        sensitivity 2C over the most participations of any client."""
        c = self.cfg
        if c.mode == "central":
            return epsilon(self.q, self.z, st["releases"], c.delta, c.accountant)
        most = max(st["participations"].values(), default=0)
        return epsilon(1.0, self.z / 2, most, c.delta, c.accountant, sampling="none")


def strategy_for(cfg):
    """The strategy object of an ExperimentConfig with its privacy mechanism attached (None when off)."""
    from .strategies import get_strategy

    strategy = get_strategy(cfg.strategy)
    strategy.privacy = Privacy.of(cfg)
    return strategy


def privacy_refusal(cfg) -> str | None:
    """Why an ExperimentConfig cannot run under its ``privacy`` section (naming the fields), or None."""
    if not cfg.privacy.on:
        return None
    from .strategies import STRATEGIES

    strategy = STRATEGIES[cfg.strategy.name]
    why = strategy(cfg.strategy).privacy_refusal()
    if why:
        return f"privacy.mode={cfg.privacy.mode!r} with strategy.name={cfg.strategy.name!r}: {why}"
    sel = cfg.selection
    if strategy.layers == "selected" and (sel.choose == "score" or sel.automatic):
        return (
            f"privacy.mode={cfg.privacy.mode!r} with selection.choose={sel.choose!r}, "
            f"selection.shared_layers={sel.shared_layers}, selection.share_ratio={sel.share_ratio}: layer scores "
            "and Hessian traces are computed on private data and uploaded without noise; fix the layers without "
            "data (selection.choose 'first', 'last' or 'random' with selection.shared_layers or share_ratio > 0)"
        )
    return None
