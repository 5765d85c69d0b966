"""KWF re-ranking on synthetic-8: does it lift Rank-1 and mAP over no re-ranking, and how
does it compare with k-reciprocal re-ranking in quality and time?

    python -m sims.bench.kwf_claim [--epochs 4] [--sites ...] [--size 64x32] [--method bot]
        [--out kwf.md] [key=value ...]

Each site trains its method alone (as sims.bench.site_learning), then the same query and
gallery features are ranked plainly, with k-reciprocal re-ranking, and with KWF under each
of its four neighbour weightings; the re-ranking time is measured on those features.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fedreid.config import load_config
from fedreid.config.schema import SYNTHETIC8_SITES
from fedreid.data.sources import ensure_data_root
from fedreid.data.split_images import load_split_images
from fedreid.eval.features import pairwise_distance, tracklet_features
from fedreid.eval.metrics import evaluate
from fedreid.eval.protocols import summarise
from fedreid.eval.rerank import KWF_WEIGHTINGS, k_reciprocal, kwf
from fedreid.runlog import markdown_table
from fedreid.training import LocalTrainer, stream_seed


def rankings(qf, gf, q_pids, g_pids, q_cams, g_cams) -> dict[str, dict[str, float]]:
    """Plain, k-reciprocal and KWF (each weighting) figures with each one's seconds."""
    dist = np.asarray(pairwise_distance(qf, gf))
    out = {"none": {**summarise(evaluate(dist, q_pids, g_pids, q_cams, g_cams)), "seconds": 0.0}}
    started = time.perf_counter()
    rr = k_reciprocal(dist, np.asarray(pairwise_distance(qf, qf)), np.asarray(pairwise_distance(gf, gf)))
    out["k_reciprocal"] = {**summarise(evaluate(rr, q_pids, g_pids, q_cams, g_cams)),
                           "seconds": time.perf_counter() - started}
    for weighting in KWF_WEIGHTINGS:
        started = time.perf_counter()
        fused = kwf(qf, gf, g_cams, q_cams, weighting=weighting)
        out[f"kwf {weighting}"] = {**summarise(evaluate(fused, q_pids, g_pids, q_cams, g_cams)),
                                   "seconds": time.perf_counter() - started}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synthetic-8")
    p.add_argument("--sites", default=",".join(SYNTHETIC8_SITES))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--size", default="64x32")
    p.add_argument("--method", default="bot")
    p.add_argument("--out", default="")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    sites = args.sites.split(",")
    root = ensure_data_root(args.data, sites=sites, synth_scale=1.0, synth_seed=0)
    cfg = load_config([f"method.name={args.method}", f"data.height={h}", f"data.width={w}", *args.overrides])
    per_site: dict[str, dict] = {}
    for site in sites:
        images = load_split_images(root / site, "fedreid", (h, w))
        trainer = LocalTrainer(cfg, images)
        opt = trainer.optimizer()
        for epoch in range(args.epochs):
            trainer.train_epochs(1, seed=stream_seed(cfg.seed, site, epoch), epoch_offset=epoch, optimizer=opt)
        qf, gf = trainer.features(images.query), trainer.features(images.gallery)
        q = (images.query.pids, images.query.camids)
        g = (images.gallery.pids, images.gallery.camids)
        if images.video:
            qf, *q = tracklet_features(qf, images.query.samples)
            gf, *g = tracklet_features(gf, images.gallery.samples)
        per_site[site] = rankings(qf, gf, q[0], g[0], q[1], g[1])
        r = per_site[site]
        print(f"{site}: mAP none {r['none']['mAP']:.4f}, k-reciprocal {r['k_reciprocal']['mAP']:.4f}, "
              f"kwf uniform {r['kwf uniform']['mAP']:.4f}", flush=True)
    rows = []
    for name in per_site[sites[0]]:
        mean = {k: sum(per_site[s][name][k] for s in sites) / len(sites) for k in ("mAP", "rank1", "seconds")}
        lifted = sum(per_site[s][name]["rank1"] > per_site[s]["none"]["rank1"] for s in sites)
        rows.append([name, mean["mAP"], mean["rank1"], f"{lifted}/{len(sites)}", 1000 * mean["seconds"],
                     *[per_site[s][name]["mAP"] for s in sites]])
    table = markdown_table(["ranking", "mean mAP", "mean Rank-1", "sites with Rank-1 up", "ms per site",
                            *[f"{s} mAP" for s in sites]], rows)
    print(f"\n{args.method}, {args.epochs} epochs at {args.size}\n\n{table}")
    if args.out:
        Path(args.out).write_text(table)
        Path(args.out).with_suffix(".json").write_text(json.dumps(per_site, indent=1))


if __name__ == "__main__":
    main()
