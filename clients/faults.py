"""Fault injection: a Flower client mod that turns a site's training replies hostile.

Operators and tests use it to check the coordinator's defences on a real deployment: set
``FEDREID_INJECT_FAULTS=nonfinite,shape,norm,sparsity`` in the environment of one site's
SuperNode and that site corrupts its reply to round r with the fault number
``(r - 1) % len(faults)``. The coordinator must reject each reply with the reason logged and
aggregate the others. Never set it on a production site: the site then attacks the federation
on purpose (it logs a warning on every reply it corrupts).
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


def parse_faults(spec: str) -> list[str]:
    """``"nonfinite,norm"`` → ``["nonfinite", "norm"]``; unknown names raise ValueError."""
    kinds = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown or not kinds:
        raise ValueError(f"{ENV_VAR}={spec!r}: use a comma-separated list of {sorted(FAULTS)}")
    return kinds


def fault_mod(kinds: list[str]):
    """A client mod corrupting every training reply, the fault chosen by the server round."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type != "train" or reply.has_error() or "arrays" not in reply.content:
            return reply
        server_round = int(msg.content["config"]["server-round"])
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
