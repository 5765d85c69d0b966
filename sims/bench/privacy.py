"""What central DP costs FedKLPR: accuracy, bytes and ε at a few noise levels; one table.

    python -m sims.bench.privacy [--clip 20] [--noise 0.1,0.5] [overrides ...]
    e.g. python -m sims.bench.privacy method.name=bot data.height=64 data.width=32 fl.rounds=3

Runs FedKLPR without DP, then with sites clipping their update to ``--clip`` and the server
adding noise of multiplier z for each ``--noise`` value (fedreid.fl.dp), same seed, data and
rounds, as in-process federations. The table also gives the median norm of the sites'
updates before clipping (to choose C) and the ε at δ = dp.delta after the last round.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from fedreid.report import load_records
from sims.bench.ablation import run_variants
from sims.inprocess_grid import set_task_identity


def _train_records(run_dir: Path) -> list[dict]:
    return [r for r in load_records(run_dir) if r["kind"] == "train"]


def median_update_norm(run_dir: Path) -> float:
    norms = [s.get("dp_update_norm", np.nan) for r in _train_records(run_dir) for s in r["sites"].values()]
    return float(np.nanmedian(norms)) if norms and not np.all(np.isnan(norms)) else float("nan")


def final_epsilon(run_dir: Path) -> float:
    return float(_train_records(run_dir)[-1].get("dp_epsilon", 0.0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", type=float, default=20.0)
    p.add_argument("--noise", default="0.1,0.5")
    p.add_argument("--out", default="")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    set_task_identity()
    out = Path(args.out or tempfile.mkdtemp(prefix="fedreid-privacy-"))
    variants = {"no DP": []}
    for z in (float(v) for v in args.noise.split(",")):
        variants[f"DP C={args.clip:g} z={z:g}"] = ["dp.enabled=true", f"dp.clipping_norm={args.clip}",
                                                   f"dp.noise_multiplier={z}"]
    table = run_variants(variants, args.overrides, out,
                         {"median update norm": median_update_norm, "ε (final)": final_epsilon})
    print(f"\n{table}\nrun folders: {out}")
    (out / "privacy.md").write_text(table)


if __name__ == "__main__":
    main()
