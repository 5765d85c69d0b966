"""MoSAIC-ReID's claims on synthetic-8, each site alone:

1. the knock-out importance of the attribute experts recovers the generator's truth (Spearman
   ρ between measured importance and each attribute's separability at the site, over the
   attributes somebody there has; the issue's goal is ρ ≥ 0.8), and it differs between sites
   where the truth differs. ρ against the identity information alone is given too: the
   oracle gates from labels, so how visible an attribute is cannot matter to it;
2. mAP of ``mosaic`` with the oracle and the learned router against the same ViT without
   experts.

    python -m sims.bench.mosaic_claim [--data /tmp/mosaic_claim/data] [--sites market,duke]
        [--scale 0.5] [--size 64x32] [--vit vit_tiny_p8] [--vit-depth 4] [--epochs 20]
        [--expert-epochs 10] [--out mosaic.md] [key=value ...]

Protocol (the paper puts experts on a trained backbone): the plain ViT (``expert_blocks=0``)
trains ``--epochs`` epochs; from that model, (a) the plain ViT trains ``--expert-epochs``
more (the baseline), (b) ``mosaic`` with the oracle router and (c) with the learned router
train their experts (and neck, and router) for ``--expert-epochs`` with the ViT frozen. So
every variant has seen the same number of epochs and the experts are the only difference.
The knock-out analysis (:mod:`fedreid.analysis`) runs on (b) and (c). Missing sites are
generated at ``--size`` under ``--data``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fedreid.analysis import attribute_importance, generator_truth, rank_agreement
from fedreid.analysis.models import SiteModel, site_knockout
from fedreid.config import load_config
from fedreid.data.sources import add_generated_kinds
from fedreid.data.split_images import load_split_images
from fedreid.data.synth import KINDS, generate_synthetic8
from fedreid.runlog import markdown_table
from fedreid.training import LocalTrainer, stream_seed

MEASURES = ("delta_ap", "glm_ap", "forest")


def site_folder(root: Path, site: str, scale: float, size: tuple[int, int]) -> Path:
    """The site under ``root``, generated when missing; a set-up kind (``clothes``: outfits
    that change, so some attributes do not stay with the person) is rendered beside them."""
    if not (root / site).is_dir():
        if site in KINDS:
            root.mkdir(parents=True, exist_ok=True)
            add_generated_kinds(root, [site], scale=scale, seed=0, size=size)
        else:
            generate_synthetic8(root, scale=scale, seed=0, size=size, sites=[site], workers=1)
    return root / site


def train(trainer: LocalTrainer, epochs: int, site: str, offset: int) -> float:
    opt = trainer.optimizer()
    started = time.perf_counter()
    for e in range(epochs):
        trainer.train_epochs(1, seed=stream_seed(trainer.cfg.seed, site, offset + e), epoch_offset=offset + e,
                             optimizer=opt)
    return time.perf_counter() - started


def run_site(folder: Path, site: str, size: tuple[int, int], common: list[str], epochs: int,
             expert_epochs: int) -> dict:
    images = load_split_images(folder, "fedreid", size)
    truth = generator_truth(folder)
    if truth is None:
        raise ValueError(f"{folder}: no attribute truth in meta.json; regenerate the site")
    plain = LocalTrainer(load_config([*common, "method.mosaic.expert_blocks=0"]), images)
    train(plain, epochs, site, 0)
    start = {k: v.clone() for k, v in plain.model.state_dict().items()}
    out: dict = {"truth_present": truth.present,
                 "train": f"{len(np.unique(images.train.pids))} ids, {len(images.train)} images"}
    seconds = train(plain, expert_epochs, site, epochs)
    res = plain.evaluate()
    out["plain ViT"] = {"mAP": res["mAP"], "rank1": res["rank1"], "seconds": seconds}
    print(f"{site} plain ViT: mAP {res['mAP']:.4f}", flush=True)
    for router in ("oracle", "learned"):
        cfg = load_config([*common, f"method.mosaic.router={router}", "method.mosaic.freeze_backbone=true"])
        trainer = LocalTrainer(cfg, images)
        missing = trainer.model.load_state_dict(start, strict=False).missing_keys
        assert all(k.startswith(("backbone.experts.", "backbone.router.")) for k in missing), missing
        seconds = train(trainer, expert_epochs, site, epochs)
        res = trainer.evaluate()
        ko = site_knockout(SiteModel(site, trainer.method, images, folder), flip=False)
        imp = attribute_importance(ko, seed=0)
        row = {"mAP": res["mAP"], "rank1": res["rank1"], "seconds": seconds, "importance": imp.to_dict()}
        for m in MEASURES:
            row[f"rho_{m}"], row[f"n_{m}"] = rank_agreement(imp.measure(m), truth.separability, truth.present)
            row[f"rho_all_{m}"], _ = rank_agreement(imp.measure(m), truth.separability)
        row["rho_information"], _ = rank_agreement(imp.measure("delta_ap"), truth.information, truth.present)
        out[f"mosaic {router}"] = row
        print(f"{site} mosaic {router}: mAP {res['mAP']:.4f}, ρ(ΔAP, truth) {row['rho_delta_ap']:.3f} "
              f"over {row['n_delta_ap']} present attributes", flush=True)
    out["truth"] = truth.separability
    return out


def between_sites(results: dict[str, dict], variant: str) -> list[list]:
    """ρ between two sites' measured ΔAP rankings next to ρ between their truths, over the
    attributes present at both."""
    rows = []
    sites = list(results)
    for i, a in enumerate(sites):
        for b in sites[i + 1:]:
            both = [n for n in results[a]["truth_present"] if n in results[b]["truth_present"]]
            da = dict(zip(results[a][variant]["importance"]["names"], results[a][variant]["importance"]["delta_ap"],
                          strict=True))
            db = dict(zip(results[b][variant]["importance"]["names"], results[b][variant]["importance"]["delta_ap"],
                          strict=True))
            rows.append([f"{a} vs {b}", variant, rank_agreement(da, db, both)[0],
                         rank_agreement(results[a]["truth"], results[b]["truth"], both)[0], len(both)])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/tmp/mosaic_claim/data")
    p.add_argument("--sites", default="market,duke")
    p.add_argument("--scale", type=float, default=0.5)
    p.add_argument("--size", default="64x32")
    p.add_argument("--vit", default="vit_tiny_p8")
    p.add_argument("--vit-depth", type=int, default=4)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--expert-epochs", type=int, default=10)
    p.add_argument("--out", default="")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(1)
    h, w = (int(v) for v in args.size.split("x"))
    common = [f"data.height={h}", f"data.width={w}", "method.name=mosaic", "device=cpu",
              f"model.arch={args.vit}", f"model.vit_depth={args.vit_depth}", "eval.flip=false",
              *args.overrides]
    root = Path(args.data)
    results = {}
    for site in args.sites.split(","):
        folder = site_folder(root, site, args.scale, (h, w))
        results[site] = run_site(folder, site, (h, w), common, args.epochs, args.expert_epochs)
    rows = []
    for site, r in results.items():
        for variant in ("plain ViT", "mosaic oracle", "mosaic learned"):
            v = r[variant]
            rhos = [v.get(f"rho_{m}", np.nan) for m in MEASURES]
            rows.append([site, variant, v["mAP"], v["rank1"], *rhos, v.get("rho_information", np.nan),
                         v.get("n_delta_ap", "")])
    table = markdown_table(["site", "variant", "mAP", "Rank-1", *(f"ρ {m} vs separability" for m in MEASURES),
                            "ρ delta_ap vs information", "present attributes"], rows)
    sites_table = markdown_table(["sites", "variant", "ρ measured ΔAP", "ρ truth", "attributes"],
                                 [row for v in ("mosaic oracle", "mosaic learned") for row in between_sites(results, v)])
    sizes = "; ".join(f"{site} {r['train']}" for site, r in results.items())
    text = (f"{args.epochs}+{args.expert_epochs} epochs at {args.size}, {args.vit} depth {args.vit_depth}, "
            f"training data: {sizes}; overrides {args.overrides}\n\n{table}\n\n{sites_table}\n")
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
