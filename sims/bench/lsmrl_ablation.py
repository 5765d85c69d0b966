"""LSMRL's ablation on the generated ``ir-video`` site: what each part adds.

    python -m sims.bench.lsmrl_ablation [--data /tmp/fedreid-kinds] [--epochs 10] [--seeds 0]
        [--size 64x32] [--vit vit_tiny_p8] [--vit-depth 3] [--out /tmp/lsmrl_ablation] [key=value ...]

Rows add one part at a time to the same tracklet model (shared ViT, modality embedding,
spatial-temporal module, temporal pooling; ID + cross-modal triplet): the plain sequence
model, + shared semantic tokens, + cross-modal interaction, + modality losses (centre
alignment and MMD discrepancy) = full LSMRL-lite. Same seeds and epochs for every row; the
tracklet-level protocols infrared->visible and visible->infrared. Writes
``<out>/lsmrl_ablation.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedreid.data.split_images import load_split_images
from fedreid.runlog import markdown_table
from sims.bench.claims import ensure_kind, mean_sd, seeded_variants, vit_site_arguments, write_claim

PLAIN = ["method.lsmrl.semantic_tokens=0", "method.lsmrl.interaction=false", "method.lsmrl.modality_losses=false"]
VARIANTS = {
    "plain sequence model": PLAIN,
    "+ shared tokens": PLAIN[1:],
    "+ interaction": PLAIN[2:],
    "+ modality losses (full)": [],
}
METRICS = ("ir2v_mAP", "ir2v_rank1", "v2ir_mAP", "v2ir_rank1")


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / len(results)
    for i, (variant, runs) in enumerate(results.items()):
        means = [np.mean([r[m] for r in runs]) for m in METRICS]
        errs = [np.std([r[m] for r in runs]) for m in METRICS]
        ax.bar(np.arange(len(METRICS)) + i * width, means, width, yerr=errs, label=variant)
    ax.set_xticks(np.arange(len(METRICS)) + width * (len(results) - 1) / 2,
                  ["IR→V mAP", "IR→V R1", "V→IR mAP", "V→IR R1"])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = vit_site_arguments(__doc__.splitlines()[0], epochs=10, seeds="0", vit_depth=3, out="/tmp/lsmrl_ablation")
    h, w = (int(v) for v in args.size.split("x"))
    site = ensure_kind(Path(args.data), "ir-video", (128, 64))
    images = load_split_images(site, "fedreid", (h, w))
    common = ["method.name=lsmrl", "device=cpu", f"data.height={h}", f"data.width={w}",
              f"model.arch={args.vit}", f"model.vit_depth={args.vit_depth}", *args.overrides]
    results = seeded_variants(images, common, VARIANTS, args.seeds, args.epochs,
                              lambda r: ", ".join(f"{m} {r[m]:.4f}" for m in METRICS))
    rows = [[variant, *(mean_sd([r[m] for r in runs]) for m in ("untrained_ir2v_mAP", *METRICS))]
            for variant, runs in results.items()]
    table = markdown_table(["variant", "untrained IR→V mAP", "IR→V mAP", "IR→V Rank-1", "V→IR mAP",
                            "V→IR Rank-1"], rows)
    header = (f"ir-video site, {args.epochs} epochs, seeds {args.seeds}, {args.size}, {args.vit} depth "
              f"{args.vit_depth}, overrides {args.overrides}; mean ± std over seeds")
    write_claim(Path(args.out), "lsmrl_ablation", header, table, results, plot)


if __name__ == "__main__":
    main()
