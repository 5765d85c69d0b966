"""Does each method learn on each synthetic-8 site alone? Untrained vs trained mAP / Rank-1.

    python -m sims.bench.site_learning --epochs 5 --methods bot,capr [--size 64x32]
        [--arch resnet18 --weights none] [--sites duke,market] [--out results.md]

Trains every (site, method) from the same initial weights with `fedreid train`'s trainer and
prints one table; the untrained column is the same network before training.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fedreid.config import load_config
from fedreid.config.schema import SYNTHETIC8_SITES
from fedreid.data.sources import ensure_data_root
from fedreid.engine import SiteTrainer, build_optimizer, load_site
from fedreid.runlog import markdown_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synthetic-8")
    p.add_argument("--sites", default=",".join(SYNTHETIC8_SITES))
    p.add_argument("--methods", default="bot,capr")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--size", default="64x32")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--weights", default="none")
    p.add_argument("--lr", type=float, default=3.5e-4)
    p.add_argument("--out", default="")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    sites = args.sites.split(",")
    methods = args.methods.split(",")
    root = ensure_data_root(args.data, sites=sites, synth_scale=1.0, synth_seed=0)
    rows = []
    started = time.perf_counter()
    for site in sites:
        data = load_site(root / site, "fedreid", (h, w))
        row = [site]
        for i, method in enumerate(methods):
            cfg = load_config([f"method.name={method}", f"data.height={h}", f"data.width={w}",
                               f"model.arch={args.arch}", f"model.weights={args.weights}",
                               f"train.lr={args.lr}", "device=auto"])
            trainer = SiteTrainer(cfg, data)
            if i == 0:
                before = trainer.evaluate()
                row += [before["mAP"], before["rank1"]]
            opt = build_optimizer(cfg, trainer.method, cfg.train.lr)
            for epoch in range(args.epochs):
                trainer.train_epochs(1, seed=epoch, epoch_offset=epoch, optimizer=opt)
            after = trainer.evaluate()
            row += [after["mAP"], after["rank1"]]
            print(f"{site} {method}: mAP {before['mAP']:.3f} → {after['mAP']:.3f}", flush=True)
        rows.append(row)
    n = len(rows)
    means = ["**mean**"] + [sum(r[j] for r in rows) / n for j in range(1, len(rows[0]))]
    headers = ["site", "untrained mAP", "untrained R1"]
    for m in methods:
        headers += [f"{m} mAP", f"{m} R1"]
    table = markdown_table(headers, [*rows, means])
    title = (f"{args.arch} ({args.weights}) at {args.size}, {args.epochs} epochs, "
             f"torch threads {torch.get_num_threads()}, {time.perf_counter() - started:.0f} s")
    print(f"\n{title}\n\n{table}")
    if args.out:
        Path(args.out).write_text(f"# {title}\n\n{table}")


if __name__ == "__main__":
    main()
