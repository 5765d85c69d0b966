"""ECHO-BID's claims on the generated ``clothes`` site, in the clothes-changing setting:
what the masked-image-modelling head start, the transfer-set choice and score fusion bring.

    python -m sims.bench.echo_claim [--data /tmp/fedreid-kinds] [--epochs 6] [--mim-epochs 3]
        [--seed 0] [--size 64x32] [--depth 4] [--out /tmp/echo_claim] [key=value ...]

Runs (same seed, epochs and fine-tuning recipe, the site alone; EVA-02 tiny, patch 8):

1. head start: EVA-02 from scratch against EVA-02 after ``--mim-epochs`` of masked-image
   modelling on the site's own training images;
2. transfer set: the MIM model fine-tuned on a "small hard" subset (half the identities, all
   their outfits) against a "large easy" one (every identity, one outfit each);
3. fusion: per-query z-normalised score fusion of the MIM EVA-02 with a ResNet-18 and a ViT
   fine-tuned the same way (architecturally different backbones), against each alone.

Reports general / clothes-changing (cc) / same-clothes (sc) mAP and Rank-1; writes
``<out>/echo_claim.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from fedreid.config import load_config
from fedreid.data.split_images import SplitImages, load_split_images
from fedreid.data.store import ImageStore
from fedreid.methods.echo.fusion import fused_clothes_change
from fedreid.runlog import markdown_table
from fedreid.training import LocalTrainer
from sims.bench.claims import ensure_kind, train_epochs, write_claim

METRICS = ("general_mAP", "cc_mAP", "cc_rank1", "sc_mAP")


def subset(images: SplitImages, rows: np.ndarray, name: str) -> SplitImages:
    """The site with its training split cut to ``rows`` (query and gallery unchanged)."""
    train = images.train
    store = ImageStore.from_tensor(train.images[rows], train.pids[rows], train.camids[rows],
                                   samples=[train.samples[i] for i in rows])
    return replace(images, name=name, train=store, splits=replace(images.splits, train=store.samples))


def transfer_sets(images: SplitImages) -> dict[str, np.ndarray]:
    """Rows of the "small hard" set (the first half of the identities with several outfits,
    every image) and the "large easy" set (every identity, only its most frequent outfit)."""
    pids = images.train.pids
    clothes = images.train.field("clothes")
    many = [p for p in np.unique(pids) if len(np.unique(clothes[pids == p])) > 1]
    hard = np.flatnonzero(np.isin(pids, many[: max(2, len(many) // 2)]))
    easy = []
    for p in np.unique(pids):
        mine = np.flatnonzero(pids == p)
        values, counts = np.unique(clothes[mine], return_counts=True)
        easy.extend(mine[clothes[mine] == values[counts.argmax()]])
    return {"small hard": hard, "large easy": np.array(sorted(easy))}


def train(images: SplitImages, overrides: list[str], epochs: int) -> LocalTrainer:
    trainer = LocalTrainer(load_config(overrides), images)
    train_epochs(trainer, epochs)
    return trainer


def summary(images: SplitImages, trainer: LocalTrainer) -> tuple[dict[str, float], tuple]:
    metrics = trainer.evaluate()
    feats = (trainer.features(images.query), trainer.features(images.gallery))
    return {k: metrics[k] for k in (*METRICS, "occ_mAP") if k in metrics}, feats


def plot(rows: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(rows)
    for i, (label, m) in enumerate(rows.items()):
        ax.bar(np.arange(len(METRICS)) + i * width, [m.get(k, np.nan) for k in METRICS], width, label=label)
    ax.set_xticks(np.arange(len(METRICS)) + width * (len(rows) - 1) / 2, ["general mAP", "cc mAP", "cc Rank-1", "sc mAP"])
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/tmp/fedreid-kinds")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--mim-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="64x32")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--out", default="/tmp/echo_claim")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    images = load_split_images(ensure_kind(Path(args.data), "clothes", (128, 64)), "fedreid", (h, w))
    common = ["method.name=echo", "device=cpu", f"seed={args.seed}", f"data.height={h}", f"data.width={w}",
              f"model.vit_depth={args.depth}", *args.overrides]
    eva, mim = ["method.echo.eva=eva02_tiny_p8"], [f"method.echo.mim_epochs={args.mim_epochs}"]
    rows: dict[str, dict[str, float]] = {}
    feats: dict[str, tuple] = {}

    def record(label: str, site: SplitImages, over: list[str]) -> None:
        rows[label], feats[label] = summary(images, train(site, [*common, *over], args.epochs))
        print(f"{label}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[label].items()), flush=True)

    record("EVA-02, from scratch", images, eva)
    record("EVA-02 + MIM head start", images, mim)
    sets = transfer_sets(images)
    for name, kept in sets.items():
        site = subset(images, kept, f"clothes-{name.replace(' ', '-')}")
        label = f"EVA-02 + MIM, {name} set ({len(np.unique(site.train.pids))} ids, {len(kept)} images)"
        record(label, site, mim)
    record("ResNet-18", images, ["model.arch=resnet18"])
    record("ViT tiny", images, ["model.arch=vit_tiny_p8"])
    members = ["EVA-02 + MIM head start", "ResNet-18", "ViT tiny"]
    fused = fused_clothes_change([feats[m] for m in members], images.query.samples, images.gallery.samples)
    rows["fusion (EVA-02 + MIM, ResNet-18, ViT)"] = {k: fused[k] for k in METRICS if k in fused}
    table = markdown_table(["run", "general mAP", "cc mAP", "cc Rank-1", "sc mAP", "occluded mAP"],
                           [[label, *(m.get(k, float("nan")) for k in (*METRICS, "occ_mAP"))]
                            for label, m in rows.items()])
    header = (f"clothes site, {args.epochs} fine-tuning epochs, MIM {args.mim_epochs} epochs, seed {args.seed}, "
              f"{args.size}, depth {args.depth}, overrides {args.overrides}")
    write_claim(Path(args.out), "echo_claim", header, table, rows, plot)


if __name__ == "__main__":
    main()
