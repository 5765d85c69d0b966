"""FedKLPR against a dense baseline, same seed and rounds: every byte both ways, and mean mAP.

    python -m sims.bench.communication [--baseline fedcapr] [overrides ...]
    e.g. python -m sims.bench.communication method.name=bot data.height=64 data.width=32 fl.rounds=4

Runs both strategies with Flower's simulation engine (as `fedreid sim --compare`), then
prints the bytes of every serialized array the coordinator sent and received — training
and evaluation apart (evaluation broadcasts the global model itself, whole, in
``codec.value_dtype``), each up and down — and the accuracy of each run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from fedreid.report import load_records, run_curves
from sims.runner import run_sim_command

PHASES = {"train": "training", "evaluate": "evaluation"}


def byte_ledger(run_dir: Path) -> dict[str, int]:
    """Bytes by phase and direction (``training_up``, ..., ``total``) from a run's records;
    the last record of a round counts (a resumed run may repeat one)."""
    last: dict[tuple[str, int], dict] = {}
    for r in load_records(run_dir):
        if r.get("kind") in PHASES:
            last[(r["kind"], int(r["round"]))] = r
    out = {f"{phase}_{d}": 0 for phase in PHASES.values() for d in ("up", "down")}
    for (kind, _), r in last.items():
        for d in ("up", "down"):
            out[f"{PHASES[kind]}_{d}"] += int(r.get(f"bytes_{d}", 0))
    out["total"] = sum(out.values())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="fedcapr")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    console = Console()
    base = run_sim_command(args.overrides, strategies=["fedklpr", args.baseline], data=None, resume=None,
                           config_file=None, console=console)
    runs = {"fedklpr": base / "fedklpr", args.baseline: base / args.baseline}
    ledgers = {name: byte_ledger(path) for name, path in runs.items()}
    curves = {name: run_curves(path) for name, path in runs.items()}
    print(f"\nrun folder: {base}")
    keys = list(ledgers["fedklpr"])
    print(f"{'MB':<10}" + "".join(f"{k:>16}" for k in keys))
    for name, ledger in ledgers.items():
        print(f"{name:<10}" + "".join(f"{ledger[k] / 1e6:>16.2f}" for k in keys))
    ours, dense = ledgers["fedklpr"], ledgers[args.baseline]
    saved = {k: 100 * (1 - ours[k] / dense[k]) for k in keys if dense[k]}
    print(f"{'saved %':<10}" + "".join(f"{saved[k]:>16.1f}" if k in saved else f"{'—':>16}" for k in keys))
    a, b = curves["fedklpr"], curves[args.baseline]
    print(f"final mean mAP: fedklpr {a['mAP'][-1]:.4f}  {args.baseline} {b['mAP'][-1]:.4f}  "
          f"(Δ {100 * (a['mAP'][-1] - b['mAP'][-1]):+.2f} points)")
    print(f"final mean Rank-1: fedklpr {a['rank1'][-1]:.4f}  {args.baseline} {b['rank1'][-1]:.4f}")
    print(f"final personalised mAP: fedklpr {a['personal_mAP'][-1]:.4f}  "
          f"{args.baseline} {b['personal_mAP'][-1]:.4f}")


if __name__ == "__main__":
    main()
