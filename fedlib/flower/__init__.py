"""FedPepTAO on Flower (``flwr`` >= 1.42, Message API): the same client and server functions as the
in-process simulator, run by Flower's ServerApp and ClientApp (simulation or real deployment).

See :mod:`fedlib.flower.apps`; ``flower_app/`` holds a ``flwr run`` project using them.
"""
