"""The site's Flower ClientApp: ``train`` and ``evaluate`` handlers over :mod:`clients.runtime`.

``app`` (used by ``flwr run .`` and SuperNodes) reads the config from Flower's run config;
the simulation harness builds its own app with the resolved config via ``make_client_app``.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients.faults import mods_from_env
from clients.runtime import handle_evaluate, handle_query, handle_train
from fedreid.config.schema import FedReIDConfig


def make_client_app(cfg: FedReIDConfig | None = None, state_dir: Path | None = None) -> ClientApp:
    client = ClientApp(mods=mods_from_env())  # empty unless fault injection is asked for

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, cfg, state_dir)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, cfg, state_dir)

    @client.query()
    def query(msg: Message, context: Context) -> Message:
        return handle_query(msg, context, cfg, state_dir)

    return client


app = make_client_app()
