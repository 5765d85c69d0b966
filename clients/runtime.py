"""A site's runtime behind the ClientApp: which site this node is, its data and its state.

Thin glue: the round itself is :class:`fedreid.site.FederatedSite`. What the site remembers
between rounds (mask, CRR backup, head or memory) goes to ``Context.state`` and, when the
node has a state directory, to ``<state-dir>/<site>.pt`` after every round, so a restarted
site continues where it stopped. Nothing private is put in a reply.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.logger import log

from fedreid.config import from_flat
from fedreid.config.schema import FedReIDConfig
from fedreid.engine import SiteData, load_site
from fedreid.site import FederatedSite, SiteState
from server.records import arrays_to_record, record_to_arrays

STATE_ARRAYS = "fedreid.site-arrays"
STATE_SCALARS = "fedreid.site-scalars"
_DATA_CACHE: dict[tuple[str, str, int, int], SiteData] = {}


@dataclass(frozen=True)
class SiteIdentity:
    name: str
    data_dir: Path
    dataset: str
    state_file: Path | None


def config_for(context: Context, base: FedReIDConfig | None) -> FedReIDConfig:
    """The run's config (from the simulation harness or Flower's run config) + node overrides."""
    cfg = base if base is not None else from_flat(dict(context.run_config))
    node = dict(context.node_config)
    overrides = {k: node[k] for k in ("method", "device") if k in node}
    if overrides:
        from dataclasses import replace

        cfg = replace(cfg, device=str(overrides.get("device", cfg.device)),
                      method=replace(cfg.method, name=str(overrides.get("method", cfg.method.name))))
    return cfg


def identify(cfg: FedReIDConfig, context: Context, state_dir: Path | None) -> SiteIdentity:
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
    return SiteIdentity(name, data_dir, dataset, folder / f"{name}.pt" if folder else None)


def site_data(cfg: FedReIDConfig, ident: SiteIdentity) -> SiteData:
    """Decoded images, cached per process (simulation actors serve several sites)."""
    key = (str(ident.data_dir), ident.dataset, cfg.data.height, cfg.data.width)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_site(ident.data_dir, ident.dataset, (cfg.data.height, cfg.data.width),
                                     seed=cfg.seed)
    return _DATA_CACHE[key]


def load_state(context: Context, ident: SiteIdentity) -> SiteState:
    if STATE_ARRAYS in context.state.array_records:
        arrays = record_to_arrays(context.state[STATE_ARRAYS])
        scalars = dict(context.state[STATE_SCALARS]) if STATE_SCALARS in context.state.config_records else {}
        return SiteState.from_flat(arrays, scalars)
    if ident.state_file and ident.state_file.exists():
        return SiteState.load(ident.state_file)
    return SiteState()


def previous_state_file(state_file: Path) -> Path:
    """Where the state from before the last trained round is kept (``<site>.prev.pt``)."""
    return state_file.with_suffix(".prev.pt")


def state_for_round(context: Context, ident: SiteIdentity, server_round: int) -> tuple[SiteState, bool]:
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
        prev = SiteState.load(prev_file)
        if prev.last_round < server_round:
            log(WARNING, "site %s: round %d is being redone (coordinator resumed); training from the "
                "state saved after round %d", ident.name, server_round, prev.last_round)
            return prev, True
    log(WARNING, "site %s: round %d was already trained here and no earlier state is kept; "
        "training on top of it", ident.name, server_round)
    return state, False


def save_state(context: Context, ident: SiteIdentity, state: SiteState, keep_previous: bool = False) -> None:
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
           ident: SiteIdentity, cfg: FedReIDConfig) -> Message:
    content = RecordDict({
        "metrics": MetricRecord({k: float(v) for k, v in metrics.items()
                                 if isinstance(v, (int, float, np.floating)) and np.isfinite(v)}),
        "meta": ConfigRecord({"site": ident.name, "method": cfg.method.name}),
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
    site = FederatedSite(cfg, site_data(cfg, ident), state)
    arrays = record_to_arrays(msg.content["arrays"])
    reply_arrays, metrics = site.train_round(arrays, server_round)
    save_state(context, ident, site.state, keep_previous=not redo)
    metrics["redone_round"] = float(redo)
    metrics["round_seconds"] = time.perf_counter() - started
    return _reply(msg, reply_arrays, metrics, ident, cfg)


def handle_evaluate(msg: Message, context: Context, base: FedReIDConfig | None = None,
                    state_dir: Path | None = None) -> Message:
    cfg = config_for(context, base)
    _limit_threads(cfg, context)
    ident = identify(cfg, context, state_dir)
    site = FederatedSite(cfg, site_data(cfg, ident), load_state(context, ident))
    arrays = record_to_arrays(msg.content["arrays"])
    return _reply(msg, None, site.evaluate_round(arrays), ident, cfg)
