"""ViTC-UReID's claims on synthetic-8, unsupervised, each site alone:

1. camera-aware proxies beat plain cluster contrast with the same ViT encoder;
2. `vitc` (ViT) against `capr` (ResNet-18) at equal wall time.

    python -m sims.bench.vitc_claim [--sites market,duke,cuhk03,viper] [--seconds 240]
        [--size 64x32] [--vit vit_tiny_p8] [--vit-depth 6] [--out vitc.md] [key=value ...]

Every variant trains epoch after epoch until its site's budget of ``--seconds`` is spent
(the epoch that crosses the budget finishes), so a faster model gets more epochs; the table
gives the epochs each fitted and the final mAP / Rank-1. ``--vit`` and ``--vit-depth`` choose
the encoder of both vitc variants (patch 8 at 64×32 gives an 8×4 token grid; six blocks are
what a 2-core CPU trains from scratch in minutes); overrides apply to every variant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedreid.config import load_config
from fedreid.data.sources import ensure_data_root
from fedreid.data.split_images import load_split_images
from fedreid.runlog import markdown_table
from fedreid.training import LocalTrainer, stream_seed


def variants(vit: str, depth: int) -> dict[str, list[str]]:
    encoder = [f"model.arch={vit}", f"model.vit_depth={depth}"]
    return {
        "vitc (ViT, camera proxies)": ["method.name=vitc", *encoder],
        "vitc, plain cluster contrast": ["method.name=vitc", *encoder, "method.vitc.camera_proxies=false"],
        "capr (ResNet-18)": ["method.name=capr", "model.arch=resnet18"],
    }


def train_for(images, overrides: list[str], budget: float) -> dict[str, float]:
    cfg = load_config(overrides)
    trainer = LocalTrainer(cfg, images)
    before = trainer.evaluate()["mAP"]
    opt = trainer.optimizer()
    started, epochs = time.perf_counter(), 0
    while time.perf_counter() - started < budget:
        trainer.train_epochs(1, seed=stream_seed(cfg.seed, images.name, epochs), epoch_offset=epochs,
                             optimizer=opt)
        epochs += 1
    after = trainer.evaluate()
    return {"untrained_mAP": before, "mAP": after["mAP"], "rank1": after["rank1"], "epochs": epochs,
            "seconds": time.perf_counter() - started}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synthetic-8")
    p.add_argument("--sites", default="market,duke,cuhk03,viper")
    p.add_argument("--seconds", type=float, default=240.0)
    p.add_argument("--size", default="64x32")
    p.add_argument("--vit", default="vit_tiny_p8")
    p.add_argument("--vit-depth", type=int, default=6)
    p.add_argument("--out", default="")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    sites = args.sites.split(",")
    variant_overrides = variants(args.vit, args.vit_depth)
    root = ensure_data_root(args.data, sites=sites, synth_scale=1.0, synth_seed=0)
    common = [f"data.height={h}", f"data.width={w}", *args.overrides]
    results: dict[str, dict[str, dict]] = {v: {} for v in variant_overrides}
    for site in sites:
        images = load_split_images(root / site, "fedreid", (h, w))
        for label, over in variant_overrides.items():
            results[label][site] = r = train_for(images, [*common, *over], args.seconds)
            print(f"{site} {label}: mAP {r['untrained_mAP']:.4f} → {r['mAP']:.4f} in {r['epochs']} "
                  f"epochs ({r['seconds']:.0f} s)", flush=True)
    rows = []
    for label, per_site in results.items():
        mean = {k: sum(r[k] for r in per_site.values()) / len(per_site)
                for k in ("untrained_mAP", "mAP", "rank1", "epochs")}
        rows.append([label, mean["untrained_mAP"], mean["mAP"], mean["rank1"], mean["epochs"],
                     *[per_site[s]["mAP"] for s in sites]])
    table = markdown_table(["variant", "untrained mAP", "mean mAP", "mean Rank-1", "epochs in budget",
                            *[f"{s} mAP" for s in sites]], rows)
    print(f"\n{args.seconds:.0f} s per site and variant at {args.size}, {args.vit} depth "
          f"{args.vit_depth}, overrides {args.overrides}\n\n{table}")
    if args.out:
        Path(args.out).write_text(table)
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
