"""How much CRR's score moves when pruning did not change the model, against its threshold.

    python -m sims.bench.crr_noise RUN_DIR [RUN_DIR ...] [--delta 0.02] [--out crr_noise.md]

Reads each run's ``metrics.jsonl`` (runs of `fedreid sim` or of ``sims.bench.communication``
and ``sims.bench.ablation``; a folder holding several runs is searched). Every round, each
pruning site scores its download (``crr_score``: cross-camera mAP on its first 256 training
images). Between two consecutive rounds in which the site took no pruning step, the model
changed by training and aggregation only, so the change of that score is the noise a CRR
drop is judged against. Reported per run: the median and 90th percentile of those
round-to-round drops, the largest, how many exceed ``--delta`` (CRR's ``crr.delta``), and the
restores CRR made, split by whether the step it undid pruned anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fedreid.report import load_records
from fedreid.runlog import markdown_table

STEP_EPS = 1e-9  # a prune ratio that grew by less than this took no real step


def site_series(records: list[dict]) -> dict[str, list[dict]]:
    """Per site, its train metrics in round order."""
    series: dict[str, list[dict]] = {}
    for r in sorted((r for r in records if r["kind"] == "train"), key=lambda r: r["round"]):
        for site, m in r["sites"].items():
            series.setdefault(site, []).append(m)
    return series


def noise_and_restores(records: list[dict]) -> dict[str, list[float] | int]:
    """Drops of ``crr_score`` between rounds with no real step in between, and restores split
    into those after a step that pruned something and those after an empty step."""
    drops: list[float] = []
    real = empty = 0
    for rounds in site_series(records).values():
        ratio_before = 0.0
        for prev, cur in zip(rounds, rounds[1:], strict=False):
            grew = prev.get("prune_ratio", 0.0) > ratio_before + STEP_EPS
            ratio_before = prev.get("prune_ratio", 0.0)
            if cur.get("crr_restored"):
                real, empty = (real + 1, empty) if grew else (real, empty + 1)
            # The download's score before any restore (crr_score is retaken after one).
            a, b = prev.get("crr_score"), cur.get("crr_check_score", cur.get("crr_score"))
            if grew or a is None or b is None or not (np.isfinite(a) and np.isfinite(b)):
                continue
            drops.append(a - b)
    return {"drops": drops, "real_restores": real, "empty_restores": empty}


def runs_under(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        found += [p] if (p / "metrics.jsonl").exists() else sorted(q.parent for q in p.rglob("metrics.jsonl"))
    if not found:
        raise SystemExit(f"no metrics.jsonl under {', '.join(map(str, paths))}: give run folders")
    return found


def table(paths: list[Path], delta: float) -> str:
    rows = []
    for run in runs_under(paths):
        stats = noise_and_restores(load_records(run))
        d = np.asarray(stats["drops"], float)
        if not d.size:
            continue
        rows.append([f"{run.parent.name}/{run.name}", d.size, f"{np.median(d):+.4f}", f"{np.percentile(d, 90):+.4f}",
                     f"{d.max():+.4f}", f"{int((d > delta).sum())} ({100 * np.mean(d > delta):.0f} %)",
                     stats["real_restores"], stats["empty_restores"]])
    return markdown_table(["run", "round pairs without a step", "median drop", "90th pct drop", "largest drop",
                           f"drops > {delta}", "restores after a real step", "restores after an empty step"],
                          rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--delta", type=float, default=0.02)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    text = f"# CRR score noise (positive drop = the score fell)\n\n{table(args.runs, args.delta)}"
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
