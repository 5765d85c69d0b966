"""Where GIQT's geometry modules live in a federation: shared with the backbone, or kept on
each site.

    python -m sims.bench.giqt_sharing [--data /tmp/fedreid-kinds] [--rounds 6] [--sites 2]
        [--size 64x32] [--vit vit_tiny_p8] [--vit-depth 4] [--out /tmp/giqt_sharing] [key=value ...]

The generated aerial site's training identities are split into ``--sites`` disjoint sites
(every site keeps the whole query/gallery to report on). Each round every site loads the
global shared keys, trains one local epoch with ``giqt``, and the server averages the shared
keys weighted by training images (plain FedAvg of exactly what ``shared_keys`` names: the
choice under test, without pruning or the regulariser). Share rules compared:
``backbone+neck`` (rectifiers, prompts and regressor averaged too) and ``geometry-local``
(only the ViT and neck). Reports each site's aerial->ground mAP, overall and per altitude
bin, after the last round; writes ``<out>/giqt_sharing.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from fedreid.config import load_config
from fedreid.data.split_images import load_split_images
from fedreid.models.sharing import load_subset, state_subset
from fedreid.runlog import markdown_table
from fedreid.training import LocalTrainer, stream_seed
from sims.bench.claims import ensure_kind, write_claim
from sims.bench.echo_claim import subset
from sims.bench.giqt_claim import BINS

RULES = ("backbone+neck", "geometry-local")


def federate(sites, overrides: list[str], rounds: int) -> list[dict[str, float]]:
    cfg = load_config(overrides)
    trainers = [LocalTrainer(cfg, site, "giqt") for site in sites]
    method = trainers[0].method
    keys = type(method).shared_keys(method.options, trainers[0].model)
    weights = np.array([len(site.train) for site in sites], dtype=float)
    global_state = state_subset(trainers[0].model, keys)
    optimizers = [t.optimizer() for t in trainers]
    for r in range(rounds):
        states = []
        for trainer, site, opt in zip(trainers, sites, optimizers, strict=True):
            load_subset(trainer.model, global_state, keys)
            trainer.train_epochs(1, seed=stream_seed(cfg.seed, site.name, r), epoch_offset=r, optimizer=opt)
            states.append(state_subset(trainer.model, keys))
        global_state = {k: sum(w * s[k].float() for w, s in zip(weights, states, strict=True)) / weights.sum()
                        for k in keys}
        global_state = {k: v.to(states[0][k].dtype) for k, v in global_state.items()}
        print(f"round {r + 1}/{rounds} done", flush=True)
    out = []
    for trainer in trainers:
        load_subset(trainer.model, global_state, keys)
        out.append(trainer.evaluate())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/tmp/fedreid-kinds")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--size", default="64x32")
    p.add_argument("--vit", default="vit_tiny_p8")
    p.add_argument("--vit-depth", type=int, default=4)
    p.add_argument("--out", default="/tmp/giqt_sharing")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(1)
    h, w = (int(v) for v in args.size.split("x"))
    images = load_split_images(ensure_kind(Path(args.data), "aerial", (128, 64)), "fedreid", (h, w))
    pids = np.unique(images.train.pids)
    parts = np.array_split(pids, args.sites)
    sites = [subset(images, np.flatnonzero(np.isin(images.train.pids, part)), f"aerial-{i}")
             for i, part in enumerate(parts)]
    common = ["method.name=giqt", "device=cpu", f"data.height={h}", f"data.width={w}",
              f"model.arch={args.vit}", f"model.vit_depth={args.vit_depth}", *args.overrides]
    results = {rule: federate(sites, [*common, f"method.giqt.share={rule}"], args.rounds) for rule in RULES}
    cols = ["a2g_mAP", *(f"a2g_mAP_{b}" for b in BINS), "g2a_mAP"]
    rows = [[rule, i, *(r.get(c, float("nan")) for c in cols)]
            for rule, per_site in results.items() for i, r in enumerate(per_site)]
    rows += [[rule, "mean", *(np.mean([r.get(c, np.nan) for r in per_site]) for c in cols)]
             for rule, per_site in results.items()]
    table = markdown_table(["share rule", "site", "a2g mAP", "a2g A0", "a2g A1", "a2g A2", "g2a mAP"], rows)
    header = (f"aerial site split into {args.sites} sites, {args.rounds} rounds × 1 epoch, FedAvg of the shared "
              f"keys, {args.size}, {args.vit} depth {args.vit_depth}, overrides {args.overrides}")
    write_claim(Path(args.out), "giqt_sharing", header, table, results)


if __name__ == "__main__":
    main()
