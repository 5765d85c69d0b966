"""FedKLPR against a dense baseline over several seeds: every byte both ways, and accuracy.

    python -m sims.bench.communication [--seeds 0,1,2] [--variants fedklpr@float16,fedcapr@float32]
                                       [--baseline fedcapr@float32] [--out DIR] [overrides ...]
    e.g. python -m sims.bench.communication method.name=bot data.height=64 data.width=32 fl.rounds=20

A variant is ``strategy@value_dtype`` (a preset of `fedreid config`, and ``codec.value_dtype``
of every download, reply and evaluation broadcast), optionally followed by its own overrides,
``:``-separated (``fedklpr@float16:codec.upload=absolute``). Each variant runs once per seed as an
in-process federation (the real ClientApp and strategy, no Ray), the same overrides for all.
Bytes count every serialized array the coordinator sent and received — training and
evaluation, up and down. Writes ``runs.jsonl`` (one line per run, as it finishes),
``communication.md`` (mean ± spread over seeds; the saving and the mAP gap against the
baseline are taken per seed, then averaged) and ``communication.png`` (mean mAP against
cumulative bytes). ``--tabulate A/runs.jsonl B/runs.jsonl`` runs nothing and tables earlier
runs together (seeds or variants run in parallel, each pair with its baseline by seed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedreid.config.presets import strategy_overrides
from fedreid.fl.codec import VALUE_DTYPES
from fedreid.report import run_curves
from fedreid.runlog import markdown_table, read_jsonl
from sims.runner import run_in_process

DIRECTIONS = ("train_up", "train_down", "eval_up", "eval_down")


def parse_variant(text: str) -> tuple[str, str, list[str]]:
    """``STRATEGY@DTYPE[:key=value...]`` as (strategy, dtype, the variant's own overrides)."""
    head, *own = text.split(":")
    strategy, _, dtype = head.partition("@")
    strategy_overrides(strategy)  # fails naming the presets
    if dtype not in VALUE_DTYPES:
        allowed = f"{', '.join(VALUE_DTYPES[:-1])} or {VALUE_DTYPES[-1]}"
        raise SystemExit(f"variant {text!r}: write STRATEGY@DTYPE with DTYPE {allowed}")
    bad = [o for o in own if "=" not in o]
    if bad:
        raise SystemExit(f"variant {text!r}: {bad} are not key=value overrides (STRATEGY@DTYPE:key=value)")
    return strategy, dtype, own


def run_row(variant: str, seed: int, run_dir: Path, seconds: float) -> dict[str, Any]:
    """One run's figures: final accuracy, bytes, CRR restores and halts, the curve."""
    c = run_curves(run_dir)
    trains = c["trains"].values()
    return {
        "variant": variant, "seed": seed, "seconds": seconds,
        "mAP": c["mAP"][-1], "rank1": c["rank1"][-1], "personal_mAP": c["personal_mAP"][-1],
        **{d: c[d] for d in DIRECTIONS}, "total": c["bytes_up"] + c["bytes_down"],
        "crr_restores": int(sum(m.get("crr_restored", 0) for r in trains for m in r["sites"].values())),
        "crr_halted_sites": int(sum(m.get("crr_halted", 0) for m in list(trains)[-1]["sites"].values()))
        if trains else 0,
        "final_prune_ratio": list(trains)[-1]["mean_prune_ratio"] if trains else 0.0,
        "curve": {"rounds": c["rounds"], "mAP": c["mAP"], "bytes": c["bytes"]},
    }


def spread(values: list[float], scale: float = 1.0, digits: int = 4) -> str:
    """``mean ± sd`` (sample sd) of ``values × scale``."""
    v = np.asarray(values, float) * scale
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return f"{np.mean(v):.{digits}g} ± {sd:.2g}"


def summary_table(rows: list[dict[str, Any]], baseline: str) -> str:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    base = {r["seed"]: r for r in rows if r["variant"] == baseline}
    table = []
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        paired = [(r, base[r["seed"]]) for r in mine if r["seed"] in base]
        saved = [100 * (1 - r["total"] / b["total"]) for r, b in paired]
        gap = [100 * (r["mAP"] - b["mAP"]) for r, b in paired]
        table.append([
            variant, len(mine), spread([r["mAP"] for r in mine]), spread([r["rank1"] for r in mine]),
            spread([r["personal_mAP"] for r in mine]),
            *(f"{np.mean([r[d] for r in mine]) / 1e6:,.1f}" for d in (*DIRECTIONS, "total")),
            spread(saved, digits=3) if variant != baseline else "—",
            spread(gap, digits=2) if variant != baseline else "—",
            f"{np.mean([r['crr_restores'] for r in mine]):.1f}",
            f"{np.mean([r['final_prune_ratio'] for r in mine]):.2f}",
        ])
    return markdown_table(["variant", "seeds", "mean mAP", "mean Rank-1", "personal mAP", "train up MB",
                           "train down MB", "eval up MB", "eval down MB", "total MB",
                           f"bytes saved vs {baseline} %", "mAP gap, points", "CRR restores",
                           "final sparsity"], table)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        curves = [r["curve"] for r in rows if r["variant"] == variant]
        size = min(len(c["mAP"]) for c in curves)
        bytes_ = np.mean([c["bytes"][:size] for c in curves], axis=0) / 1e6
        maps = np.array([c["mAP"][:size] for c in curves])
        ax.errorbar(bytes_, maps.mean(axis=0), yerr=maps.std(axis=0), marker="o", capsize=3, label=variant)
    ax.set_xlabel("cumulative MB, training + evaluation, up + down")
    ax.set_ylabel("mean mAP over sites (± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(variants: list[str], baseline: str, seeds: list[int], overrides: list[str], out: Path) -> list[dict]:
    """Run every variant (and the baseline) once per seed into ``out``; write runs.jsonl,
    communication.md and communication.png; return the rows."""
    variants = list(dict.fromkeys([*variants, baseline]))
    parsed = {v: parse_variant(v) for v in variants}
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in seeds:
        for index, (variant, (strategy, dtype, own)) in enumerate(parsed.items()):
            run_dir = out / f"{index}-{strategy}-{dtype}-seed{seed}"
            started = time.perf_counter()
            run_in_process([*strategy_overrides(strategy), *overrides, f"codec.value_dtype={dtype}", *own,
                            f"seed={seed}"], run_dir)
            rows.append(run_row(variant, seed, run_dir, time.perf_counter() - started))
            with (out / "runs.jsonl").open("a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
            print(f"{variant} seed {seed}: mAP {rows[-1]['mAP']:.4f}, {rows[-1]['total'] / 1e6:,.1f} MB, "
                  f"{rows[-1]['seconds']:.0f} s", flush=True)
    write_results(rows, baseline, f"overrides: `{' '.join(overrides)}`", out)
    return rows


def write_results(rows: list[dict[str, Any]], baseline: str, what: str, out: Path) -> None:
    """communication.md (the table) and communication.png (the curves) in ``out``."""
    if not any(r["variant"] == baseline for r in rows):
        raise SystemExit(f"baseline {baseline!r} is not among the runs' variants "
                         f"{sorted({r['variant'] for r in rows})}; pass --baseline")
    out.mkdir(parents=True, exist_ok=True)
    seeds = sorted({r["seed"] for r in rows})
    table = summary_table(rows, baseline)
    header = (f"# FedKLPR vs dense, {len(seeds)} seed(s)\n\n{what}\n\n"
              "mean ± sd over seeds; saving and gap are per seed against the baseline, then averaged.")
    (out / "communication.md").write_text(f"{header}\n\n{table}\n")
    plot(rows, out / "communication.png")
    print(f"\n{table}\n\nresults: {out}")


def compare_from_command_line(description: str, *, seeds: str, variants: str, prefix: str,
                              extra: tuple[str, ...] | list[str] = ()) -> tuple[list[dict], Path]:
    """Parse ``--seeds --variants --baseline --out overrides...`` and run :func:`compare`
    (``extra`` overrides go before the command line's); returns the rows and the folder."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seeds", default=seeds)
    p.add_argument("--variants", default=variants)
    p.add_argument("--baseline", default="fedcapr@float32")
    p.add_argument("--out", default="")
    p.add_argument("--tabulate", nargs="+", type=Path, metavar="RUNS_JSONL",
                   help="run nothing: table and plot the runs.jsonl of earlier runs (e.g. seeds or "
                        "variants run in parallel) into --out")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix=prefix))
    if args.tabulate:
        missing = [str(f) for f in args.tabulate if not f.is_file()]
        if missing:
            raise SystemExit(f"--tabulate: {missing} not found; give the runs.jsonl of earlier runs")
        rows = [row for f in args.tabulate for row in read_jsonl(f)]
        write_results(rows, args.baseline, f"runs from {', '.join(map(str, args.tabulate))}", out)
        return rows, out
    rows = compare(args.variants.split(","), args.baseline, [int(s) for s in args.seeds.split(",")],
                   [*extra, *args.overrides], out)
    return rows, out


def main() -> None:
    compare_from_command_line(__doc__.splitlines()[0], seeds="0,1,2",
                              variants="fedklpr@float16,fedklpr@float32,fedcapr@float32",
                              prefix="fedreid-communication-")


if __name__ == "__main__":
    main()
