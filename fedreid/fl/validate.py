"""Reply validation: everything the coordinator checks before a site's reply counts.

``check_reply`` takes a reply's wire arrays and metrics and returns a :class:`CheckedReply`
(the arrays split into dense and sparse tensors, nothing expanded, ready for
:class:`fedreid.fl.flat_sas.FlatSas`) or raises :class:`ReplyRejected` listing every problem:

- arrays (:func:`fedreid.fl.codec.inspect_encoded`): every expected tensor exactly once,
  shapes, dtypes, finite values, bitmap popcount = number of values, zero padding bits, a
  digest-only tensor's digest equal to the mask held for the site, the declared
  ``prune_ratio`` equal to the actual pruned fraction of the sparse tensors;
- metrics: the required ones present, plain numbers and finite; ``num-examples`` > 0,
  ``prune_ratio`` in [0, 1], the weighting signals (``kl_divergence``,
  ``cosine_distance``) >= 0. A NaN or negative signal is rejected, not clamped: a site that
  reports one has a bug or is hostile, and a clamped zero would silently change every
  site's weight. Only values within ``SIGNAL_TOLERANCE`` below 0 (float rounding of a
  zero divergence) are read as 0;
- optionally the update norm ``||theta_k - theta_global||`` over the released float tensors
  (BN running statistics excluded), pruned elements counting as zeros.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedreid.fl.codec import PackedMask, SparseTensor, inspect_encoded, values_f32
from fedreid.fl.dp import LOCAL_SUFFIXES

REQUIRED_TRAIN_METRICS = ("num-examples", "prune_ratio", "kl_divergence", "cosine_distance")
NON_NEGATIVE = ("kl_divergence", "cosine_distance")  # the weighting signals
SIGNAL_TOLERANCE = 1e-9  # a signal this far below 0 is float rounding (1 - cos of equal rows)
_SHOWN = 5  # problems spelled out in the exception message (all are in .problems)


class ReplyRejected(ValueError):
    """A reply failed validation; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        more = f" (+{len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
        super().__init__("; ".join(problems[:_SHOWN]) + more)
        self.problems = tuple(problems)


@dataclass(frozen=True)
class CheckedReply:
    """A validated reply: tensors as received (views, not copies) and numeric metrics."""

    dense: dict[str, np.ndarray]
    sparse: dict[str, SparseTensor]
    metrics: dict[str, float]
    sparsity: float | None  # pruned fraction over the sparse tensors; None when all dense

    @property
    def changed(self) -> frozenset[str]:
        """Tensors whose bitmap came with the reply (a new or changed mask)."""
        return frozenset(name for name, t in self.sparse.items() if t.digest is None)


def metric_problems(metrics: Mapping[str, object],
                    required: tuple[str, ...] = REQUIRED_TRAIN_METRICS) -> list[str]:
    """Problems with a reply's metrics (empty = acceptable); see the module doc."""
    problems: list[str] = []
    for key in required:
        value = metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"metric {key!r} is missing or not a number: {value!r}")
        elif not math.isfinite(value):
            problems.append(f"metric {key!r} is not finite: {value!r}")
        elif key == "num-examples" and value <= 0:
            problems.append(f"metric 'num-examples' must be positive, got {value}")
        elif key == "prune_ratio" and not 0.0 <= value <= 1.0:
            problems.append(f"metric 'prune_ratio' must lie in [0, 1], got {value}")
        elif key in NON_NEGATIVE and value < -SIGNAL_TOLERANCE:
            problems.append(f"metric {key!r} must be >= 0, got {value}")
    return problems


def update_norm(reply: CheckedReply, global_state: Mapping[str, np.ndarray]) -> float:
    """``||theta_k - theta_global||`` over the released float tensors (pruned = 0)."""
    sq = 0.0
    for name, t in reply.dense.items():
        if t.dtype.kind == "f" and not name.endswith(LOCAL_SUFFIXES):
            diff = t.astype(np.float64) - np.asarray(global_state[name], dtype=np.float64)
            sq += float(np.vdot(diff, diff))
    for name, t in reply.sparse.items():
        if name.endswith(LOCAL_SUFFIXES):
            continue
        g = np.asarray(global_state[name], dtype=np.float64).reshape(-1)
        pos = np.flatnonzero(np.unpackbits(t.bits, count=g.size))
        g_kept = g[pos]
        diff = values_f32(t.values).astype(np.float64)
        if not t.delta:  # plain values; differences from the download are the update already
            diff -= g_kept
        sq += float(np.vdot(diff, diff)) + float(np.vdot(g, g)) - float(np.vdot(g_kept, g_kept))
    return math.sqrt(max(sq, 0.0))


def check_reply(
    arrays: Mapping[str, np.ndarray],
    metrics: Mapping[str, object],
    *,
    shapes: Mapping[str, tuple[int, ...]],
    dtypes: Mapping[str, np.dtype | str] | None = None,
    known_masks: Mapping[str, PackedMask | np.ndarray] | None = None,
    required: tuple[str, ...] = REQUIRED_TRAIN_METRICS,
    sparsity_tol: float = 1e-4,
    max_update_norm: float = 0.0,
    global_state: Mapping[str, np.ndarray] | None = None,
) -> CheckedReply:
    """Validate one reply (see the module doc); raises :class:`ReplyRejected` with every
    problem. ``known_masks``: the masks held for this site (digest-only tensors need them);
    ``max_update_norm`` > 0 needs ``global_state`` (the model the site downloaded)."""
    if max_update_norm > 0 and global_state is None:
        raise ValueError("check_reply: max_update_norm > 0 needs global_state to measure against")
    problems = metric_problems(metrics, required)
    ratio = metrics.get("prune_ratio")
    sends_sparse = any(k.endswith(("::bits", "::digest")) for k in arrays)
    declared = float(ratio) if sends_sparse and "prune_ratio" in required and not problems else None
    found = inspect_encoded(arrays, shapes, declared_sparsity=declared, tol=sparsity_tol,
                            expected_dtypes=dtypes, known_masks=known_masks)
    problems += found.problems
    if problems:
        raise ReplyRejected(problems)
    dense, sparse = found.dense, found.sparse
    numeric = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key in NON_NEGATIVE:
        if key in numeric:
            numeric[key] = max(0.0, numeric[key])  # only rounding can be below 0 here
    total = sum(int(np.prod(t.shape, dtype=np.int64)) for t in sparse.values())
    kept = sum(t.values.size for t in sparse.values())
    reply = CheckedReply(dense, sparse, numeric, (total - kept) / total if total else None)
    if max_update_norm > 0:
        norm = update_norm(reply, global_state)
        if norm > max_update_norm:
            raise ReplyRejected(
                [f"update norm {norm:.4g} exceeds max_update_norm={max_update_norm:.4g}"])
    return reply
