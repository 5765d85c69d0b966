"""Round checkpoints: Flower has no resume, so the server saves what a restart needs.

``checkpoints/latest.pt`` holds the global model, every site's last mask, the node→site map,
the finished round, the privacy ledger's sampling rates (so a resumed run's ε counts the
rounds before the crash) and the strategy's RNG state; it is written atomically after each round.
A round is *committed* once its checkpoint is written: a resumed run continues after the
last committed round, and records of later rounds (written before a crash could checkpoint
them) are dropped so every round appears exactly once in ``metrics.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedreid.report import METRICS_FILE
from fedreid.runlog import read_jsonl
from server.strategy import StrategyState

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"
ROUND_KINDS = ("train", "evaluate")


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
        "dp_rates": state.dp_rates,
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
                          last_round=int(blob["round"]), dp_rates=list(blob.get("dp_rates", [])))
    return state, blob["rng"], blob


def drop_uncommitted_records(run_dir: Path, last_round: int) -> int:
    """Remove round records the last checkpoint does not cover (``last_round`` 0: none is
    covered, the run starts over in its folder); returns how many were dropped."""
    path = Path(run_dir) / METRICS_FILE
    records = read_jsonl(path)
    keep = [r for r in records
            if r.get("kind") not in ROUND_KINDS or (last_round > 0 and int(r["round"]) <= last_round)]
    if len(keep) == len(records):
        return 0
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    tmp.replace(path)
    return len(records) - len(keep)
