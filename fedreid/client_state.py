"""What a site remembers between rounds, and its state file.

Everything here is site-private: pruning masks, the method's local state (classifier,
memories, cluster labels), the part of the model the federation does not share (and the
BN statistics where a strategy keeps them local), and cross-round recovery. It is kept in
Flower's ``Context.state`` and in ``<state-dir>/<site>.pt``, never in a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_VERSION = 2


@dataclass
class ClientState:
    """One site's carry-over from round to round (see the module docstring)."""

    masks: dict[str, np.ndarray] = field(default_factory=dict)
    method: dict[str, np.ndarray] = field(default_factory=dict)
    local_model: dict[str, np.ndarray] = field(default_factory=dict)
    crr: dict[str, Any] = field(default_factory=dict)
    # codec.upload=difference-int8: what int8 rounding left out of the last upload, sent with
    # the next one (error feedback), so no part of an update is lost for good
    upload_residual: dict[str, np.ndarray] = field(default_factory=dict)
    rounds_trained: int = 0
    last_round: int = 0

    def to_flat(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """One dict of arrays and one of scalars (Flower records and state files hold these)."""
        arrays: dict[str, np.ndarray] = {}
        for kind, items in (("mask", self.masks), ("method", self.method), ("model", self.local_model),
                            ("residual", self.upload_residual)):
            arrays.update({f"{kind}/{k}": v for k, v in items.items()})
        scalars: dict[str, Any] = {"version": STATE_VERSION, "rounds_trained": self.rounds_trained,
                                   "last_round": self.last_round}
        for key, value in self.crr.items():
            target = arrays if isinstance(value, np.ndarray) else scalars
            target[f"crr/{key}"] = value
        return arrays, scalars

    @classmethod
    def from_flat(cls, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> ClientState:
        version = int(scalars.get("version", STATE_VERSION)) if scalars else STATE_VERSION
        if version != STATE_VERSION:
            raise ValueError(
                f"site state version {version} != {STATE_VERSION} (written by another fedreid "
                "version); delete the site's state file to start the site afresh"
            )
        state = cls(rounds_trained=int(scalars.get("rounds_trained", 0)),
                    last_round=int(scalars.get("last_round", 0)))
        targets = {"mask": state.masks, "method": state.method, "model": state.local_model,
                   "crr": state.crr, "residual": state.upload_residual}
        for key, value in [*arrays.items(), *scalars.items()]:
            kind, sep, name = key.partition("/")
            if sep and kind in targets:
                targets[kind][name] = value.astype(bool) if kind == "mask" else value
        return state

    def save(self, path: Path) -> None:
        """Atomically write the state file (a crash mid-write keeps the previous one)."""
        arrays, scalars = self.to_flat()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"arrays": arrays, "scalars": scalars}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ClientState:
        blob = torch.load(path, map_location="cpu", weights_only=False)
        return cls.from_flat(blob["arrays"], blob["scalars"])
