"""FedPepTAO's layer selection: which prompt layers are shared (``docs/method.md``, "Layer selection").

:func:`select_layers` is a function of explicit inputs: the model workspace (its layers all shared), the
encoded training data, the partition and the config. Steps:

1. score every layer on one batch of ``selection.score_batch`` examples per client (:mod:`fedlib.scoring`:
   ``s_kl = sum_j (log lambda_j + 1/lambda_j)`` of the cosine-similarity matrix of layer l's hidden states),
   weighted over clients by data size;
2. choose how many layers to share, k: ``selection.shared_layers``, else ``share_ratio`` of the layers, else
   the Hessian criterion (:func:`hessian_ratio`): ``hessian_warmup_rounds`` of FedAvg on all layers, run by
   the simulator's own round function (:class:`fedlib.rounds.Federation`), then, on each sampled client's
   prompt loss (:mod:`fedlib.hessian`), the rule in use: the eigenvalue density's keep ratio (the reference's,
   ``count_rule: density``) or the per-layer Hessian-block traces (``count_rule: trace``, scale-free: the
   fewest layers covering ``trace_coverage`` of the client-averaged total); each costs ``hessian_iters``
   Hessian-vector products per probed client, and ``selection.compare_rules`` measures and records both; the
   model then returns to its initial prompts;
3. share the k best-scored layers; the others are ``selection.nonselected`` (``"auto"``: personal for
   encoders, off for decoders, the reference's GPT-2 choice).

The simulator calls it when a run starts (not when it is built); notebook 02 calls it as well. Its cost is
part of the run's: every client downloads the initial prompts and uploads its L scores; the warm-up rounds
cost what FedAvg rounds cost; the probed clients download the warmed-up prompts and upload their measurement
(1 number, the keep ratio, for the density rule; L, the layer traces, for the trace rule; 1 + L for both) each
(``bytes_down``/``bytes_up``; the simulator logs them as round 0, phase "selection").
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .client import ClientStore, client_seed
from .encode import Encoded, collate
from .hessian import client_curvature, coverage_count, layer_count
from .rounds import Federation
from .scoring import score_layers
from .server import tensor_bytes
from .strategies import get_strategy

__all__ = ["select_layers", "hessian_ratio", "count_from_curvature", "roles_from_ranking", "RECORD_VERSION"]

RECORD_VERSION = 2
"""The version of :func:`select_layers`' record, raised when what it measures or charges changes (2: only the count
rule in use is measured, its bytes counted accordingly); a grid reuses only records of today's version."""

log = logging.getLogger(__name__)


def roles_from_ranking(ranking: list[int], k: int, nonselected: str) -> tuple[str, ...]:
    """The top ``k`` layers of ``ranking`` shared, the rest ``nonselected`` (``"personal"`` or ``"off"``)."""
    top = set(ranking[:k])
    return tuple("shared" if layer in top else nonselected for layer in range(len(ranking)))


def hessian_ratio(model, train: Encoded, partition, cfg, device) -> dict:
    """Warm up with FedAvg on all layers, then measure the sampled clients' curvature for the count rule in use (both
    with ``compare_rules``): their mean keep ratio (density) and/or mean layer traces and their count (step 2 above).

    The warm-up's rounds are records like the run's own (``"warmup"``: their list); ``model`` ends at the
    prompts it started with.
    """
    fed, sel = cfg.fed, cfg.selection
    init = model.state()
    fedavg = get_strategy("fedavg")
    fl = Federation(cfg.with_strategy("fedavg"), model, train, partition.train, fedavg, ClientStore(), device, stream=1)
    server = fedavg.init_server(model.state("shared"))
    records, sampled = [], []
    for t in range(sel.hessian_warmup_rounds):
        server, rec = fl.round(server, t)
        records.append(rec)
        sampled = rec["clients"]
    model.load_state(server.shared)
    sampled = sampled or fl.sample(0)
    pad = model.info.tokenizer.pad_token_id
    rules = ("density", "trace") if sel.compare_rules else (sel.count_rule,)
    per_client = []
    for k in sampled:
        model.load_state(fl.personal_of(k))  # its own personal tensors (a personal head), not the last trained one's
        idx = partition.train[k]
        order = np.random.default_rng([fed.seed, k, 13]).permutation(len(idx))[: cfg.train.batch_size]
        batch, seed = collate(train, [idx[i] for i in order], pad), client_seed(fed.seed, 0, k, stream=2)
        per_client.append(client_curvature(model, batch, sel.hessian_iters, seed, device, sel.hessian_relative, rules))
    model.load_state(init)  # training proper starts from the initial prompts
    out = {"rules": list(rules), "clients": sampled, "relative": sel.hessian_relative, "warmup": records}
    if "density" in rules:
        ratios = [r["ratio"] for r in per_client]
        out.update(ratio=float(np.mean(ratios)), client_ratios=ratios)
        out.update(eigenvalues=per_client[0]["eigenvalues"], weights=per_client[0]["weights"])
    if "trace" in rules:
        traces = [r["traces"] for r in per_client]
        mean_traces = np.mean(traces, axis=0)
        out.update(traces=mean_traces.tolist(), client_traces=[t.tolist() for t in traces])
        out["trace_count"] = coverage_count(mean_traces, sel.trace_coverage)
    sent = ("density" in rules) + ("trace" in rules) * model.info.num_layers  # a keep ratio; L layer traces
    out["bytes_down"] = sum(r["bytes_down"] for r in records) + len(sampled) * tensor_bytes(server.shared)
    out["bytes_up"] = sum(r["bytes_up"] for r in records) + 8 * sent * len(sampled)
    return out


