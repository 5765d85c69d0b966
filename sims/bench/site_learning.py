"""Does each method learn on each synthetic-8 site alone? Untrained vs trained mAP / Rank-1.

    python -m sims.bench.site_learning --epochs 4 --methods bot,capr,scm,vitc [--size 64x32]
        [--sites duke,market] [--variant LABEL METHOD [key=value ...]] [--out results.md]
        [key=value ...]

Every (site, variant) starts from the same initial weights of its backbone and trains with
`fedreid train`'s trainer; the table gives the untrained and trained mAP and Rank-1 and the
training seconds. ``--methods`` adds one variant per method; ``--variant`` adds a labelled
one with its own overrides (e.g. ``--variant ce-only scm method.scm.supcon_weight=0``);
trailing ``key=value`` overrides apply to every variant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fedreid.config import load_config
from fedreid.config.schema import SYNTHETIC8_SITES
from fedreid.data.sources import ensure_data_root
from fedreid.data.split_images import load_split_images
from fedreid.runlog import markdown_table
from fedreid.training import LocalTrainer
from sims.bench.claims import train_epochs


def train_variant(images, overrides: list[str], epochs: int) -> dict[str, float]:
    """Untrained and trained figures of one variant on one site: every metric of the trained
    model's evaluation, the untrained one's as ``untrained_<metric>``, and the seconds."""
    cfg = load_config(overrides)
    trainer = LocalTrainer(cfg, images)
    before = trainer.evaluate()
    seconds = train_epochs(trainer, epochs)
    return {**trainer.evaluate(), **{f"untrained_{k}": v for k, v in before.items()}, "seconds": seconds}


def variants_from(args: argparse.Namespace) -> dict[str, list[str]]:
    out = {m: [f"method.name={m}"] for m in filter(None, args.methods.split(","))}
    for label, method, *over in args.variant or []:
        out[label] = [f"method.name={method}", *over]
    if not out:
        raise SystemExit("give --methods or at least one --variant")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synthetic-8")
    p.add_argument("--sites", default=",".join(SYNTHETIC8_SITES))
    p.add_argument("--methods", default="bot,capr")
    p.add_argument("--variant", nargs="+", action="append", metavar="LABEL METHOD [key=value]")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--size", default="64x32")
    p.add_argument("--out", default="", help="write the table (.md) and the figures (.json beside it)")
    p.add_argument("overrides", nargs="*", help="config overrides for every variant")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    sites = args.sites.split(",")
    variants = variants_from(args)
    root = ensure_data_root(args.data, sites=sites, synth_scale=1.0, synth_seed=0)
    common = [f"data.height={h}", f"data.width={w}", "device=auto", *args.overrides]
    results: dict[str, dict[str, dict[str, float]]] = {}
    started = time.perf_counter()
    for site in sites:
        images = load_split_images(root / site, "fedreid", (h, w))
        results[site] = {}
        for label, over in variants.items():
            r = train_variant(images, [*common, *over], args.epochs)
            results[site][label] = r
            print(f"{site} {label}: mAP {r['untrained_mAP']:.3f} → {r['mAP']:.3f} "
                  f"(Rank-1 {r['rank1']:.3f}, {r['seconds']:.0f} s)", flush=True)
    headers = ["site"]
    for label in variants:
        headers += [f"{label} untrained mAP", f"{label} mAP", f"{label} R1", f"{label} s"]
    keys = ("untrained_mAP", "mAP", "rank1", "seconds")
    rows = [[site, *[results[site][v][k] for v in variants for k in keys]] for site in sites]
    rows.append(["**mean**", *[sum(results[s][v][k] for s in sites) / len(sites) for v in variants for k in keys]])
    table = markdown_table(headers, rows)
    title = (f"{args.size}, {args.epochs} epochs, overrides {args.overrides or 'none'}, torch threads "
             f"{torch.get_num_threads()}, {time.perf_counter() - started:.0f} s")
    print(f"\n{title}\n\n{table}")
    if args.out:
        out = Path(args.out)
        out.write_text(f"# Site learning: {title}\n\n{table}")
        out.with_suffix(".json").write_text(json.dumps({"title": title, "variants": variants,
                                                        "results": results}, indent=1))


if __name__ == "__main__":
    main()
