"""IQAGA/DAPRH's transfer claim on synthetic-8: a labelled source site, an unlabelled target.

    python -m sims.bench.uda_transfer [--pairs duke:market,market:duke] [--size 64x32]
        [--source-epochs 6] [--target-epochs 3] [--gan-iterations 600] [--gan-dim 16] [--work DIR]
        [--threads N] [--out uda_transfer.md] [key=value ...]

For each pair, models trained on the source with ``iqaga`` are tested directly on the target
(target query/gallery, no target label used anywhere):

1. source only: ID + softmax triplet on real images (``fake_ratio=0``, no quality weight);
2. + camera-style copies: each image swapped for a GAN copy of itself as another source
   camera with probability 0.5 (the site's own GAN, ``fedreid site augment``);
3. + quality weighting: IQAGA's feature-norm weights on top of 2;
4. + DAPRH refinement: model 3 fine-tuned on the unlabelled target with ``daprh`` (clusters,
   refined soft labels, mean teacher seeing the target's own camera-style copies, AdaBN);
5. (opt-in, beside the chain) 3 + target styles: the source also renders its images in the
   target cameras' low-frequency amplitude aggregates (what the target would share).

Every variant starts from the same initial weights and trains the same epochs; the table's
first row is those initial weights, untrained, on the target (the chance level of this split). The seed's
dissertation reports gains "up to 12" points of mAP/Rank-1 (research/uda.md). Prints one
table (target mAP / Rank-1, and the source mAP of the source models) and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fedreid.augment.style import save_style_message, site_style_message
from fedreid.config import load_config
from fedreid.data.sources import ensure_data_root
from fedreid.data.split_images import load_split_images
from fedreid.runlog import markdown_table
from fedreid.training import LocalTrainer, stream_seed
from sims.bench.uda_common import (
    add_gan_arguments,
    copies_template,
    ensure_copies,
    gan_options,
    gan_title,
)

SOURCE_VARIANTS: dict[str, list[str]] = {
    "source only": ["method.iqaga.fake_ratio=0", "method.iqaga.quality_weight=false"],
    "+ camera-style copies": ["method.iqaga.fake_ratio=0.5", "method.iqaga.quality_weight=false"],
    "+ quality weighting": ["method.iqaga.fake_ratio=0.5", "method.iqaga.quality_weight=true"],
}
STYLES_VARIANT = "+ quality weighting + target styles (opt-in)"
UNTRAINED = "initial weights (no training: the chance level)"


def train(trainer: LocalTrainer, site: str, epochs: int, seed: int) -> float:
    opt = trainer.optimizer()
    started = time.perf_counter()
    for epoch in range(epochs):
        stats = trainer.train_epochs(1, seed=stream_seed(seed, site, epoch), epoch_offset=epoch, optimizer=opt)
        extra = {k: round(v, 3) for k, v in stats.items() if k.startswith("prep_") or k == "loss"}
        print(f"    epoch {epoch + 1}/{epochs} {extra}", flush=True)
    return time.perf_counter() - started


def evaluate_on(target, state: dict[str, torch.Tensor], overrides: list[str]) -> dict[str, float]:
    """A model's figures on the target's query/gallery (the target's labels are used only here)."""
    trainer = LocalTrainer(load_config([*overrides, "method.name=iqaga", "method.iqaga.fake_ratio=0"]), target)
    trainer.model.load_state_dict(state)
    return trainer.evaluate()


def run_pair(root: Path, work: Path, source: str, target: str, common: list[str], args) -> dict[str, dict]:
    size = tuple(int(v) for v in args.size.split("x"))
    src = load_split_images(root / source, "fedreid", size)
    tgt = load_split_images(root / target, "fedreid", size)
    cfg_seed = load_config(common).seed
    copies = [f"method.iqaga.generated={copies_template(work)}"]
    styles_file = work / f"styles-{target}.npz"
    message = site_style_message(tgt.train.images, tgt.train.camids, min_images=args.min_style_images)
    save_style_message(styles_file, {f"{target}.{k}": v for k, v in message.items()})
    variants = dict(SOURCE_VARIANTS)
    variants[STYLES_VARIANT] = [*SOURCE_VARIANTS["+ quality weighting"], f"method.iqaga.styles={styles_file}"]
    rows: dict[str, dict] = {}
    states: dict[str, dict] = {}
    untrained = LocalTrainer(load_config([*common, "method.name=iqaga", "method.iqaga.fake_ratio=0"]), src)
    on_target = evaluate_on(tgt, untrained.model.state_dict(), common)
    rows[UNTRAINED] = {"mAP": on_target["mAP"], "rank1": on_target["rank1"],
                       "source_mAP": untrained.evaluate()["mAP"], "seconds": 0.0}
    for label, over in variants.items():
        print(f"  {source}→{target} {label}", flush=True)
        trainer = LocalTrainer(load_config([*common, "method.name=iqaga", *copies, *over]), src)
        seconds = train(trainer, source, args.source_epochs, cfg_seed)
        states[label] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        on_source = trainer.evaluate()
        on_target = evaluate_on(tgt, states[label], common)
        rows[label] = {"mAP": on_target["mAP"], "rank1": on_target["rank1"], "source_mAP": on_source["mAP"],
                       "seconds": seconds}
        print(f"    target mAP {on_target['mAP']:.4f} R1 {on_target['rank1']:.4f} "
              f"(source mAP {on_source['mAP']:.4f}, {seconds:.0f} s)", flush=True)
    label = "+ DAPRH refinement"
    print(f"  {source}→{target} {label}", flush=True)
    daprh = LocalTrainer(load_config([*common, "method.name=daprh",
                                      f"method.daprh.generated={copies_template(work)}"]), tgt)
    daprh.model.load_state_dict(states["+ quality weighting"])
    seconds = train(daprh, target, args.target_epochs, cfg_seed)
    result = daprh.evaluate()
    rows[label] = {"mAP": result["mAP"], "rank1": result["rank1"], "source_mAP": float("nan"), "seconds": seconds}
    print(f"    target mAP {result['mAP']:.4f} R1 {result['rank1']:.4f} ({seconds:.0f} s)", flush=True)
    order = [UNTRAINED, *SOURCE_VARIANTS, label, STYLES_VARIANT]
    return {k: rows[k] for k in order}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synthetic-8")
    p.add_argument("--pairs", default="duke:market,market:duke")
    p.add_argument("--size", default="64x32")
    p.add_argument("--source-epochs", type=int, default=6)
    p.add_argument("--target-epochs", type=int, default=3)
    add_gan_arguments(p)
    p.add_argument("--min-style-images", type=int, default=50)
    p.add_argument("--work", default="", help="copies and style files (default: a new temporary folder)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--out", default="")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = [tuple(item.split(":")) for item in args.pairs.split(",")]
    sites = sorted({s for pair in pairs for s in pair})
    h, w = (int(v) for v in args.size.split("x"))
    root = ensure_data_root(args.data, sites=sites, synth_scale=1.0, synth_seed=0)
    work = Path(args.work or tempfile.mkdtemp(prefix="fedreid-uda-"))
    common = [f"data.height={h}", f"data.width={w}", "model.arch=resnet18", *args.overrides]
    started = time.perf_counter()
    gan_minutes = {site: ensure_copies(root, site, work, (h, w), gan_options(args)) for site in sites}
    results = {f"{s}→{t}": run_pair(root, work, s, t, common, args) for s, t in pairs}
    rows = []
    labels = list(next(iter(results.values())))
    for label in labels:
        row = [label]
        for pair in results.values():
            r = pair[label]
            row += [r["mAP"], r["rank1"]]
        rows.append(row)
    headers = ["variant", *[f"{pair} {k}" for pair in results for k in ("mAP", "Rank-1")]]
    table = markdown_table(headers, rows)
    source_table = markdown_table(["variant", *[f"{pair} source mAP" for pair in results],
                                   *[f"{pair} train s" for pair in results]],
                                  [[label, *[results[p][label]["source_mAP"] for p in results],
                                    *[results[p][label]["seconds"] for p in results]] for label in labels])
    title = (f"{args.size}, source {args.source_epochs} epochs, target {args.target_epochs} epochs, "
             f"{gan_title(args)} ({', '.join(f'{s} {m:.1f} min' for s, m in gan_minutes.items())}), "
             f"torch threads {torch.get_num_threads()}, {time.perf_counter() - started:.0f} s in all")
    text = f"{title}\n\nTarget mAP / Rank-1:\n\n{table}\nSource models on their own site, and training time:\n\n{source_table}"
    print(f"\n{text}\nwork folder: {work}")
    if args.out:
        Path(args.out).write_text(f"# IQAGA/DAPRH transfer on synthetic-8\n\n{text}")
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"title": title, "gan_minutes": gan_minutes, "results": results}, indent=1))


if __name__ == "__main__":
    main()
