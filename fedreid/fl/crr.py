"""CRR: cross-round recovery, the two-stage gate on a site's pruning (FedKLPR).

Stage 1 (round t, before the pruning step): ``record_before_pruning(score, weights, masks)``
keeps a backup of the site's weights and mask and the score of that un-pruned model.
Stage 2 (round t+1, after downloading the aggregated model): ``check_downloaded(score)``
compares the downloaded model's score with the recorded one. If it dropped by more than
``delta`` the decision is ``"restore"``: the caller reloads the backup (``restored_weights``
offers two ways) and pruning stops, for good (``halt="forever"``, the paper's "halts
pruning") or for ``pause_rounds`` rounds (``halt="pause"``). Otherwise the decision is
``"accept"`` and the backup is dropped. With no pending backup the decision is ``"skip"``.

Scores are floats where higher is better, in the same units as ``delta`` (default 0.01 =
one point of mAP or Rank-1 on a 0-1 scale, matching the paper's "within 1 %" claim). They are
computed elsewhere; two options:
- supervised sites: mAP or Rank-1 on a small held-out labelled split of the site's data;
- unlabelled sites (FedCAPR/FedKLPR are unsupervised): a proxy on a fixed probe set, e.g.
  the mean over probe images of the maximum cosine similarity to the other probe images
  (neighbour agreement) or a cluster-compactness score (mean cosine similarity of features
  to their DBSCAN cluster centroid, higher = tighter clusters).

Rounds are counted by ``begin_round`` calls, which the site makes at the start of every
round it takes part in (a pause must run out in rounds without a pending step too, when
there is nothing to check). While a pruning step is unchecked, ``can_prune`` is False, so a backup is never overwritten
before it was judged. The whole state serialises to a flat dict of plain values and
arrays (``to_dict`` / ``from_dict``) for the site's state file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HALT_MODES = ("forever", "pause")
RESTORE_MODES = ("backup", "refill")


@dataclass
class CRRDecision:
    """Outcome of stage 2: ``action`` is "accept", "restore" or "skip"."""

    action: str
    score: float
    reference: float | None = None
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)


def _copy(arrays: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    out = {}
    for name, arr in arrays.items():
        if "::" in name:
            raise ValueError(f"{what}: key {name!r} contains '::', which to_dict reserves")
        out[name] = np.array(arr, copy=True)
    return out


def _finite(score: float, name: str) -> float:
    value = float(score)
    if not math.isfinite(value):
        raise ValueError(f"{name}: {score!r} is not a finite number; fix the site's evaluation")
    return value


class CrossRoundRecovery:
    """Per-site CRR state machine (see the module doc)."""

    def __init__(self, delta: float = 0.01, halt: str = "forever", pause_rounds: int = 2) -> None:
        if not math.isfinite(delta) or delta < 0:
            raise ValueError(f"delta: {delta} must be a finite number >= 0")
        if halt not in HALT_MODES:
            raise ValueError(f"halt: {halt!r} is not one of {HALT_MODES}")
        if halt == "pause" and pause_rounds < 1:
            raise ValueError(f"pause_rounds: {pause_rounds} must be >= 1 when halt='pause'")
        self.delta = float(delta)
        self.halt = halt
        self.pause_rounds = int(pause_rounds)
        self.halted = False
        self.pause_left = 0
        self.restores = 0
        self._score: float | None = None
        self._weights: dict[str, np.ndarray] = {}
        self._masks: dict[str, np.ndarray] = {}
        self._labels: np.ndarray | None = None

    @property
    def recorded_labels(self) -> np.ndarray | None:
        """The labels stage 1 scored with: stage 2 must score with the same ones, or label
        noise (re-clustering between the stages) would drive the decision."""
        return self._labels

    @property
    def pending(self) -> bool:
        """True while a pruning step waits for its stage-2 check."""
        return self._score is not None

    def record_before_pruning(
        self, score: float, weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
        labels: np.ndarray | None = None,
    ) -> None:
        """Stage 1: back up the un-pruned weights, their mask, their score and the labels the
        score used (copies)."""
        if self.pending:
            raise ValueError(
                "record_before_pruning: the previous pruning step was not checked yet; call "
                "check_downloaded first (can_prune is False while a step is pending)"
            )
        self._score = _finite(score, "score")
        self._weights = _copy(weights, "weights")
        self._masks = _copy(masks, "masks")
        self._labels = None if labels is None else np.array(labels, copy=True)

    def begin_round(self) -> None:
        """A new round: a pause has one round less to run. A restore in round t pauses
        rounds t .. t + pause_rounds - 1; pruning resumes in round t + pause_rounds."""
        if self.pause_left > 0:
            self.pause_left -= 1

    def check_downloaded(self, score: float) -> CRRDecision:
        """Stage 2: judge the last pruning step by the downloaded model's score."""
        score = _finite(score, "score")
        reference = self._score
        if reference is None:
            return CRRDecision("skip", score)
        if reference - score > self.delta:
            decision = CRRDecision("restore", score, reference, self._weights, self._masks)
            self.restores += 1
            if self.halt == "forever":
                self.halted = True
            else:
                self.pause_left = self.pause_rounds
        else:
            decision = CRRDecision("accept", score, reference)
        self._score, self._weights, self._masks, self._labels = None, {}, {}, None
        return decision

    def can_prune(self, current_sparsity: float, target: float) -> bool:
        """Whether this round may take a pruning step."""
        return (
            not self.halted
            and self.pause_left == 0
            and not self.pending
            and current_sparsity < target - 1e-12
        )

    def to_dict(self) -> dict[str, Any]:
        """Flat dict of plain values and arrays; backups under ``weights::`` / ``masks::``."""
        out: dict[str, Any] = {
            "delta": self.delta,
            "halt": self.halt,
            "pause_rounds": self.pause_rounds,
            "halted": self.halted,
            "pause_left": self.pause_left,
            "restores": self.restores,
            "pending": self.pending,
            "score": float("nan") if self._score is None else self._score,
        }
        out.update({f"weights::{k}": v for k, v in self._weights.items()})
        out.update({f"masks::{k}": v for k, v in self._masks.items()})
        if self._labels is not None:
            out["labels::probe"] = self._labels
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrossRoundRecovery:
        """Inverse of ``to_dict`` (accepts 0-d arrays for the scalars, as np.load returns)."""

        def scalar(key: str) -> Any:
            if key not in data:
                raise ValueError(f"CRR state: key {key!r} is missing; was it saved by to_dict?")
            value = data[key]
            return value.item() if isinstance(value, np.ndarray) else value

        crr = cls(float(scalar("delta")), str(scalar("halt")), int(scalar("pause_rounds")))
        crr.halted = bool(scalar("halted"))
        crr.pause_left = int(scalar("pause_left"))
        crr.restores = int(scalar("restores"))
        if bool(scalar("pending")):
            crr._score = float(scalar("score"))
            for key, value in data.items():
                prefix, _, name = key.partition("::")
                if prefix == "weights":
                    crr._weights[name] = np.array(value, copy=True)
                elif prefix == "masks":
                    crr._masks[name] = np.array(value, copy=True)
                elif prefix == "labels":
                    crr._labels = np.array(value, copy=True)
        return crr


