"""Pieces every claim-check script needs: a generated site kind on first use, the
per-epoch-seeded training loop, and the Markdown + JSON result files."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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


def write_claim(out: Path, stem: str, header: str, table: str, data: Any,
                plot: Callable[[Any, Path], None] | None = None) -> Path:
    """Print ``header`` and ``table``; write ``<out>/<stem>.md`` (both), ``<stem>.json`` (the
    raw figures) and, with ``plot(data, path)``, ``<stem>.png``; say where."""
    print(f"\n{header}\n\n{table}")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(f"{header}\n\n{table}\n")
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    if plot is not None:
        plot(data, out / f"{stem}.png")
    print(f"wrote {out}/{stem}.md, .json" + (", .png" if plot is not None else ""))
    return out


def vit_site_arguments(description: str, *, epochs: int, seeds: str, vit_depth: int,
                       out: str) -> argparse.Namespace:
    """The command line of a claim check that trains ViT variants on one generated site."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default="/tmp/fedreid-kinds")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--seeds", default=seeds)
    p.add_argument("--size", default="64x32")
    p.add_argument("--vit", default="vit_tiny_p8")
    p.add_argument("--vit-depth", type=int, default=vit_depth)
    p.add_argument("--out", default=out)
    p.add_argument("overrides", nargs="*")
    return p.parse_args()


def seeded_variants(images: Any, common: list[str], variants: dict[str, list[str]], seeds: str, epochs: int,
                    line: Callable[[dict], str]) -> dict[str, list[dict]]:
    """Train every variant once per seed (``train_variant``); ``line(result)`` is printed after each."""
    from sims.bench.site_learning import train_variant

    results: dict[str, list[dict]] = {v: [] for v in variants}
    for seed in (int(s) for s in seeds.split(",")):
        for variant, over in variants.items():
            r = train_variant(images, [*common, f"seed={seed}", *over], epochs)
            results[variant].append(r)
            print(f"seed {seed} {variant}: {line(r)}", flush=True)
    return results


def mean_sd(values: list[float]) -> str:
    """``mean ± std`` over seeds, 4 decimals (a missing figure counts as NaN)."""
    v = np.array(values, dtype=float)
    return f"{v.mean():.4f} ± {v.std():.4f}"
