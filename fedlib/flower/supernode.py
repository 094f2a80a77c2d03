"""``flower-supernode`` with a shorter heartbeat: ``python -m fedlib.flower.supernode --heartbeat 10 [flags]``.

Flower 1.42 hard-codes a SuperNode's heartbeat interval (``HEARTBEAT_DEFAULT_INTERVAL``, 30 s); the SuperLink marks a
node offline after ``HEARTBEAT_PATIENCE`` (2) intervals without one, so a crashed node's messages fail only after a
minute. The interval is the node's to declare (the SuperLink accepts ``HEARTBEAT_MIN_INTERVAL`` = 10 s to 30 min):
this launcher sets it in the node's process, where Flower's SuperNode and its heartbeat sender read it, then runs
Flower's own ``flower-supernode`` with the other flags. :class:`fedlib.flower.deploy.LocalDeployment` uses it for
``heartbeat=``. Nothing happens at import.
"""

from __future__ import annotations

import sys


def set_heartbeat(seconds: float) -> None:
    """Declare and send heartbeats every ``seconds`` in this process (Flower's bounds checked here, not on the
    SuperLink after the node started)."""
    import flwr.common.constant as constant
    import flwr.supercore.heartbeat as sender
    import flwr.supernode.fleet_http_connection as connection

    low, high = constant.HEARTBEAT_MIN_INTERVAL, constant.HEARTBEAT_MAX_INTERVAL
    if not low <= seconds <= high:
        raise SystemExit(f"--heartbeat {seconds}: Flower accepts {low} to {high} seconds")
    for module in (constant, sender, connection):
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
