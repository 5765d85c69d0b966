"""How long synthetic-8 takes to generate: wall and CPU seconds, 1 vs N workers, side by side.

CPU time (this process plus its finished worker processes) is reported beside wall time
because the machine's cores are shared: wall time depends on what others run, CPU time
much less. Each configuration is run ``--repeats`` times; the table shows medians.
Run: .venv/bin/python -m sims.bench.synth_speed [--scale 1.0] [--workers 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time

from fedreid.data.synth import generate_synthetic8


def _cpu() -> float:
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def time_once(scale: float, workers: int, size: tuple[int, int]) -> tuple[float, float, int]:
    """(wall s, CPU s, images) of one generation into a fresh temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), _cpu()
        manifest = generate_synthetic8(tmp, scale=scale, size=size, workers=workers)
        return time.perf_counter() - wall, _cpu() - cpu, manifest["total_images"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=2, help="compared against 1 worker")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    args = ap.parse_args()
    size = (args.height, args.width)
    configs = sorted({1, args.workers})
    runs: dict[int, list[tuple[float, float, int]]] = {w: [] for w in configs}
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        for w in configs:
            runs[w].append(time_once(args.scale, w, size))
    print(
        f"synthetic-8 scale {args.scale:g}, {size[0]}x{size[1]}, {os.cpu_count()} cores, median of {args.repeats}"
    )
    print("| workers | images | wall s | CPU s | ms CPU/image | wall speed-up vs 1 |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(r[0] for r in runs[1])
    for w in configs:
        wall = statistics.median(r[0] for r in runs[w])
        cpu = statistics.median(r[1] for r in runs[w])
        n = runs[w][0][2]
        print(f"| {w} | {n} | {wall:.1f} | {cpu:.1f} | {1000 * cpu / n:.2f} | {base / wall:.2f} |")


if __name__ == "__main__":
    main()
