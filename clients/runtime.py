"""A site's runtime behind the ClientApp: which site this node is, its data and its state.

Thin glue: the round itself is :class:`fedreid.federated_client.FederatedClient`. What the
site remembers between rounds (mask, CRR backup, head or memory) goes to ``Context.state``
and, when the node has a state directory, to state files, so a restarted site continues
where it stopped. Nothing private is put in a reply.

State belongs to its run. A deployed site keeps one folder per run (``fl.run_name``) under
its state directory: a new run starts fresh, and only a resumed run finds its own files. In
that folder a trained round is first saved as *pending* (``<site>.pending-r<k>.pt``) and
becomes the committed ``<site>.pt`` only once the coordinator shows it committed the round
(it asks for a later round, or evaluates that one); a run stopped or crashed mid-round never
replaces committed state. ``<site>.prev.pt`` keeps the committed state before the last one,
so a round the coordinator redoes after a resume trains from the state before it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.logger import log

from clients import notices
from fedreid.client_state import ClientState
from fedreid.config import from_flat
from fedreid.config.schema import FedReIDConfig
from fedreid.data.split_images import SplitImages, load_split_images
from fedreid.deploy.processes import exit_when_orphaned
from fedreid.federated_client import FederatedClient
from fedreid.fl.view import SiteView
from fedreid.methods import get_method
from fedreid.training import initial_shared_state
from wire.records import arrays_to_record, record_to_arrays

notices.install()  # Ray actors import this module: their shutdown notice is dropped there

STATE_ARRAYS = "fedreid.site-arrays"
STATE_SCALARS = "fedreid.site-scalars"
VIEW_ARRAYS = "fedreid.view-arrays"  # codec.download=difference-int8: the coordinator's view, cached
VIEW_TOKEN = "fedreid.view-token"
PROGRESS_EVERY_S = 10.0  # a training site logs its progress at most this often
ORPHAN_GRACE_S = 10.0  # a ClientApp whose SuperNode died exits this long after
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DATA_CACHE: dict[tuple[str, str, int, int], SplitImages] = {}


@dataclass(frozen=True)
class NodeBinding:
    """Which site a node serves, the method it runs, and where its data and state live."""

    name: str
    method: str
    data_dir: Path
    dataset: str
    state_dir: Path | None  # this run's folder of the site's state files

    @property
    def state_file(self) -> Path | None:
        """The committed state (``<site>.pt``)."""
        return self.state_dir / f"{self.name}.pt" if self.state_dir else None

    @property
    def previous_file(self) -> Path | None:
        """The committed state before the last one (``<site>.prev.pt``)."""
        return self.state_dir / f"{self.name}.prev.pt" if self.state_dir else None

    def pending_file(self, server_round: int) -> Path:
        assert self.state_dir is not None
        return self.state_dir / f"{self.name}.pending-r{server_round}.pt"

    def pending(self) -> list[tuple[int, Path]]:
        """Trained rounds not yet known to be committed, oldest first."""
        if not self.state_dir or not self.state_dir.is_dir():
            return []
        found = []
        for path in self.state_dir.glob(f"{self.name}.pending-r*.pt"):
            suffix = path.name[len(f"{self.name}.pending-r"):-len(".pt")]
            if suffix.isdigit():
                found.append((int(suffix), path))
        return sorted(found)


def config_for(context: Context, base: FedReIDConfig | None) -> FedReIDConfig:
    """The run's config (from the simulation harness or Flower's run config) + node device."""
    cfg = base if base is not None else from_flat(dict(context.run_config))
    node = dict(context.node_config)
    return replace(cfg, device=str(node["device"])) if "device" in node else cfg


def run_key(cfg: FedReIDConfig, context: Context) -> str:
    """The folder a deployed site keeps this run's state in: the run's name (kept when the
    coordinator resumes the run), else Flower's run id."""
    key = cfg.fl.run_name or f"flwr-{context.run_id}"
    if not RUN_NAME.match(key):
        raise ValueError(f"fl.run_name={key!r} cannot name a folder; use letters, digits, '.', '_' or '-'")
    return key


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
    if folder is not None and "site" in node:
        folder = folder / run_key(cfg, context)  # a simulation's state dir is its run's already
    method = str(node.get("method") or cfg.method_of(name))  # `fedreid site join --method`
    return NodeBinding(name, method, data_dir, dataset, folder)


