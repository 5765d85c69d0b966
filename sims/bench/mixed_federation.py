"""A federation whose sites run different methods against each method's federation alone.

    python -m sims.bench.mixed_federation [--assign market=bot,duke=scm,...] [--out DIR]
        [key=value ...]
    e.g. python -m sims.bench.mixed_federation data.height=64 data.width=32 fl.rounds=4
         train.max_batches=12 eval.every=4

FedKLPR on the same sites, seed and rounds, in-process (the real ClientApp and strategy, no
Ray): one federation per method (every site runs it) and the mixed one, where each site runs
the method ``--assign`` gives it (default: labelled-looking large sites bot/scm, the rest
capr, cycling). The sites share one ResNet-18, so their shared arrays match. Prints final
mean mAP / Rank-1 (global and personalised) of each federation, and the mixed federation's
mean over the sites of each method beside that method's own federation on the same sites.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fedreid.config.schema import SYNTHETIC8_SITES
from fedreid.report import run_curves
from fedreid.runlog import markdown_table
from sims.bench.ablation import run_variants
from sims.inprocess_grid import set_task_identity

METHODS = ("bot", "scm", "capr")


def default_assignment(sites: list[str]) -> dict[str, str]:
    return {site: METHODS[i % len(METHODS)] for i, site in enumerate(sites)}


def site_mean(run_dir: Path, sites: list[str], key: str = "global_mAP") -> float:
    last = run_curves(run_dir)["evals"]
    final = last[max(last)]["sites"]
    return sum(final[s][key] for s in sites) / len(sites)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sites", default=",".join(SYNTHETIC8_SITES))
    p.add_argument("--assign", default="", help="site=method,... (default: cycle bot, scm, capr)")
    p.add_argument("--out", default="")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    set_task_identity()
    sites = args.sites.split(",")
    assign = (dict(item.split("=") for item in args.assign.split(",")) if args.assign
              else default_assignment(sites))
    out = Path(args.out or tempfile.mkdtemp(prefix="fedreid-mixed-"))
    common = [f"data.sites=[{','.join(sites)}]", "model.arch=resnet18", *args.overrides]
    variants = {f"all {m}": [f"method.name={m}"] for m in sorted(set(assign.values()))}
    variants["mixed"] = [f"sites.{s}.method={m}" for s, m in assign.items()]
    table = run_variants(variants, common, out)
    rows = []
    for method in sorted(set(assign.values())):
        own = [s for s, m in assign.items() if m == method]
        alone = out / f"all-{method}"
        rows.append([method, ", ".join(own), site_mean(alone, own), site_mean(out / "mixed", own),
                     site_mean(alone, own, "personal_mAP"), site_mean(out / "mixed", own, "personal_mAP")])
    by_method = markdown_table(["method", "its sites in the mixed federation", "mAP, own federation",
                                "mAP, mixed federation", "personal mAP, own", "personal mAP, mixed"], rows)
    print(f"\nassignment: {assign}\n\n{table}\n{by_method}\nrun folders: {out}")
    (out / "mixed.md").write_text(f"assignment: {assign}\n\n{table}\n{by_method}")


if __name__ == "__main__":
    main()
