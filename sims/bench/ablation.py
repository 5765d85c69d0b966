"""FedKLPR ablation: KLL, SAS, CRR, pruning off/on and KLPWA against sample-count weights; one table.

    python -m sims.bench.ablation [overrides ...]
    e.g. python -m sims.bench.ablation method.name=bot data.height=64 data.width=32 fl.rounds=3

Each variant is FedKLPR with one component switched, same seed, data and rounds, run as an
in-process federation (the real ClientApp and strategy, no Ray) so variants are comparable.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fedreid.config.presets import strategy_overrides
from fedreid.report import run_curves
from fedreid.runlog import markdown_table
from sims.runner import run_in_process

VARIANTS = {
    "FedKLPR (all on)": [],
    "KLL off": ["reg.enabled=false"],
    "SAS off": ["agg.sas=false"],
    "CRR off": ["crr.enabled=false"],
    "pruning off": ["prune.enabled=false", "crr.enabled=false"],
    "sample-count weights": ["agg.weighting=samples"],
}


def run_variants(variants: dict[str, list[str]], overrides: list[str], out: Path,
                 extra_columns: dict | None = None) -> str:
    """Run FedKLPR once per variant (in-process federation); returns the Markdown table.

    ``extra_columns`` maps a column name to a function of the run folder (e.g. a figure read
    from its metrics); they follow the standard columns.
    """
    extra_columns = extra_columns or {}
    rows = []
    for name, switch in variants.items():
        run_dir = out / name.replace(" ", "-").replace("(", "").replace(")", "").replace("=", "")
        started = time.perf_counter()
        run_in_process([*strategy_overrides("fedklpr"), *overrides, *switch], run_dir)
        c = run_curves(run_dir)
        rows.append([name, c["mAP"][-1], c["rank1"][-1], c["personal_mAP"][-1],
                     c["bytes_up"] + c["bytes_down"], time.perf_counter() - started,
                     *(fn(run_dir) for fn in extra_columns.values())])
        print(f"{name}: mAP {c['mAP'][-1]}", flush=True)  # None when every site failed
    return markdown_table(["variant", "mean mAP", "mean Rank-1", "personal mAP", "bytes up+down", "seconds",
                           *extra_columns], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="fedreid-ablation-"))
    table = run_variants(VARIANTS, args.overrides, out)
    print(f"\n{table}\nrun folders: {out}")
    (out / "ablation.md").write_text(table)


if __name__ == "__main__":
    main()