def restored_weights(
    decision: CRRDecision,
    downloaded: Mapping[str, np.ndarray],
    current_masks: Mapping[str, np.ndarray],
    mode: str = "backup",
) -> dict[str, np.ndarray]:
    """Weights to load after a "restore" decision.

    ``mode="backup"`` (default, Sub-FedAvg's revert): the backed-up weights, as they were
    before the pruning step. ``mode="refill"``: keep the downloaded (aggregated) weights and
    put back the backup only where the undone step had pruned (old mask kept, current
    mask pruned), so the round's aggregation is not thrown away. Keys not in the backup come
    from ``downloaded``. Load ``decision.masks`` as the site's mask either way.
    """
    if decision.action != "restore":
        raise ValueError(f"restored_weights: decision is {decision.action!r}, not 'restore'")
    if mode not in RESTORE_MODES:
        raise ValueError(f"mode: {mode!r} is not one of {RESTORE_MODES}")
    out = {k: np.array(v, copy=True) for k, v in downloaded.items()}
    for name, backup in decision.weights.items():
        if name not in out or out[name].shape != backup.shape:
            raise ValueError(
                f"restored_weights: backup {name!r} does not match the downloaded model"
            )
        if mode == "backup":
            out[name] = np.array(backup, copy=True)
        elif name in decision.masks and name in current_masks:
            refill = decision.masks[name] & ~np.asarray(current_masks[name], dtype=bool)
            np.copyto(out[name], backup, where=refill)
    return out
