"""How long synthetic-8 takes to generate: wall and CPU seconds, 1 vs N workers, side by side;
then the cost per picture of the default sites, each optional kind and prompt-driven sets.

CPU time (this process plus its finished worker processes) is reported beside wall time
because the machine's cores are shared: wall time depends on what others run, CPU time
much less. Each configuration is run ``--repeats`` times, interleaved; tables show medians.
Run: .venv/bin/python -m sims.bench.synth_speed [--scale 1.0] [--workers 2] [--repeats 1]
     [--kinds aerial,ir-video,clothes] [--prompts 200]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable

from fedreid.data.synth import KIND_KEYS, generate_from_prompts, generate_synthetic8, random_prompts


def _cpu() -> float:
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(run: Callable[[str], int]) -> tuple[float, float, int]:
    """(wall s, CPU s, images) of ``run(folder)`` into a fresh temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), _cpu()
        n = run(tmp)
        return time.perf_counter() - wall, _cpu() - cpu, n


def time_once(
    scale: float, workers: int, size: tuple[int, int], sites: list[str] | None = None,
    kinds: tuple[str, ...] = (),
) -> tuple[float, float, int]:
    """(wall s, CPU s, images) of one generation into a fresh temporary folder."""
    return _timed(
        lambda out: generate_synthetic8(
            out, scale=scale, size=size, workers=workers, sites=sites, kinds=kinds
        )["total_images"]
    )


def time_prompts(n: int, workers: int, size: tuple[int, int]) -> tuple[float, float, int]:
    prompts = random_prompts(n, 0)

    def run(out: str) -> int:
        counts = generate_from_prompts(prompts, os.path.join(out, "gen"), size=size, workers=workers)["counts"]
        return sum(c["images"] for c in counts.values())

    return _timed(run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=2, help="compared against 1 worker")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--kinds", default=",".join(KIND_KEYS), help="kinds timed per picture ('' for none)")
    ap.add_argument("--prompts", type=int, default=200, help="identities of the prompt set (0: skip)")
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

    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds and not args.prompts:
        return
    per: dict[str, list[tuple[float, float, int]]] = {"default eight": runs[1]}
    for _ in range(args.repeats):
        for k in kinds:
            per.setdefault(k, []).append(time_once(args.scale, 1, size, sites=[], kinds=(k,)))
        if args.prompts:
            per.setdefault(f"prompts ({args.prompts} ids)", []).append(time_prompts(args.prompts, 1, size))
    print(f"\nper picture, 1 worker, median of {args.repeats} (default eight: the run above)")
    print("| set | images | CPU s | ms CPU/image | vs default eight |")
    print("|---|---|---|---|---|")
    ref = statistics.median(r[1] / r[2] for r in per["default eight"])
    for name, rs in per.items():
        cost = statistics.median(r[1] / r[2] for r in rs)
        cpu = statistics.median(r[1] for r in rs)
        print(f"| {name} | {rs[0][2]} | {cpu:.1f} | {1000 * cost:.2f} | {cost / ref:.2f}x |")


if __name__ == "__main__":
    main()
