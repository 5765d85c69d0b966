"""The eight ordinary sites and the three sensing set-ups in one federation: FedKLPR vs dense.

    python -m sims.bench.setups_federation [--seeds 0] [--variants fedklpr@float16]
                                           [--baseline fedcapr@float32] [--out DIR] [overrides ...]
    e.g. python -m sims.bench.setups_federation data.height=64 data.width=32 fl.rounds=6
         train.max_batches=4 eval.every=3

One backbone for all: every method here can train a ViT, so the federation shares a ViT-tiny
(patch 16) and its neck. The ordinary sites run `bot`; `aerial` runs `giqt` with its geometry
modules kept on the site (``share=geometry-local``), `ir-video` runs `lsmrl` sharing its frame
encoder only (``share=frame-encoder``; modality, semantic tokens and interaction stay local),
and `clothes` runs `echo` on the same ViT (EVA-02, echo's own backbone, would need a federation
of its own). The generated kinds are rendered on first use. Each variant runs as in
`sims.bench.communication` (same seeds, every byte counted); then one table puts each set-up
site's own protocol — aerial→ground, infrared→visible, clothes-changing... — beside the
ordinary sites' mean, per variant (``setups.md``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedreid.config.schema import SYNTHETIC8_SITES
from fedreid.report import PROTOCOL_NAMES, run_curves, site_protocols
from fedreid.runlog import markdown_table
from sims.bench.communication import compare_from_command_line

SETUPS = {"aerial": "giqt", "ir-video": "lsmrl", "clothes": "echo"}
FEDERATION = [
    f"data.sites=[{','.join([*SYNTHETIC8_SITES, *SETUPS])}]", "model.arch=vit_tiny_p16", "method.name=bot",
    "method.giqt.share=geometry-local", "method.lsmrl.share=frame-encoder",
    *(f"sites.{site}.method={method}" for site, method in SETUPS.items()),
]


def protocol_rows(rows: list[dict], out: Path) -> str:
    """Final global mAP of each set-up site under its protocols, and the ordinary sites' mean,
    per variant: mean over seeds."""
    found: dict[tuple[str, str], dict[str, list[float]]] = {}
    for row in rows:
        strategy, dtype = row["variant"].split("@")
        last = run_curves(out / f"{strategy}-{dtype}-seed{row['seed']}")
        sites = last["evals"][max(last["evals"])]["sites"]
        ordinary = [sites[s]["global_mAP"] for s in SYNTHETIC8_SITES if s in sites]
        found.setdefault(("8 ordinary sites (mean)", "single query"), {}).setdefault(
            row["variant"], []).append(float(np.mean(ordinary)))
        for site in SETUPS:
            for p in site_protocols(sites.get(site, {})):
                found.setdefault((f"{site} ({SETUPS[site]})", PROTOCOL_NAMES.get(p, p)), {}).setdefault(
                    row["variant"], []).append(sites[site][f"global_{p}_mAP"])
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    table = [[site, protocol, *(float(np.mean(by[v])) if v in by else float("nan") for v in variants)]
             for (site, protocol), by in found.items()]
    return markdown_table(["site", "protocol", *(f"mAP, {v}" for v in variants)], table)


def main() -> None:
    rows, out = compare_from_command_line(__doc__.splitlines()[0], seeds="0", variants="fedklpr@float16",
                                          prefix="fedreid-setups-", extra=FEDERATION)
    table = protocol_rows(rows, out)
    (out / "setups.md").write_text(f"# Each site's own protocol, final global mAP\n\n{table}\n")
    print(f"\n{table}\n\nresults: {out}")


if __name__ == "__main__":
    main()
