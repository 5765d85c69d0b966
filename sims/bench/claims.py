"""Pieces every claim-check script needs: a generated site kind on first use, the
per-epoch-seeded training loop, and the Markdown + JSON result files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fedreid.data.synth import generate_synthetic8
from fedreid.training import LocalTrainer, stream_seed


def ensure_kind(root: Path, kind: str, size: tuple[int, int]) -> Path:
    """The generated site ``kind`` under ``root`` (rendered on first use)."""
    if not (root / kind / "meta.json").is_file():
        print(f"generating the {kind} site into {root}", flush=True)
        generate_synthetic8(root, sites=[], kinds=[kind], size=size, workers=1)
    return root / kind


def train_epochs(trainer: LocalTrainer, epochs: int) -> float:
    """Train ``epochs`` epochs with one optimiser, each epoch on its own seeded stream (as
    `fedreid train`); returns the seconds it took."""
    cfg, name = trainer.cfg, trainer.images.name
    opt = trainer.optimizer()
    started = time.perf_counter()
    for e in range(epochs):
        trainer.train_epochs(1, seed=stream_seed(cfg.seed, name, e), epoch_offset=e, optimizer=opt)
    return time.perf_counter() - started


def write_claim(out: Path, stem: str, header: str, table: str, data: Any) -> Path:
    """``<out>/<stem>.md`` (header + table) and ``<stem>.json`` (the raw figures)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(f"{header}\n\n{table}\n")
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    return out
