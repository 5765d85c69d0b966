"""Training throughput of the re-ID backbones (images/s), to size local epochs per site.

One step = forward (train mode) + ID loss on the BN feature through a site classifier +
backward + Adam step, batch 32 (8 identities × 4). Reports the median of timed steps after
warm-up, all configurations in one run so the ratios between them are comparable.

    .venv/bin/python -m sims.bench.train_throughput [--steps 3] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-amp", action="store_true", help="fp32 on CUDA (CPU is always fp32)")
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
    print(f"{'arch':<13} {'input':>8} {'train img/s':>12} {'s/step':>8} {'vs resnet18':>12}")
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
