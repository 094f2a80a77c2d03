"""``flower-supernode`` with a shorter heartbeat: ``python -m fedlib.flower.supernode --heartbeat 10 [flags]``.

Flower 1.42 hard-codes a SuperNode's heartbeat interval (``HEARTBEAT_DEFAULT_INTERVAL``, 30 s); the SuperLink marks a
node offline after ``HEARTBEAT_PATIENCE`` (2) intervals without one, so a crashed node's messages fail only after a
minute. The interval is the node's to declare (the SuperLink accepts ``HEARTBEAT_MIN_INTERVAL`` = 10 s to 30 min):
this launcher sets it in the node's process, where the SuperNode declares it to the SuperLink and its heartbeat
sender reads it, then runs Flower's own ``flower-supernode`` with the other flags.
:class:`fedlib.flower.deploy.LocalDeployment` uses it for ``heartbeat=``. Nothing happens at import.

Only those two modules change. ``flwr.common.constant`` stays as it is: the node's task store reads the same constant
for its ClientApp tasks (a task's token lives one interval until the ClientApp process starts, then two intervals past
each heartbeat, which ClientApp processes send every ~20 s by Flower's own 30 s). Patching the constant shortened those
lifetimes to 10 s and 20 s, and a ClientApp training longer than one of its heartbeat gaps was reported "ClientApp
stopped responding" (seen on a slow 2-core CPU).
"""

from __future__ import annotations

import sys


def set_heartbeat(seconds: float) -> None:
    """Declare and send the node's heartbeats every ``seconds`` in this process (Flower's bounds checked here, not on
    the SuperLink after the node started); ClientApp task heartbeats keep Flower's interval."""
    import flwr.supercore.heartbeat as sender
    import flwr.supernode.fleet_http_connection as connection
    from flwr.common.constant import HEARTBEAT_MAX_INTERVAL as high
    from flwr.common.constant import HEARTBEAT_MIN_INTERVAL as low

    if not low <= seconds <= high:
        raise SystemExit(f"--heartbeat {seconds}: Flower accepts {low} to {high} seconds")
    for module in (sender, connection):  # not flwr.common.constant: the task store reads it (module docstring)
        if not hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):  # a Flower version that moved it
            raise SystemExit(f"{module.__name__} has no HEARTBEAT_DEFAULT_INTERVAL: this Flower is not 1.42")
        module.HEARTBEAT_DEFAULT_INTERVAL = seconds


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "--heartbeat":
        raise SystemExit("usage: python -m fedlib.flower.supernode --heartbeat SECONDS [flower-supernode flags]")
    set_heartbeat(float(argv[1]))
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *argv[2:]]
    flower_supernode()


if __name__ == "__main__":
    main()
