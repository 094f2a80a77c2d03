"""Every client's state between rounds, within a memory budget: personal tensors, AdamW moments, what the strategy
keeps on the client (``personal/<name>``, ``opt/<name>/<key>``, ``control/<name>``: flat dicts of CPU tensors).

``where="memory"`` keeps states in memory; with ``memory_mb > 0`` the least recently used states beyond that
budget are written to ``folder`` (one safetensors file per client; a temporary folder when none is given) and read
back when their client is sampled again, so memory is bounded by the budget plus the round's sampled clients,
whatever the number of clients N. ``where="disk"`` writes every state at once and keeps none in memory.

Files are written to a temporary name and renamed, so a kill mid-write leaves the previous state readable. By
default only states put into this store are read: files left in ``folder`` by an earlier run are ignored (a resumed
simulation puts its checkpoint's states back). ``existing=True`` reads them: a Flower node restarted after a crash
finds its client's state where it left it.
"""

from __future__ import annotations

import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import torch

__all__ = ["ClientStore", "state_bytes"]

Tensors = dict[str, torch.Tensor]


def state_bytes(state: Tensors) -> int:
    return sum(v.numel() * v.element_size() for v in state.values())


class ClientStore:
    """Client states by client id: :meth:`get` (``{}`` for a client never stored), :meth:`put`, :meth:`clients`.

    ``stats``: states written to and read from disk, and the seconds spent doing it; ``peak_bytes``: the most bytes
    of state held in memory between puts.
    """

    def __init__(
        self, where: str = "memory", folder: str | Path | None = None, memory_mb: float = 0.0, existing: bool = False
    ) -> None:
        if where not in ("memory", "disk"):
            raise ValueError(f"ClientStore(where={where!r}): use 'memory' or 'disk'")
        if memory_mb < 0:
            raise ValueError(f"ClientStore(memory_mb={memory_mb}): must be >= 0 (0: no budget)")
        if where == "disk" and folder is None:
            raise ValueError("ClientStore('disk') needs a folder")
        self.where, self.budget = where, int(memory_mb * 2**20)
        self._folder, self._tmp = (Path(folder) if folder else None), None
        self._mem: OrderedDict[int, Tensors] = OrderedDict()
        self._on_disk: set[int] = set()  # clients whose latest state is a file
        self.nbytes = self.peak_bytes = 0
        self.stats = {"stored": 0, "loaded": 0, "seconds_store": 0.0, "seconds_load": 0.0}
        if existing and self._folder is not None and self._folder.is_dir():
            self._on_disk = {int(p.stem.split("_")[1]) for p in self._folder.glob("client_*.safetensors")}

    @property
    def folder(self) -> Path:
        if self._folder is None:  # a budget without a folder: spill to a temporary one, removed with the store
            self._tmp = tempfile.TemporaryDirectory(prefix="fedlib-clients-")
            self._folder = Path(self._tmp.name)
        self._folder.mkdir(parents=True, exist_ok=True)
        return self._folder

    def _path(self, client: int) -> Path:
        return self.folder / f"client_{client:05d}.safetensors"

    def get(self, client: int) -> Tensors:
        if client in self._mem:
            self._mem.move_to_end(client)
            return self._mem[client]
        if client not in self._on_disk:
            return {}
        from safetensors.torch import load_file

        t = time.perf_counter()
        state = load_file(str(self._path(client)))
        self.stats["loaded"] += 1
        self.stats["seconds_load"] += time.perf_counter() - t
        return state

    def put(self, client: int, state: Tensors) -> None:
        if self.where == "disk":
            self._write(client, state)
            return
        if client in self._mem:
            self.nbytes -= state_bytes(self._mem.pop(client))
        self._on_disk.discard(client)  # the file, if any, is stale now
        self._mem[client] = state
        self.nbytes += state_bytes(state)
        while self.budget and self.nbytes > self.budget and len(self._mem) > 1:
            old, old_state = self._mem.popitem(last=False)  # least recently used
            self.nbytes -= state_bytes(old_state)
            self._write(old, old_state)
        self.peak_bytes = max(self.peak_bytes, self.nbytes)

    def _write(self, client: int, state: Tensors) -> None:
        from safetensors.torch import save_file

        t = time.perf_counter()
        path = self._path(client)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        tmp.replace(path)
        self._on_disk.add(client)
        self.stats["stored"] += 1
        self.stats["seconds_store"] += time.perf_counter() - t

    def clients(self) -> list[int]:
        return sorted(set(self._mem) | self._on_disk)

    def disk_bytes(self) -> int:
        return sum(self._path(k).stat().st_size for k in self._on_disk)
