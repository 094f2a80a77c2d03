"""``flwr run`` entry point for the ClientApp (``[tool.flwr.app.components] clientapp``)."""

from .apps import make_client_app

app = make_client_app()
