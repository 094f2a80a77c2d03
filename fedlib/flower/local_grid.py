"""A Flower ``Grid`` that delivers each message to a ClientApp in this process: no SuperLink, no Ray.

:class:`LocalGrid` holds one node per partition (its ``Context``, with ``partition-id`` in the node config and its
own ``context.state``, as a SuperNode keeps it) and calls the ClientApp on each message it is sent, in order. It runs
the very messages a deployment runs, so the ServerApp's protocols (``FlowerSimulation``'s rounds, Flower's SecAgg+
workflow in :mod:`fedlib.flower.secagg`) can be tested and measured in seconds; it counts the messages and their
bytes. A ClientApp that raises answers with an error message, as a SuperNode does.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

__all__ = ["LocalGrid", "message_bytes"]
RUN_ID, FIRST_NODE = 1, 101  # node ids clear of the SuperLink's own (1)


def message_bytes(msg: Message) -> int:
    """Bytes of a message's payload: its arrays, and the bytes in its config records (SecAgg+ sends keys, shares and
    masked vectors there); numbers and strings are left out."""
    if msg.has_error():
        return 0
    total = sum(len(a.data) for rec in msg.content.array_records.values() for a in rec.values())
    for rec in msg.content.config_records.values():
        for value in rec.values():
            items = value if isinstance(value, list) else [value]
            total += sum(len(v) for v in items if isinstance(v, bytes))
    return total


class LocalGrid(Grid):
    """``num_nodes`` nodes (node ids 101.., partition ids 0..N-1) served by ``client_app`` in this process."""

    def __init__(self, client_app, num_nodes: int, run_config: dict | None = None) -> None:
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.task_identity import TaskIdentity

        # the identity Flower gives a ServerApp process (messages take their run and source node from it), as
        # Flower's own legacy start_grid sets it
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE_ID
        self.client_app = client_app
        self.nodes = {
            FIRST_NODE + k: Context(
                run_id=RUN_ID,
                node_id=FIRST_NODE + k,
                node_config={"partition-id": k, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for k in range(num_nodes)
        }
        self.sent = self.received = self.bytes_down = self.bytes_up = 0
        self.seconds = 0.0

    # ---- the part of Grid that servers use -------------------------------------------------------------
    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        t0, replies = time.perf_counter(), []
        for msg in messages:
            self.sent += 1
            self.bytes_down += message_bytes(msg)
            context = self.nodes[msg.metadata.dst_node_id]
            try:  # a copy, as if it crossed the network: a ClientApp may change what it receives
                reply = self.client_app(copy.deepcopy(msg), context)
            except Exception as err:  # a failing ClientApp: an error reply, as from a SuperNode
                reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            self.received += 1
            self.bytes_up += message_bytes(reply)
            replies.append(reply)
        self.seconds += time.perf_counter() - t0
        return replies

    def counts(self) -> dict:
        """Messages sent and answered, array bytes down and up, and seconds spent in the ClientApps so far."""
        return {
            "messages": self.sent + self.received,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "seconds": self.seconds,
        }

    # ---- the rest of the interface, unused by FlowerSimulation and the SecAgg+ workflow -----------------
    def set_run(self, run) -> None:  # pragma: no cover - interface only
        self._run = run

    @property
    def run(self):  # pragma: no cover - interface only
        return getattr(self, "_run", None)

    def create_message(self, *args, **kwargs):  # pragma: no cover - interface only
        raise NotImplementedError("LocalGrid: build Message objects directly")

    def get_nodes(self):  # pragma: no cover - interface only
        raise NotImplementedError

    def push_messages(self, messages):  # pragma: no cover - interface only
        raise NotImplementedError("LocalGrid delivers through send_and_receive")

    def pull_messages(self, message_ids):  # pragma: no cover - interface only
        raise NotImplementedError("LocalGrid delivers through send_and_receive")
