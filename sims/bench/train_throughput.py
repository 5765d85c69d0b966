"""Training throughput of the re-ID backbones (images/s), and a site's step against a bare one.

One step = forward (train mode) + ID loss on the BN feature through a site classifier +
backward + Adam step, batch 32 (8 identities × 4). Reports the median of timed steps after
warm-up, all configurations in one run so the ratios between them are comparable.

``--site-vs-bare`` times a site's real training step (``LocalTrainer``: the data layer's
augmented batch, `bot`'s losses, the KL regulariser against a frozen reference, pruning
masks at 50 % re-applied, the centre-loss step) against a bare torch step of the same model,
losses and regulariser on an already-augmented batch, interleaved so both see the same load.

    .venv/bin/python -m sims.bench.train_throughput [--steps 3] [--device auto] [--site-vs-bare]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedreid.config import load_config
from fedreid.data.batch import make_batch
from fedreid.data.split_images import SplitImages
from fedreid.data.store import ImageStore
from fedreid.losses import kl_feature_loss
from fedreid.models import (
    IdentityHead,
    autocast_context,
    build_model,
    make_grad_scaler,
    resolve_device,
    to_channels_last,
)

ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")
SIZES = ((128, 64), (256, 128))


def _median_seconds(
    step: Callable[[], None], device: torch.device, warmup: int, steps: int
) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_images_per_s(
    arch: str,
    size: tuple[int, int],
    batch: int,
    device: torch.device,
    warmup: int,
    steps: int,
    amp: bool,
) -> float:
    model = to_channels_last(build_model(arch).to(device).train(), device)
    head = IdentityHead(model.feat_dim, 8).to(device)
    params = [p for p in [*model.parameters(), *head.parameters()] if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3.5e-4, weight_decay=5e-4)
    scaler = make_grad_scaler(device, amp)
    images = torch.randn(batch, 3, *size, device=device)
    labels = torch.arange(8, device=device).repeat_interleave(batch // 8 + 1)[:batch]
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, amp):
            loss = loss_fn(head(model(images).bn_feat), labels)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return batch / _median_seconds(step, device, warmup, steps)


def eval_images_per_s(
    arch: str,
    size: tuple[int, int],
    batch: int,
    device: torch.device,
    warmup: int,
    steps: int,
    amp: bool,
) -> float:
    model = to_channels_last(build_model(arch).to(device).eval(), device)
    images = torch.randn(batch, 3, *size, device=device)

    def step() -> None:
        with torch.inference_mode(), autocast_context(device, amp):
            model(images)

    return batch / _median_seconds(step, device, warmup, steps)


def site_vs_bare(size: tuple[int, int], device: torch.device, warmup: int, steps: int,
                 amp: bool) -> tuple[float, float]:
    """Median seconds of a site step and of a bare step with the same losses, interleaved."""
    from fedreid.prune import init_masks, magnitude_prune
    from fedreid.training import LocalTrainer

    n = 256
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, *size), dtype=torch.uint8, generator=gen)
    store = ImageStore.from_tensor(images, np.repeat(np.arange(n // 8), 8), np.tile(np.arange(2), n // 2))
    cfg = load_config(["method.name=bot", "model.arch=resnet18", f"data.height={size[0]}",
                       f"data.width={size[1]}", f"device={device.type}", f"train.amp={amp}"])
    site = LocalTrainer(cfg, SplitImages("bench", None, store, store, store))
    masks = magnitude_prune(site.model, init_masks(site.model), step=0.5, target=0.5)
    reference = site.snapshot()
    idx = site.method.batches(np.random.default_rng(0))[0]
    from fedreid.prune import MaskedParameters

    site_opt, masked = site.optimizer(), MaskedParameters(site.model, masks)

    bare = LocalTrainer(cfg, SplitImages("bench", None, store, store, store))
    method, model = bare.method, bare.model
    bare_opt = bare.optimizer()
    scaler = make_grad_scaler(device, amp and device.type == "cuda")
    batch = make_batch(store, idx, method.batch_spec, gen, device)
    targets = torch.as_tensor(method.labels[idx], device=device)

    def bare_step() -> None:
        with autocast_context(device, amp):
            global_feat, bn_feat = model(batch.images)
            method.center_opt.zero_grad(set_to_none=True)
            loss = (method.id_loss(method.heads["classifier"](bn_feat.float()), targets)
                    + method.triplet(global_feat.float(), targets)
                    + method.center_weight * method.heads["center"](global_feat.float(), targets))
            with torch.no_grad():
                ref = reference(batch.images).float()
            loss = loss + kl_feature_loss(F.normalize(bn_feat.float(), dim=1), ref)
        bare_opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(bare_opt)
        scaler.update()
        method.center_opt.step()

    def site_step() -> None:
        site._step(idx, gen, site_opt, reference, 1.0, masked)

    model.train()
    site.model.train()
    for _ in range(warmup):
        bare_step()
        site_step()
    bare_t, site_t = [], []
    for _ in range(steps):
        bare_t.append(_median_seconds(bare_step, device, 0, 1))
        site_t.append(_median_seconds(site_step, device, 0, 1))
    return statistics.median(site_t), statistics.median(bare_t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-amp", action="store_true", help="fp32 on CUDA (CPU is always fp32)")
    parser.add_argument("--site-vs-bare", action="store_true", help="only the site-step row")
    args = parser.parse_args()
    device, amp = resolve_device(args.device), not args.no_amp
    torch.manual_seed(0)
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"batch={args.batch} warmup={args.warmup} steps={args.steps} (median) "
        f"amp={amp and device.type == 'cuda'}"
    )
    print(
        f"caveat: shared machine, other jobs may run at the same time (1-min load "
        f"{os.getloadavg()[0]:.1f} at start); compare ratios only\n"
    )
    print("site step vs bare step (bot + KL + 50 % masks, resnet18, batch 32):")
    for h, w in ((64, 32), SIZES[0]):
        site_s, bare_s = site_vs_bare((h, w), device, args.warmup, max(args.steps, 5), amp)
        print(f"  {h}x{w}: site {site_s:.3f} s, bare {bare_s:.3f} s, ratio {site_s / bare_s:.2f}", flush=True)
    if args.site_vs_bare:
        return
    print(f"\n{'arch':<13} {'input':>8} {'train img/s':>12} {'s/step':>8} {'vs resnet18':>12}")
    for h, w in SIZES:
        base = None
        for arch in args.archs:
            ips = train_images_per_s(arch, (h, w), args.batch, device, args.warmup, args.steps, amp)
            base = base or (ips if arch == "resnet18" else None)
            ratio = f"{ips / base:.2f}x" if base else "-"
            print(
                f"{arch:<13} {h:>4}x{w:<3} {ips:>12.1f} {args.batch / ips:>8.2f} {ratio:>12}",
                flush=True,
            )
    ips = eval_images_per_s("resnet18", SIZES[0], args.batch, device, args.warmup, args.steps, amp)
    print(f"\neval (inference_mode) resnet18 {SIZES[0][0]}x{SIZES[0][1]}: {ips:.1f} img/s")
    print(f"1-min load at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