def site_images(cfg: FedReIDConfig, ident: NodeBinding) -> SplitImages:
    """Decoded images, cached per process (simulation actors serve several sites)."""
    key = (str(ident.data_dir), ident.dataset, cfg.data.height, cfg.data.width)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_split_images(ident.data_dir, ident.dataset,
                                             (cfg.data.height, cfg.data.width), seed=cfg.seed)
    return _DATA_CACHE[key]


def client_for(cfg: FedReIDConfig, ident: NodeBinding, state: ClientState | None = None,
               view: SiteView | None = None) -> FederatedClient:
    return FederatedClient(cfg, site_images(cfg, ident), state, method_name=ident.method, view=view)


def load_view(context: Context) -> SiteView:
    """The coordinator's view as this node last held it in this Flower run (a cache: a
    restarted site starts without one and is sent the whole view)."""
    if VIEW_ARRAYS not in context.state.array_records:
        return SiteView()
    token = int(str(context.state[VIEW_TOKEN]["token"]))
    return SiteView(record_to_arrays(context.state[VIEW_ARRAYS]), token)


def save_view(context: Context, view: SiteView | None) -> None:
    """Keep the view in Context.state when it moved (a token-only download changes nothing)."""
    if view is None or not view.state:
        return
    if VIEW_TOKEN in context.state.config_records and context.state[VIEW_TOKEN]["token"] == str(view.token):
        return
    context.state[VIEW_ARRAYS] = arrays_to_record(view.state)
    # as text: a ConfigRecord holds signed 64-bit integers only
    context.state[VIEW_TOKEN] = ConfigRecord({"token": str(view.token)})


def _context_state(context: Context) -> ClientState | None:
    if STATE_ARRAYS not in context.state.array_records:
        return None
    arrays = record_to_arrays(context.state[STATE_ARRAYS])
    scalars = dict(context.state[STATE_SCALARS]) if STATE_SCALARS in context.state.config_records else {}
    return ClientState.from_flat(arrays, scalars)


def commit_through(ident: NodeBinding, server_round: int) -> None:
    """The coordinator committed every round up to ``server_round``: pending states of those
    rounds become the committed state in turn (the one replaced is kept as ``prev``)."""
    for rnd, path in ident.pending():
        if rnd > server_round:
            break
        if ident.state_file.exists():
            os.replace(ident.state_file, ident.previous_file)
        os.replace(path, ident.state_file)


def load_state(context: Context, ident: NodeBinding) -> ClientState:
    """This run's latest state: Context.state within one Flower run, else the committed file."""
    state = _context_state(context)
    if state is not None:
        return state
    if ident.state_file and ident.state_file.exists():
        return ClientState.load(ident.state_file)
    return ClientState()


def state_for_round(context: Context, ident: NodeBinding, server_round: int) -> tuple[ClientState, bool, list[str]]:
    """The state to train ``server_round`` from, whether the round is being redone, and
    warnings for the coordinator's operator.

    Asking for round r commits every earlier round; a pending round r (or later) was trained
    here but never committed — the coordinator was stopped or crashed and resumed — so it is
    discarded and the round trained again from committed state. A committed state that
    already holds round r (the coordinator resumed from an older checkpoint than the sites
    saw committed) gives way to the state kept before it.
    """
    if not ident.state_dir:
        return load_state(context, ident), False, []
    commit_through(ident, server_round - 1)
    stale = [(rnd, path) for rnd, path in ident.pending() if rnd >= server_round]
    for _, path in stale:
        path.unlink()
    state = _context_state(context)
    if state is None or state.last_round >= server_round:
        state = ClientState.load(ident.state_file) if ident.state_file.exists() else ClientState()
    redone = bool(stale)
    if state.last_round >= server_round:
        prev = ClientState.load(ident.previous_file) if ident.previous_file.exists() else None
        if prev is None or prev.last_round >= server_round:
            return state, False, [f"round {server_round} was already trained and committed here and no "
                                  "earlier state is kept; training on top of it"]
        state, redone = prev, True
    if not redone:
        return state, False, []
    return state, True, [f"round {server_round} is being redone (the coordinator resumed after round "
                         f"{server_round - 1}); training from the state saved after round {state.last_round}, "
                         "not from the uncommitted one"]


