"""What the IQAGA/DAPRH claim checks share: each site's camera-style copies, made once.

The copies of site ``s`` go to ``<work>/copies/<s>`` (outside the benchmark data folder, so
other runs on the same data never see them); methods find them with
``method.<name>.generated=<work>/copies/{site}``. A site whose copies were already written
with the same GAN options and size is reused, so both benchmarks share one set.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from fedreid.augment import GanOptions, train_camstyle_gan, write_camstyle_copies
from fedreid.data.split_images import load_split_images


def add_gan_arguments(parser: argparse.ArgumentParser) -> None:
    """The GAN options both claim checks take (defaults: `fedreid site augment`'s, 600 iterations)."""
    parser.add_argument("--gan-iterations", type=int, default=600)
    parser.add_argument("--gan-dim", type=int, default=GanOptions().dim, help="generator width")
    parser.add_argument("--gan-res-blocks", type=int, default=GanOptions().res_blocks)
    parser.add_argument("--gan-lr", type=float, default=GanOptions().lr,
                        help="GAN learning rate (StarGAN: 1e-4; short runs need more)")


def gan_options(args: argparse.Namespace) -> GanOptions:
    return GanOptions(iterations=args.gan_iterations, dim=args.gan_dim, res_blocks=args.gan_res_blocks,
                      lr=args.gan_lr)


def gan_title(args: argparse.Namespace) -> str:
    return (f"GAN {args.gan_iterations} iterations, dim {args.gan_dim}, {args.gan_res_blocks} residual blocks, "
            f"lr {args.gan_lr:g}")


def copies_template(work: Path) -> str:
    return str((work / "copies").resolve() / "{site}")


def ensure_copies(root: Path, site: str, work: Path, size: tuple[int, int], options: GanOptions,
                  per_image: int = 0) -> float:
    """Train the site's GAN and write its copies unless done already with the same options,
    size and copies per image; returns the GAN's training minutes (as measured then)."""
    out = work / "copies" / site
    meta_path = out / "meta.json"
    if meta_path.is_file():
        gan = json.loads(meta_path.read_text()).get("gan", {})
        if {k: gan.get(k) for k in asdict(options)} == asdict(options) and gan.get("size") == list(size) \
                and gan.get("per_image") == per_image:
            return float(gan["minutes"])
    images = load_split_images(root / site, "fedreid", size)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    last = [0.0]

    def report(i: int, n: int, logs: dict[str, float]) -> None:
        if time.perf_counter() - last[0] > 60 or i == n:
            last[0] = time.perf_counter()
            print(f"  GAN {site}: {i}/{n} d_cls {logs.get('d_cls', 0):.2f} g_cls {logs.get('g_cls', 0):.2f} "
                  f"g_rec {logs.get('g_rec', 0):.3f} ({last[0] - started:.0f} s)", flush=True)

    gan = train_camstyle_gan(images.train.images, images.train.camids, options, checkpoint=out / "gan.pt",
                             progress=report)
    minutes = (time.perf_counter() - started) / 60
    n = write_camstyle_copies(root / site, images.train.samples, images.train.images, gan, out,
                              per_image=per_image,
                              gan_info={**asdict(options), "size": list(size), "per_image": per_image,
                                        "minutes": minutes})
    print(f"  {site}: {n} copies, GAN {minutes:.1f} min", flush=True)
    return minutes