def count_from_curvature(hessian: dict, num_layers: int, rule: str, coverage: float) -> tuple[int, str]:
    """k, how many layers to share, from :func:`hessian_ratio`'s record, and a phrase saying how (step 2 above).

    ``rule="density"``: ``k = round(r L)``, r the mean keep ratio of the eigenvalue density (the reference);
    ``rule="trace"``: the fewest layers whose client-averaged Hessian-block traces cover ``coverage`` (tau) of the
    total (:func:`fedlib.hessian.coverage_count`; scale-free). With ``selection.compare_rules`` the record holds both,
    so a notebook can compare them, or vary tau, without measuring again."""
    if rule not in ("density", "trace"):
        raise ValueError(f"count rule {rule!r}: expected 'density' or 'trace'")
    if rule not in hessian.get("rules", ("density", "trace")):
        raise ValueError(f"count rule {rule!r} was not measured (selection.compare_rules=True measures both)")
    if rule == "trace":
        return coverage_count(np.asarray(hessian["traces"]), coverage), f"Hessian-block traces covering {coverage:g}"
    return layer_count(hessian["ratio"], num_layers), "Hessian eigen-density"


def _ranking(by_score: list[int], choose: str, seed: int) -> list[int]:
    """The order in which layers are shared: by score (the method), or a naive order for the ablation."""
    layers = sorted(by_score)
    if choose == "random":
        return [int(i) for i in np.random.default_rng([seed, 29]).permutation(layers)]
    return {"score": list(by_score), "first": layers, "last": layers[::-1]}[choose]


def select_layers(model, train: Encoded, partition, cfg, device) -> dict:
    """Scores, layer count and roles (module docstring), JSON-serialisable: ``{"ranking", "scores", "per_client",
    "weights", "k", "how", "roles", "hessian", "seconds", "bytes_down", "bytes_up"}``. ``cfg``: an ExperimentConfig."""
    sel, t0 = cfg.selection, time.perf_counter()
    num_layers = model.info.num_layers
    if cfg.privacy.on:  # under DP the layers are chosen without client data (fedlib.privacy.privacy_refusal)
        nan = np.full(num_layers, np.nan)
        scores = {"ranking": list(range(num_layers)), "scores": nan, "per_client": nan[None], "weights": nan}
        down = up = 0
    else:
        scores = score_layers(model, train, partition.train, sel.score_batch, cfg.fed.seed, device)
        clients = sum(1 for s in partition.train if s)
        down, up = clients * tensor_bytes(model.state("shared")), clients * 8 * (num_layers + 1)  # prompts; scores
    hessian = None
    if sel.shared_layers:
        k, how = min(sel.shared_layers, num_layers), "fixed count (selection.shared_layers)"
    elif sel.share_ratio:
        k, how = layer_count(sel.share_ratio, num_layers), "fixed ratio (selection.share_ratio)"
    else:
        hessian = hessian_ratio(model, train, partition, cfg, device)
        k, how = count_from_curvature(hessian, num_layers, sel.count_rule, sel.trace_coverage)
        down, up = down + hessian["bytes_down"], up + hessian["bytes_up"]
    nonselected = sel.nonselected
    if nonselected == "auto":
        nonselected = "off" if model.info.kind == "decoder" else "personal"
    ranking = _ranking(scores["ranking"], sel.choose, cfg.fed.seed)
    roles = roles_from_ranking(ranking, k, nonselected)
    log.info(
        "layer selection: sharing %d of %d layers %s (%s); others %s",
        k,
        num_layers,
        sorted(ranking[:k]),
        how if sel.choose == "score" else f"{how}; the {sel.choose} {k} layers",
        nonselected,
    )
    return {
        "version": RECORD_VERSION,
        "ranking": ranking,
        "choose": sel.choose,
        "scores": scores["scores"].tolist(),
        "per_client": np.nan_to_num(scores["per_client"]).tolist(),
        "weights": scores["weights"].tolist(),
        "k": k,
        "how": how,
        "roles": list(roles),
        "hessian": hessian,
        "seconds": time.perf_counter() - t0,
        "bytes_down": int(down),
        "bytes_up": int(up),
    }