def save_state(context: Context, ident: NodeBinding, state: ClientState, server_round: int) -> None:
    """Context.state (this Flower run) and a pending state file (committed later, see
    :func:`commit_through`)."""
    arrays, scalars = state.to_flat()
    context.state[STATE_ARRAYS] = arrays_to_record(arrays)
    context.state[STATE_SCALARS] = ConfigRecord({k: v for k, v in scalars.items() if v is not None})
    if ident.state_dir:
        state.save(ident.pending_file(server_round))


@functools.cache
def watch_supernode() -> None:
    """In a SuperNode's ClientApp process: exit once the SuperNode is gone (a killed site
    must not leave a ClientApp retrying it forever). Once per process; not in simulations."""
    if Path(sys.argv[0]).name == "flwr-clientapp":
        exit_when_orphaned(grace_s=ORPHAN_GRACE_S, say=lambda m: log(WARNING, "ClientApp: %s", m))


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


def _progress_logger(site: str, server_round: int):
    """Training progress in the site's log, at most every PROGRESS_EVERY_S seconds."""
    started = last = time.monotonic()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S or done == total:
            last = now
            log(INFO, "site %s: round %d training, batch %d/%d (%.0f s)", site, server_round, done, total,
                now - started)

    return report


def _reply(msg: Message, arrays: dict[str, np.ndarray] | None, metrics: dict[str, Any],
           ident: NodeBinding, warnings: Sequence[str] = ()) -> Message:
    meta = {"site": ident.name, "method": ident.method}
    if warnings:  # the coordinator logs them: what its operator must know about this site
        meta["warnings"] = "\n".join(warnings)
    content = RecordDict({
        "metrics": MetricRecord({k: float(v) for k, v in metrics.items()
                                 if isinstance(v, (int, float, np.floating)) and np.isfinite(v)}),
        "meta": ConfigRecord(meta),
    })
    if arrays is not None:
        content["arrays"] = arrays_to_record(arrays)
    return Message(content=content, reply_to=msg)


def handle_train(msg: Message, context: Context, base: FedReIDConfig | None = None,
                 state_dir: Path | None = None) -> Message:
    watch_supernode()
    cfg = config_for(context, base)
    _limit_threads(cfg, context)
    ident = identify(cfg, context, state_dir)
    started = time.perf_counter()
    server_round = int(msg.content["config"]["server-round"])
    state, redo, warnings = state_for_round(context, ident, server_round)
    for line in warnings:
        log(WARNING, "site %s: %s", ident.name, line)
    if state.last_round == 0 and server_round > 1 and ident.state_dir:
        log(INFO, "site %s: no state of this run (%s) here; round %d starts from the download",
            ident.name, ident.state_dir.name, server_round)
    client = client_for(cfg, ident, state, _view_for(cfg, context))
    arrays = record_to_arrays(msg.content["arrays"])
    reply_arrays, metrics = client.train_round(arrays, server_round,
                                               progress=_progress_logger(ident.name, server_round))
    save_state(context, ident, client.state, server_round)
    save_view(context, client.view)
    if ident.state_dir:
        for path in client.method.site_files(ident.state_dir / "files", server_round):
            log(INFO, "site %s: wrote %s", ident.name, path)
    metrics["redone_round"] = float(redo)
    metrics["round_seconds"] = time.perf_counter() - started
    return _reply(msg, reply_arrays, metrics, ident, warnings)


def handle_evaluate(msg: Message, context: Context, base: FedReIDConfig | None = None,
                    state_dir: Path | None = None) -> Message:
    watch_supernode()
    cfg = config_for(context, base)
    _limit_threads(cfg, context)
    ident = identify(cfg, context, state_dir)
    if ident.state_dir:
        commit_through(ident, int(msg.content["config"]["server-round"]))  # evaluated = committed
    client = client_for(cfg, ident, load_state(context, ident), _view_for(cfg, context))
    arrays = record_to_arrays(msg.content["arrays"])
    metrics = client.evaluate_round(arrays)
    save_view(context, client.view)
    return _reply(msg, None, metrics, ident)


def _view_for(cfg: FedReIDConfig, context: Context) -> SiteView | None:
    return load_view(context) if cfg.codec.download == "difference-int8" else None


def handle_query(msg: Message, context: Context, base: FedReIDConfig | None = None,
                 state_dir: Path | None = None) -> Message:
    """Admission: which site this node is, its method, and the signature (key → shape,
    dtype) of what it would send, so the coordinator can refuse a site that does not fit."""
    watch_supernode()
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
