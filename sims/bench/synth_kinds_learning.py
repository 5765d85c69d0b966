"""Do the optional synthetic-8 kinds keep the learnability guarantee? Untrained vs trained.

    python -m sims.bench.synth_kinds_learning [--kinds aerial,ir-video,clothes] [--scale 0.5]
        [--epochs 4] [--size 64x32] [--gen-size 128x64] [--method bot] [--root DIR] [key=value ...]

Each kind is generated at ``--gen-size`` (the generator's default 128x64; or read from
``--root``), read back with the FedReID reader at ``--size``, and one
model (``--method``, ResNet-18 from random weights by default) is trained on the kind's
train_all split alone with ``fedreid train``'s trainer. Before and after training the site
is scored with the Market protocol and with the kind's own protocol from the evaluator
registry: aerial -> ``aerial_ground`` (a2g, g2a), ir-video -> ``cross_modality`` (ir2v,
v2ir at tracklet level), clothes -> ``clothes_change`` (general, cc, sc). The guarantee
holds when every trained mAP clearly beats the untrained one (printed as the gain).
Trailing ``key=value`` overrides apply to every run (e.g. ``train.max_batches=20``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fedreid.config import load_config
from fedreid.data.split_images import load_split_images
from fedreid.data.synth import KIND_KEYS, generate_synthetic8
from fedreid.training import LocalTrainer, stream_seed

PROTOCOL = {"aerial": "aerial_ground", "ir-video": "cross_modality", "clothes": "clothes_change"}
REPORTED = {  # metric prefixes of each kind's protocol, beside the Market protocol's mAP
    "aerial": ("a2g", "g2a"),
    "ir-video": ("ir2v", "v2ir"),
    "clothes": ("general", "cc", "sc"),
}


def learn(site: Path, kind: str, overrides: list[str], epochs: int) -> tuple[dict, dict, float]:
    """Untrained and trained figures of one kind's site, and the training seconds."""
    cfg = load_config([*overrides, f"eval.protocols=[single_query,{PROTOCOL[kind]}]"])
    images = load_split_images(site, "fedreid", (cfg.data.height, cfg.data.width))
    trainer = LocalTrainer(cfg, images)
    before = trainer.evaluate()
    opt = trainer.optimizer()
    started = time.perf_counter()
    for epoch in range(epochs):
        trainer.train_epochs(1, seed=stream_seed(cfg.seed, images.name, epoch), epoch_offset=epoch,
                             optimizer=opt)
    return before, trainer.evaluate(), time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default=",".join(KIND_KEYS))
    p.add_argument("--scale", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--size", default="64x32", help="training and evaluation input HxW")
    p.add_argument("--gen-size", default="128x64", help="HxW the kinds are rendered at")
    p.add_argument("--method", default="bot")
    p.add_argument("--root", type=Path, help="an existing generation (default: a temporary one)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="config overrides for every run")
    args = p.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    h, w = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(args.threads)
    overrides = [f"method.name={args.method}", f"data.height={h}", f"data.width={w}", "device=auto",
                 *args.overrides]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp)
            t = time.perf_counter()
            gen = tuple(int(v) for v in args.gen_size.split("x"))
            generate_synthetic8(root, scale=args.scale, seed=args.seed, size=gen, sites=[],
                                kinds=kinds, workers=2)
            print(f"generated {kinds} at scale {args.scale:g}, {args.gen_size}, in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
        for kind in kinds:
            before, after, seconds = learn(root / kind, kind, overrides, args.epochs)
            for prefix in ("", *REPORTED[kind]):
                key = f"{prefix}_mAP" if prefix else "mAP"
                r1 = f"{prefix}_rank1" if prefix else "rank1"
                rows.append((kind, prefix or "market", before[key], after[key], before[r1], after[r1],
                             seconds))
            print(f"{kind}: mAP {before['mAP']:.3f} -> {after['mAP']:.3f} ({seconds:.0f} s)", flush=True)
    scale = f"scale {args.scale:g} at {args.gen_size}" if args.root is None else str(args.root)
    print(f"\n{args.method}, {args.size}, {args.epochs} epochs, {scale}, overrides "
          f"{args.overrides or 'none'}\n")
    print("| kind | protocol | untrained mAP | trained mAP | gain | untrained R1 | trained R1 | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, name, m0, m1, r0, r1, s in rows:
        print(f"| {kind} | {name} | {m0:.3f} | {m1:.3f} | {m1 - m0:+.3f} | {r0:.3f} | {r1:.3f} | {s:.0f} |")


if __name__ == "__main__":
    main()
