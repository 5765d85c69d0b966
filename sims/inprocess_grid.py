"""A Flower ``Grid`` that calls a ClientApp in this process: federations without Ray or sockets.

Each node has its own ``Context`` (so ``context.state`` persists per site across rounds, as
on a SuperNode); a ClientApp exception becomes an error reply, as Flower does. Nodes listed
in ``dead`` never answer (their messages time out); ``silent[node]`` names the message types
(e.g. ``{"train"}``) a node leaves unanswered.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid


class InProcessGrid(Grid):
    def __init__(self, client_app: ClientApp, node_configs: dict[int, dict], run_config: dict | None = None):
        self.client_app = client_app
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config=cfg, state=RecordDict(),
                          run_config=dict(run_config or {}))
            for node, cfg in node_configs.items()
        }
        self.dead: set[int] = set()
        self.silent: dict[int, set[str]] = {}
        self.sent: list[Message] = []
        self._replies: dict[str, Message] = {}
        self._run = None

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid  # as Flower's own grids set it
            self.sent.append(msg)
            ids.append(mid)
            node = msg.metadata.dst_node_id
            if node in self.dead or msg.metadata.message_type in self.silent.get(node, ()):
                continue
            try:
                reply = self.client_app(msg, self.contexts[node])
            except Exception as exc:  # noqa: BLE001 - Flower turns this into an error reply
                reply = Message(Error(code=2, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            self._replies[mid] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in list(message_ids) if m in self._replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


def set_task_identity(run_id: int = 1) -> None:
    """Flower ≥ 1.38 builds instruction messages only inside a task; outside one (benchmarks,
    in-process federations) the identity must be set by hand. Internal Flower API."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1
