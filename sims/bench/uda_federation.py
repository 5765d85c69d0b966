"""Sites without labels learning from sites with labels, federated (IQAGA + DAPRH under FedKLPR).

    python -m sims.bench.uda_federation [--labelled duke,market,cuhk03]
        [--unlabelled prid,cuhk01,viper,3dpes,ilids] [--size 64x32] [--gan-iterations 600] [--gan-dim 16]
        [--work DIR] [--threads N] [--out uda_federation.md] [key=value ...]
    e.g. python -m sims.bench.uda_federation fl.rounds=4 train.max_batches=12

Three FedKLPR federations, same seed, rounds and local budget, in-process (the real ClientApp
and strategy, no Ray):

1. the labelled sites run ``iqaga`` (real images + their camera-style copies, quality
   weighting) and the unlabelled sites ``daprh`` (per-round clustering, refined soft labels,
   mean teacher seeing camera-style copies);
2. every site runs ``capr`` (unsupervised camera-aware proxies: labels unused everywhere);
3. the labelled sites alone, ``iqaga``; its final global model is then tested at the
   unlabelled sites, which never took part.

The claim: (1) gives the unlabelled sites a better model than (2) and (3). Prints the mean
global mAP / Rank-1 at the unlabelled sites (the global model, each site's own query and
gallery; their labels are used only there), the labelled sites' mean mAP, and FedKLPR's bytes
(up + down over all rounds). Each site's camera-style copies are made first (cached in
``--work``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fedreid.config import load_config
from fedreid.config.presets import strategy_overrides
from fedreid.data.sources import ensure_data_root
from fedreid.data.split_images import load_split_images
from fedreid.federated_client import FederatedClient
from fedreid.fl.codec import encode_sparse
from fedreid.report import run_curves
from fedreid.runlog import markdown_table
from server.checkpoint import load_checkpoint
from sims.bench.ablation import run_variants
from sims.bench.uda_common import (
    add_gan_arguments,
    copies_template,
    ensure_copies,
    gan_options,
    gan_title,
)
from sims.inprocess_grid import set_task_identity


def final_site_figures(run_dir: Path) -> dict[str, dict[str, float]]:
    curves = run_curves(run_dir)
    return curves["evals"][max(curves["evals"])]["sites"]


def global_model_at(run_dir: Path, sites: list[str], root: Path, overrides: list[str]) -> dict[str, dict[str, float]]:
    """The run's final global model evaluated at sites that were not in it (as a site
    evaluates a download: its own query and gallery, global BN statistics)."""
    state, _, _ = load_checkpoint(run_dir)
    cfg = load_config([*strategy_overrides("fedklpr"), *overrides, "method.name=bot"])
    out = {}
    for site in sites:
        images = load_split_images(root / site, cfg.data.dataset, (cfg.data.height, cfg.data.width))
        out[site] = FederatedClient(cfg, images).evaluate_round(encode_sparse(state.global_state, {}))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synthetic-8")
    p.add_argument("--labelled", default="duke,market,cuhk03")
    p.add_argument("--unlabelled", default="prid,cuhk01,viper,3dpes,ilids")
    p.add_argument("--size", default="64x32")
    add_gan_arguments(p)
    p.add_argument("--work", default="", help="copies and run folders (default: a new temporary folder)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--out", default="")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    set_task_identity()
    labelled, unlabelled = args.labelled.split(","), args.unlabelled.split(",")
    sites = [*labelled, *unlabelled]
    h, w = (int(v) for v in args.size.split("x"))
    root = ensure_data_root(args.data, sites=sites, synth_scale=1.0, synth_seed=0)
    work = Path(args.work or tempfile.mkdtemp(prefix="fedreid-uda-fed-"))
    started = time.perf_counter()
    gan_minutes = {site: ensure_copies(root, site, work, (h, w), gan_options(args)) for site in sites}
    copies = copies_template(work)
    common = [f"data.root={root}", f"data.height={h}", f"data.width={w}", "model.arch=resnet18",
              f"method.iqaga.generated={copies}", f"method.daprh.generated={copies}", *args.overrides]
    all_sites = f"data.sites=[{','.join(sites)}]"
    variants = {
        "iqaga (labelled) + daprh (unlabelled)": [all_sites, *[f"sites.{s}.method=iqaga" for s in labelled],
                                                  *[f"sites.{s}.method=daprh" for s in unlabelled]],
        "all capr": [all_sites, "method.name=capr"],
        "labelled sites alone (iqaga)": [f"data.sites=[{','.join(labelled)}]", "method.name=iqaga"],
    }
    figures: dict[Path, dict[str, dict[str, float]]] = {}

    def site_figures(run_dir: Path) -> dict[str, dict[str, float]]:
        if run_dir not in figures:
            final = final_site_figures(run_dir)
            missing = [s for s in unlabelled if s not in final]
            if missing:
                final.update(global_model_at(run_dir, missing, root, [*common, all_sites]))
            figures[run_dir] = final
        return figures[run_dir]

    def mean(run_dir: Path, group: list[str], key: str) -> float:
        final = site_figures(run_dir)
        return sum(final[s][f"global_{key}"] for s in group) / len(group)

    out = work / "runs"
    table = run_variants(variants, common, out, extra_columns={
        "unlabelled mAP": lambda d: mean(d, unlabelled, "mAP"),
        "unlabelled Rank-1": lambda d: mean(d, unlabelled, "rank1"),
        "labelled mAP": lambda d: mean(d, labelled, "mAP"),
    })
    per_site = markdown_table(
        ["variant", *[f"{s} mAP" for s in unlabelled]],
        [[name, *[site_figures(d)[s]["global_mAP"] for s in unlabelled]] for name, d in
         ((name, out / name.replace(" ", "-").replace("(", "").replace(")", "").replace("=", ""))
          for name in variants)])
    cfg = load_config([*common, all_sites])
    title = (f"{args.size}, {cfg.fl.rounds} rounds, {cfg.train.epochs} local epoch(s) of at most "
             f"{cfg.train.max_batches or 'all'} batches, labelled {', '.join(labelled)}, unlabelled "
             f"{', '.join(unlabelled)}, {gan_title(args)} per site "
             f"({sum(gan_minutes.values()):.0f} min in all), torch threads {torch.get_num_threads()}, "
             f"{time.perf_counter() - started:.0f} s in all")
    text = (f"{title}\n\n(mean mAP / mean Rank-1 / personal mAP: over each federation's own sites)\n\n"
            f"{table}\nUnlabelled sites, global model:\n\n{per_site}")
    print(f"\n{text}\nrun folders: {out}")
    if args.out:
        Path(args.out).write_text(f"# IQAGA + DAPRH federated on synthetic-8\n\n{text}")
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"title": title, "gan_minutes": gan_minutes,
             "sites": {str(d): f for d, f in figures.items()}}, indent=1))


if __name__ == "__main__":
    main()
