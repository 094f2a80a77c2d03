"""Experiment tracking, offline, behind one flag (``run.tracking: tensorboard``; off by default).

TensorBoard event files: written locally with no server, account or network, read by ``tensorboard --logdir runs``
(or any TensorBoard reader) and small enough to keep beside ``results.jsonl``, which stays the record of truth.
MLflow's file store would do too, but pulls a large dependency tree and a server to view it; TensorBoard's
writer is ``torch.utils.tensorboard``, already part of torch, with the ``tensorboard`` package.

Per round (step = round; layer selection is round 0): the metrics of every evaluation view, the training loss and
local steps, bytes and seconds (per round and cumulative), the strategy's diagnostics (FedPepTAO: server_ratio,
c_norm, c_i_norm, server_lr), the number of failed clients; once: the whole configuration as text.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["Tracker", "make_tracker"]

GROUPS = {  # record key prefix or name -> TensorBoard section
    "global_": "metrics",
    "personal": "metrics",
    "train_loss": "train",
    "local_steps": "train",
    "bytes": "cost",
    "cum_": "cost",
    "seconds": "cost",
    "failed": "clients",
    "reported": "clients",
    "epsilon": "privacy",
    "noise_multiplier": "privacy",
    "sample_rate": "privacy",
    "releases": "privacy",
    "update_norm": "privacy",
    "clipped_fraction": "privacy",
    "signal_norm": "privacy",
    "noise_norm": "privacy",
}
SKIP = {"round", "phase", "clients", "failures"}


def _section(key: str) -> str:
    return next((group for prefix, group in GROUPS.items() if key.startswith(prefix)), "diagnostics")


class Tracker:
    """A TensorBoard writer for one run: :meth:`log_round` per round record, :meth:`close` at the end."""

    def __init__(self, logdir: str | Path, config: dict) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch's writer needs the tensorboard package
            raise ImportError(
                "run.tracking='tensorboard' needs the tensorboard package: pip install -e '.[tracking]'"
            ) from err
        self.logdir = Path(logdir)
        self.writer = SummaryWriter(str(self.logdir))
        self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log_round(self, rec: dict) -> None:
        step = int(rec["round"])
        for key, value in rec.items():
            if key in SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"{_section(key)}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def make_tracker(run_cfg, config: dict, out_dir: Path | None) -> Tracker | None:
    """The run's tracker from ``run.tracking`` (None when off): event files in ``run.tracking_dir``, else
    ``<out_dir>/tensorboard``."""
    if run_cfg.tracking == "off":
        return None
    logdir = run_cfg.tracking_dir or (out_dir / "tensorboard" if out_dir else None)
    if logdir is None:
        raise ValueError("run.tracking='tensorboard' needs an out_dir or run.tracking_dir for its event files")
    return Tracker(logdir, config)
