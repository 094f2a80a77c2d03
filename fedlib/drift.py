"""Client drift, measured: how far each client's update strays from the round's aggregate.

For round t with global x and client results y_i, the client update is u_i = y_i - x and the aggregate
update u = sum_i p_i u_i. Drift of client i: ``||u_i - u|| / ||u||`` (relative), and the cosine between
u_i and u. Heterogeneous (non-IID) data makes clients pull apart; FedProx, SCAFFOLD and FedPepTAO's
control variates are remedies (Karimireddy et al. 2020 name the effect "client drift").

:class:`DriftRecorder` wraps the client-update function of a simulation, so any strategy can be
watched without changing it; :func:`pca_2d` projects the recorded client prompts to two dimensions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .client import client_update

__all__ = ["DriftRecorder", "pca_2d"]


def _flat(tensors: dict) -> torch.Tensor:
    return torch.cat([tensors[k].reshape(-1).double() for k in sorted(tensors)])


class DriftRecorder:
    """Pass as ``client_fn`` to :class:`fedlib.simulation.Simulation`; read :meth:`frame` afterwards.

    Keeps, per round, each reporting client's flattened shared tensors (for PCA) and update. The round loop tells it
    where a round starts (:meth:`start_round`) and which clients it left out of the aggregate (:meth:`left_out`:
    non-finite or diverged), so the aggregate here is the server's; called outside it, a new global starts a round.
    """

    def __init__(self, fn=client_update, keep_vectors: bool = True) -> None:
        self.fn, self.keep_vectors = fn, keep_vectors
        self.rounds: list[dict] = []
        self._round_key = None

    def start_round(self, round_: int) -> None:
        """Round ``round_`` (1-based) starts: the next clients belong to it."""
        self._round_key = ("round", round_)
        self.rounds.append({"round": round_, "x": None, "clients": [], "y": [], "n": []})

    def left_out(self, client: int) -> None:
        """The round left ``client``'s result out of its aggregate: so does the recorder."""
        cur = self.rounds[-1]
        keep = [i for i, k in enumerate(cur["clients"]) if k != client]
        for field in ("clients", "y", "n"):
            cur[field] = [cur[field][i] for i in keep]

    def __call__(self, model, client, global_shared, *args, **kwargs):
        res, state = self.fn(model, client, global_shared, *args, **kwargs)
        if not (isinstance(self._round_key, tuple) or id(global_shared) == self._round_key):
            self._round_key = id(global_shared)
            self.rounds.append({"x": None, "clients": [], "y": [], "n": []})
        cur = self.rounds[-1]
        if cur["x"] is None:
            cur["x"] = _flat(global_shared)
        cur["clients"].append(client)
        cur["y"].append(_flat(res.shared))
        cur["n"].append(res.num_examples)
        return res, state

    def frame(self) -> pd.DataFrame:
        """One row per (round, client): relative drift, cosine to the aggregate update, update norm."""
        rows = []
        for t, r in enumerate(self.rounds, start=1):
            if not r["y"]:  # no client reported (or every one was left out)
                continue
            t = r.get("round", t)
            u = torch.stack([y - r["x"] for y in r["y"]])  # [m, D]
            p = torch.tensor(r["n"], dtype=torch.float64)
            agg = (p[:, None] * u).sum(0) / p.sum()
            for k, ui in zip(r["clients"], u):
                rows.append(
                    {
                        "round": t,
                        "client": k,
                        "drift": float((ui - agg).norm() / agg.norm().clamp_min(1e-12)),
                        "cosine": float(torch.nn.functional.cosine_similarity(ui, agg, dim=0)),
                        "update_norm": float(ui.norm()),
                    }
                )
        return pd.DataFrame(rows)

    def vectors(self) -> tuple[np.ndarray, pd.DataFrame]:
        """All recorded client vectors ``[n, D]`` and their (round, client) labels, globals included."""
        vecs, labels = [], []
        for t, r in enumerate(self.rounds, start=1):
            if r["x"] is None:
                continue
            t = r.get("round", t)
            vecs.append(r["x"])
            labels.append({"round": t, "client": -1})
            for k, y in zip(r["clients"], r["y"]):
                vecs.append(y)
                labels.append({"round": t, "client": k})
        return torch.stack(vecs).numpy(), pd.DataFrame(labels)


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """First two principal components ``[n, 2]`` of ``vectors`` ``[n, D]`` (centred, by SVD)."""
    x = torch.as_tensor(vectors, dtype=torch.float64)
    x = x - x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return (x @ v[:2].T).numpy()
