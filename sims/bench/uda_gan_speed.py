"""What `fedreid site augment` costs a site's machine: GAN seconds per iteration and copies per
second, at each image size, extrapolated to minutes per site.

    python -m sims.bench.uda_gan_speed [--data DIR] [--site market] [--sizes 64x32,128x64]
        [--iterations 40] [--full-iterations 2000] [--threads 2] [--out uda_gan_speed.md]

Times ``--iterations`` GAN iterations (the default generator and discriminator, batch 16,
after 5 warm-up iterations) on the site's own training images, and the translation of every
training image into each other camera; the minutes per site are those rates times
``--full-iterations`` (the command's default) and the site's copy count. The machine's load
is printed with the table: on a shared machine the wall-clock figures are upper bounds, and
the CPU-seconds (summed over the threads) say what a dedicated machine would need.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from fedreid.augment import GanOptions, train_camstyle_gan
from fedreid.data.sources import ensure_data_root
from fedreid.data.split_images import load_split_images
from fedreid.runlog import markdown_table

WARMUP = 5


def time_size(root: Path, site: str, size: tuple[int, int], iterations: int) -> dict[str, float]:
    """Seconds per GAN iteration, and copies translated per second, at ``size``."""
    images = load_split_images(root / site, "fedreid", size).train
    stamps: list[tuple[float, float]] = []
    gan = train_camstyle_gan(images.images, images.camids, GanOptions(iterations=WARMUP + iterations),
                             progress=lambda i, n, logs: stamps.append((time.perf_counter(), time.process_time())))
    per_iteration = (stamps[-1][0] - stamps[WARMUP - 1][0]) / iterations
    cpu_per_iteration = (stamps[-1][1] - stamps[WARMUP - 1][1]) / iterations
    cameras = np.array(gan.cameras)
    rows = np.arange(min(len(images), 256))
    targets = cameras[(np.searchsorted(cameras, images.camids[rows]) + 1) % len(cameras)]
    started = time.perf_counter()
    gan.translate(images.images[torch.from_numpy(rows)], targets)
    per_copy = (time.perf_counter() - started) / len(rows)
    copies = len(images) * (len(cameras) - 1)
    return {"images": float(len(images)), "cameras": float(len(cameras)), "s_per_iteration": per_iteration,
            "cpu_s_per_iteration": cpu_per_iteration,
            "copies": float(copies), "s_per_copy": per_copy}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synthetic-8")
    p.add_argument("--site", default="market")
    p.add_argument("--sizes", default="64x32,128x64")
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--full-iterations", type=int, default=GanOptions().iterations)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = ensure_data_root(args.data, sites=[args.site], synth_scale=1.0, synth_seed=0)
    rows = []
    for text in args.sizes.split(","):
        size = tuple(int(v) for v in text.split("x"))
        r = time_size(root, args.site, size, args.iterations)
        gan_min = r["s_per_iteration"] * args.full_iterations / 60
        copy_min = r["s_per_copy"] * r["copies"] / 60
        gan_cpu_min = r["cpu_s_per_iteration"] * args.full_iterations / 60
        rows.append([text, int(r["images"]), int(r["cameras"]), r["s_per_iteration"], r["cpu_s_per_iteration"],
                     gan_min, gan_cpu_min,
                     int(r["copies"]), copy_min, gan_min + copy_min])
        print(f"{text}: {r['s_per_iteration']:.3f} s/iteration, {r['s_per_copy'] * 1000:.1f} ms/copy", flush=True)
    table = markdown_table(["size", "train images", "cameras", "s / GAN iteration", "CPU s / iteration",
                            f"GAN min ({args.full_iterations} it.)", "GAN CPU min", "copies (all other cameras)",
                            "copies min", "min per site"], rows)
    title = (f"site {args.site} of {args.data}, torch threads {torch.get_num_threads()}, load average "
             f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, {args.iterations} timed iterations")
    print(f"\n{title}\n\n{table}")
    if args.out:
        Path(args.out).write_text(f"# Camera-style GAN cost per site\n\n{title}\n\n{table}")


if __name__ == "__main__":
    main()
