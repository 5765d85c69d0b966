"""FedKLPR against a dense baseline, same seed and rounds: bytes up + down and mean mAP.

    python -m sims.bench.communication [--baseline fedcapr] [overrides ...]
    e.g. python -m sims.bench.communication method.name=bot data.height=64 data.width=32 fl.rounds=4

Runs both strategies with Flower's simulation engine (as `fedreid sim --compare`), then
prints cumulative bytes measured from the serialized messages and the accuracy of each.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from fedreid.report import run_curves
from sims.runner import run_sim_command


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="fedcapr")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    console = Console()
    base = run_sim_command(args.overrides, strategies=["fedklpr", args.baseline], data=None, resume=None,
                           config_file=None, console=console)
    ours, dense = run_curves(base / "fedklpr"), run_curves(base / args.baseline)
    total = lambda c: c["bytes_up"] + c["bytes_down"]  # noqa: E731
    print(f"\nrun folder: {base}")
    print(f"fedklpr bytes up+down: {total(ours):,}  {args.baseline}: {total(dense):,}  "
          f"reduction: {100 * (1 - total(ours) / total(dense)):.1f}%")
    print(f"upload only: {100 * (1 - ours['bytes_up'] / dense['bytes_up']):.1f}% less")
    print(f"final mean mAP: fedklpr {ours['mAP'][-1]:.4f}  {args.baseline} {dense['mAP'][-1]:.4f}  "
          f"(Δ {100 * (ours['mAP'][-1] - dense['mAP'][-1]):+.2f} points)")
    print(f"final mean Rank-1: fedklpr {ours['rank1'][-1]:.4f}  {args.baseline} {dense['rank1'][-1]:.4f}")


if __name__ == "__main__":
    main()
