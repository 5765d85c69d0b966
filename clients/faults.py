"""Fault injection: a Flower client mod that turns a site's training replies hostile.

Operators and tests use it to check the coordinator's defences on a real deployment: set
``FEDREID_INJECT_FAULTS=nonfinite,shape,norm,sparsity`` in the environment of one site's
SuperNode and that site corrupts its reply to round r with the fault number
``(r - 1) % len(faults)``; ``FEDREID_INJECT_FAULTS=norm@3`` corrupts only its reply to round 3
(a soak test's single hostile reply). The coordinator must reject each such reply with the
reason logged and aggregate the others. Never set it on a production site: the site then
attacks the federation on purpose (it logs a warning on every reply it corrupts).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from logging import WARNING

import numpy as np
from flwr.app import Context, Message, MetricRecord
from flwr.common.logger import log

from wire.records import arrays_to_record, record_to_arrays

ENV_VAR = "FEDREID_INJECT_FAULTS"
NORM_FACTOR = 1e4  # "norm": every float value of the reply is multiplied by this


def _nonfinite(arrays: dict[str, np.ndarray], metrics: MetricRecord) -> None:
    key = next(k for k, v in arrays.items() if v.dtype.kind == "f" and v.size)
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] = np.nan


def _shape(arrays: dict[str, np.ndarray], metrics: MetricRecord) -> None:
    key = next(k for k, v in arrays.items() if k.endswith("::dense") and v.dtype.kind == "f" and v.size > 1)
    arrays[key] = arrays[key][:-1].copy()


def _norm(arrays: dict[str, np.ndarray], metrics: MetricRecord) -> None:
    for key, value in arrays.items():
        if value.dtype.kind == "f":
            arrays[key] = value * NORM_FACTOR


def _sparsity(arrays: dict[str, np.ndarray], metrics: MetricRecord) -> None:
    # Claim far more pruning than was done: PRAW would give the site a larger weight.
    metrics["prune_ratio"] = min(1.0, float(metrics["prune_ratio"]) + 0.3)


FAULTS: dict[str, Callable[[dict[str, np.ndarray], MetricRecord], None]] = {
    "nonfinite": _nonfinite,
    "shape": _shape,
    "norm": _norm,
    "sparsity": _sparsity,
}


def parse_faults(spec: str) -> list[str] | dict[int, str]:
    """``"nonfinite,norm"`` → ``["nonfinite", "norm"]`` (cycled over the rounds);
    ``"norm@3,shape@5"`` → ``{3: "norm", 5: "shape"}`` (those rounds only). Unknown names,
    bad rounds or a mix of both forms raise ValueError."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    kinds = [item.partition("@")[0] for item in items]
    rounds = [item.partition("@")[2] for item in items]
    targeted = [bool(r) for r in rounds]
    if (not items or any(k not in FAULTS for k in kinds) or (any(targeted) and not all(targeted))
            or not all(r.isdigit() and int(r) >= 1 for r in rounds if r)):
        raise ValueError(f"{ENV_VAR}={spec!r}: use a comma-separated list of {sorted(FAULTS)}, "
                         "either plain (cycled over rounds) or each as KIND@ROUND (e.g. norm@3)")
    if any(targeted):
        return {int(r): k for k, r in zip(kinds, rounds, strict=True)}
    return kinds


def fault_mod(kinds: list[str] | dict[int, str]):
    """A client mod corrupting training replies: every one (fault chosen by the server round)
    for a list, the listed rounds only for a dict."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type != "train" or reply.has_error() or "arrays" not in reply.content:
            return reply
        server_round = int(msg.content["config"]["server-round"])
        if isinstance(kinds, dict):
            if server_round not in kinds:
                return reply
            kind = kinds[server_round]
        else:
            kind = kinds[(server_round - 1) % len(kinds)]
        arrays = record_to_arrays(reply.content["arrays"])
        FAULTS[kind](arrays, reply.content["metrics"])
        reply.content["arrays"] = arrays_to_record(arrays)
        log(WARNING, "fault injection (%s): round %s reply corrupted with %r", ENV_VAR, server_round, kind)
        return reply

    return mod


def mods_from_env() -> list:
    """The fault mod when ``FEDREID_INJECT_FAULTS`` is set, else no mod."""
    spec = os.environ.get(ENV_VAR, "")
    return [fault_mod(parse_faults(spec))] if spec else []
