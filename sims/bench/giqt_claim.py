"""GIQT's claim on the generated ``aerial`` site: aerial->ground mAP above the same ViT
without GIQT, per altitude bin.

    python -m sims.bench.giqt_claim [--data /tmp/fedreid-kinds] [--epochs 20] [--seeds 0,1]
        [--size 64x32] [--vit vit_tiny_p8] [--vit-depth 4] [--out /tmp/giqt_claim] [key=value ...]

Variants (one ViT, one BoT head, same seeds, same epochs, the site alone): the plain ViT
(``method.giqt.blocks=0``), GIQT with the metadata's geometry (at ``scale`` 1 and 10: how
fast its zero-initialised parts move), and GIQT with the geometry a
regressor predicts from the image (``regressor=true source=regressor``: the set-up for
sites without metadata). The aerial site's altitude bins are its three drone levels
(A0/A1/A2, 15/30/45 m). Writes ``<out>/giqt_claim.md`` (mean ± spread over seeds),
``.json`` (every run) and ``.png`` (mAP per altitude bin, both directions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedreid.data.split_images import load_split_images
from fedreid.runlog import markdown_table
from sims.bench.claims import ensure_kind, mean_sd, seeded_variants, vit_site_arguments, write_claim

VARIANTS = {
    "plain ViT": ["method.giqt.blocks=0"],
    "GIQT (metadata)": [],
    "GIQT (metadata, scale 10)": ["method.giqt.scale=10"],
    "GIQT (regressor)": ["method.giqt.regressor=true", "method.giqt.source=regressor"],
}
BINS = ("alt0", "alt1", "alt2")


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    width = 0.8 / len(results)
    for ax, direction in zip(axes, ("a2g", "g2a"), strict=True):
        labels = ["all", *BINS]
        for i, (variant, runs) in enumerate(results.items()):
            keys = [f"{direction}_mAP", *(f"{direction}_mAP_{b}" for b in BINS)]
            means = [np.mean([r.get(k, np.nan) for r in runs]) for k in keys]
            errs = [np.std([r.get(k, np.nan) for r in runs]) for k in keys]
            ax.bar(np.arange(len(keys)) + i * width, means, width, yerr=errs, label=variant)
        ax.set_xticks(np.arange(len(labels)) + width * (len(results) - 1) / 2,
                      ["all", "A0 15 m", "A1 30 m", "A2 45 m"])
        ax.set_title({"a2g": "aerial → ground", "g2a": "ground → aerial"}[direction])
        ax.set_ylabel("mAP")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = vit_site_arguments(__doc__.splitlines()[0], epochs=20, seeds="0,1", vit_depth=4, out="/tmp/giqt_claim")
    h, w = (int(v) for v in args.size.split("x"))
    site = ensure_kind(Path(args.data), "aerial", (128, 64))
    images = load_split_images(site, "fedreid", (h, w))
    common = ["method.name=giqt", "device=cpu", f"data.height={h}", f"data.width={w}",
              f"model.arch={args.vit}", f"model.vit_depth={args.vit_depth}", *args.overrides]
    results = seeded_variants(
        images, common, VARIANTS, args.seeds, args.epochs,
        lambda r: f"a2g mAP {r['untrained_a2g_mAP']:.4f} → {r['a2g_mAP']:.4f}, "
        + ", ".join(f"{b} {r.get(f'a2g_mAP_{b}', float('nan')):.4f}" for b in BINS))
    cols = ["mAP", "a2g_mAP", *(f"a2g_mAP_{b}" for b in BINS), "g2a_mAP", *(f"g2a_mAP_{b}" for b in BINS)]
    rows = [[variant, *(mean_sd([r.get(c, np.nan) for r in runs]) for c in ["untrained_a2g_mAP", *cols])]
            for variant, runs in results.items()]
    table = markdown_table(["variant", "untrained a2g mAP", "single-query mAP", "a2g mAP",
                            "a2g A0", "a2g A1", "a2g A2", "g2a mAP", "g2a A0", "g2a A1", "g2a A2"], rows)
    header = (f"aerial site, {args.epochs} epochs, seeds {args.seeds}, {args.size}, {args.vit} depth "
              f"{args.vit_depth}, overrides {args.overrides}; mean ± std over seeds")
    write_claim(Path(args.out), "giqt_claim", header, table, results, plot)


if __name__ == "__main__":
    main()
