"""A site's runtime behind the ClientApp: which site this node is, its data and its state.

Thin glue: the round itself is :class:`fedreid.federated_client.FederatedClient`. What the
site remembers between rounds (mask, CRR backup, head or memory) goes to ``Context.state``
and, when the node has a state directory, to ``<state-dir>/<site>.pt`` after every round, so
a restarted site continues where it stopped. Nothing private is put in a reply.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.logger import log

from fedreid.client_state import ClientState
from fedreid.config import from_flat
from fedreid.config.schema import FedReIDConfig
from fedreid.data.split_images import SplitImages, load_split_images
from fedreid.federated_client import FederatedClient
from fedreid.methods import get_method
from fedreid.training import initial_shared_state
from wire.records import arrays_to_record, record_to_arrays

STATE_ARRAYS = "fedreid.site-arrays"
STATE_SCALARS = "fedreid.site-scalars"
_DATA_CACHE: dict[tuple[str, str, int, int], SplitImages] = {}


@dataclass(frozen=True)
class NodeBinding:
    """Which site a node serves, the method it runs, and where its data and state live."""

    name: str
    method: str
    data_dir: Path
    dataset: str
    state_file: Path | None


def config_for(context: Context, base: FedReIDConfig | None) -> FedReIDConfig:
    """The run's config (from the simulation harness or Flower's run config) + node device."""
    cfg = base if base is not None else from_flat(dict(context.run_config))
    node = dict(context.node_config)
    return replace(cfg, device=str(node["device"])) if "device" in node else cfg


def identify(cfg: FedReIDConfig, context: Context, state_dir: Path | None) -> NodeBinding:
    """Simulation nodes are numbered (``partition-id``); deployed nodes name their site."""
    node = dict(context.node_config)
    if "site" in node:
        name = str(node["site"])
        data_dir = Path(str(node.get("data-root", Path(cfg.data.root) / name)))
        dataset = str(node.get("dataset", cfg.data.dataset))
    elif "partition-id" in node:
        pid = int(node["partition-id"])
        if pid >= len(cfg.data.sites):
            raise ValueError(
                f"partition-id {pid} but data.sites lists {len(cfg.data.sites)} sites; run the "
                "simulation with num-supernodes equal to the number of sites"
            )
        name = cfg.data.sites[pid]
        data_dir = Path(cfg.data.root) / name
        dataset = cfg.data.dataset
    else:
        raise ValueError(
            "node config has neither 'site' nor 'partition-id'; start the SuperNode with "
            "--node-config 'site=\"NAME\" data-root=\"/path\"' (see `fedreid site join`)"
        )
    folder = state_dir or (Path(str(node["state-dir"])) if "state-dir" in node else None)
    method = str(node.get("method") or cfg.method_of(name))  # `fedreid site join --method`
    return NodeBinding(name, method, data_dir, dataset, folder / f"{name}.pt" if folder else None)


def site_images(cfg: FedReIDConfig, ident: NodeBinding) -> SplitImages:
    """Decoded images, cached per process (simulation actors serve several sites)."""
    key = (str(ident.data_dir), ident.dataset, cfg.data.height, cfg.data.width)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_split_images(ident.data_dir, ident.dataset,
                                             (cfg.data.height, cfg.data.width), seed=cfg.seed)
    return _DATA_CACHE[key]


def client_for(cfg: FedReIDConfig, ident: NodeBinding, state: ClientState | None = None) -> FederatedClient:
    return FederatedClient(cfg, site_images(cfg, ident), state, method_name=ident.method)


def load_state(context: Context, ident: NodeBinding) -> ClientState:
    if STATE_ARRAYS in context.state.array_records:
        arrays = record_to_arrays(context.state[STATE_ARRAYS])
        scalars = dict(context.state[STATE_SCALARS]) if STATE_SCALARS in context.state.config_records else {}
        return ClientState.from_flat(arrays, scalars)
    if ident.state_file and ident.state_file.exists():
        return ClientState.load(ident.state_file)
    return ClientState()


def previous_state_file(state_file: Path) -> Path:
    """Where the state from before the last trained round is kept (``<site>.prev.pt``)."""
    return state_file.with_suffix(".prev.pt")


def state_for_round(context: Context, ident: NodeBinding, server_round: int) -> tuple[ClientState, bool]:
    """The state to train ``server_round`` from, and whether the round is being redone.

    A coordinator that crashed after this site saved round r but before it aggregated the
    round redoes round r when resumed. Training it again on top of round r's state would
    prune twice and move CRR on a round; the state saved before round r is used instead.
    """
    state = load_state(context, ident)
    if state.last_round < server_round or not ident.state_file:
        return state, False
    prev_file = previous_state_file(ident.state_file)
    if prev_file.exists():
        prev = ClientState.load(prev_file)
        if prev.last_round < server_round:
            log(WARNING, "site %s: round %d is being redone (coordinator resumed); training from the "
                "state saved after round %d", ident.name, server_round, prev.last_round)
            return prev, True
    log(WARNING, "site %s: round %d was already trained here and no earlier state is kept; "
        "training on top of it", ident.name, server_round)
    return state, False


def save_state(context: Context, ident: NodeBinding, state: ClientState, keep_previous: bool = False) -> None:
    """Context.state (this run) and the state file (across restarts). ``keep_previous``: move
    the state file being replaced to ``<site>.prev.pt`` first (see :func:`state_for_round`)."""
    arrays, scalars = state.to_flat()
    context.state[STATE_ARRAYS] = arrays_to_record(arrays)
    context.state[STATE_SCALARS] = ConfigRecord({k: v for k, v in scalars.items() if v is not None})
    if ident.state_file:
        if keep_previous and ident.state_file.exists():
            os.replace(ident.state_file, previous_state_file(ident.state_file))
        state.save(ident.state_file)


def _limit_threads(cfg: FedReIDConfig, context: Context) -> None:
    """Simulated sites share the machine: each uses its Ray CPU share. A deployed site uses
    all its cores unless its node config says ``num-threads``."""
    node = dict(context.node_config)
    if "num-threads" in node:
        threads = int(node["num-threads"])
    elif "partition-id" in node:
        threads = max(1, int(cfg.sim.client_cpus))
    else:
        return
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _reply(msg: Message, arrays: dict[str, np.ndarray] | None, metrics: dict[str, Any],
           ident: NodeBinding) -> Message:
    content = RecordDict({
        "metrics": MetricRecord({k: float(v) for k, v in metrics.items()
                                 if isinstance(v, (int, float, np.floating)) and np.isfinite(v)}),
        "meta": ConfigRecord({"site": ident.name, "method": ident.method}),
    })
    if arrays is not None:
        content["arrays"] = arrays_to_record(arrays)
    return Message(content=content, reply_to=msg)


def handle_train(msg: Message, context: Context, base: FedReIDConfig | None = None,
                 state_dir: Path | None = None) -> Message:
    cfg = config_for(context, base)
    _limit_threads(cfg, context)
    ident = identify(cfg, context, state_dir)
    started = time.perf_counter()
    server_round = int(msg.content["config"]["server-round"])
    state, redo = state_for_round(context, ident, server_round)
    client = client_for(cfg, ident, state)
    arrays = record_to_arrays(msg.content["arrays"])
    reply_arrays, metrics = client.train_round(arrays, server_round)
    save_state(context, ident, client.state, keep_previous=not redo)
    metrics["redone_round"] = float(redo)
    metrics["round_seconds"] = time.perf_counter() - started
    return _reply(msg, reply_arrays, metrics, ident)


def handle_evaluate(msg: Message, context: Context, base: FedReIDConfig | None = None,
                    state_dir: Path | None = None) -> Message:
    cfg = config_for(context, base)
    _limit_threads(cfg, context)
    ident = identify(cfg, context, state_dir)
    client = client_for(cfg, ident, load_state(context, ident))
    arrays = record_to_arrays(msg.content["arrays"])
    return _reply(msg, None, client.evaluate_round(arrays), ident)


def handle_query(msg: Message, context: Context, base: FedReIDConfig | None = None,
                 state_dir: Path | None = None) -> Message:
    """Admission: which site this node is, its method, and the signature (key → shape,
    dtype) of what it would send, so the coordinator can refuse a site that does not fit."""
    cfg = config_for(context, base)
    _limit_threads(cfg, context)
    ident = identify(cfg, context, state_dir)
    state = initial_shared_state(cfg, ident.method)
    signature = {k: [list(v.shape), str(v.dtype)] for k, v in state.items()}
    content = RecordDict({"meta": ConfigRecord({
        "site": ident.name, "method": ident.method,
        "arch": get_method(ident.method).arch(cfg.model), "signature": json.dumps(signature),
    })})
    return Message(content=content, reply_to=msg)
