"""Round checkpoints: Flower has no resume, so the server saves what a restart needs.

``checkpoints/latest.pt`` holds the global model, every site's last mask, the node→site map,
the finished round and the strategy's RNG state; it is written atomically after each round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.strategy import StrategyState

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / LATEST


def save_checkpoint(run_dir: Path, state: StrategyState, rng: np.random.Generator,
                    extra: dict[str, Any] | None = None) -> Path:
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "round": state.last_round,
        "global_state": state.global_state,
        "site_masks": state.site_masks,
        "node_site": state.node_site,
        "rng": rng.bit_generator.state,
        **(extra or {}),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(run_dir: Path) -> tuple[StrategyState, dict[str, Any], dict[str, Any]]:
    """(strategy state, RNG state, the whole blob); a clear error when there is none."""
    path = checkpoint_path(run_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: --resume needs a run folder with at least one finished round"
        )
    blob = torch.load(path, map_location="cpu", weights_only=False)
    state = StrategyState(global_state=blob["global_state"], site_masks=blob["site_masks"],
                          node_site={int(k): v for k, v in blob["node_site"].items()},
                          last_round=int(blob["round"]))
    return state, blob["rng"], blob
