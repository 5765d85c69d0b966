"""Federated run results a person can open: metrics.jsonl, summary.md and PNG plots.

The server appends one JSON line per training round and per evaluation; everything else
(the summary table, the plots, the comparison of strategies) is derived from those lines,
so a crashed or resumed run still summarises correctly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedreid.runlog import JsonlWriter, markdown_table, read_jsonl

METRICS_FILE = "metrics.jsonl"


class RunRecorder:
    """Appends round records to ``run_dir/metrics.jsonl``."""

    def __init__(self, run_dir: Path, strategy: str):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.strategy = strategy
        self.writer = JsonlWriter(self.run_dir / METRICS_FILE)

    def log(self, kind: str, server_round: int, **fields: Any) -> None:
        self.writer.write({"kind": kind, "round": server_round, "strategy": self.strategy, **fields})


def load_records(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / METRICS_FILE)


def _last_round_records(records: list[dict], kind: str) -> dict[int, dict]:
    """Keep the last record of each round (a resumed run may repeat one)."""
    out: dict[int, dict] = {}
    for r in records:
        if r.get("kind") == kind:
            out[int(r["round"])] = r
    return dict(sorted(out.items()))


def run_curves(run_dir: Path) -> dict[str, Any]:
    """Per-round mean mAP/Rank-1 and cumulative bytes of one run.

    Bytes count every model that travels: training (downloads and replies) and evaluation
    (the broadcast of the model evaluated, and the replies); ``train_bytes`` and
    ``eval_bytes`` split the total. The curve's point at round r counts everything up to and
    including round r's evaluation."""
    records = load_records(run_dir)
    evals = _last_round_records(records, "evaluate")
    trains = _last_round_records(records, "train")
    per_round: dict[int, int] = {}
    sums = {"train_up": 0, "train_down": 0, "eval_up": 0, "eval_down": 0}
    for phase, recs in (("train", trains), ("eval", evals)):
        for rnd, r in recs.items():
            up, down = int(r.get("bytes_up", 0)), int(r.get("bytes_down", 0))
            sums[f"{phase}_up"] += up
            sums[f"{phase}_down"] += down
            per_round[rnd] = per_round.get(rnd, 0) + up + down
    rounds = list(evals)
    cumulative = [sum(b for rnd, b in per_round.items() if rnd <= r) for r in rounds]
    return {
        "rounds": rounds,
        "mAP": [evals[r]["mean_mAP"] for r in rounds],
        "rank1": [evals[r]["mean_rank1"] for r in rounds],
        "personal_mAP": [evals[r].get("mean_personal_mAP", float("nan")) for r in rounds],
        "bytes": cumulative,
        "bytes_up": sums["train_up"] + sums["eval_up"],
        "bytes_down": sums["train_down"] + sums["eval_down"],
        "train_bytes": sums["train_up"] + sums["train_down"],
        "eval_bytes": sums["eval_up"] + sums["eval_down"],
        **sums,  # train_up, train_down, eval_up, eval_down
        "evals": evals,
        "trains": trains,
    }


def write_summary(run_dir: Path, title: str) -> str:
    """summary.md for one run: per-site results of the last evaluation, bytes, sparsity."""
    curves = run_curves(run_dir)
    if not curves["rounds"]:
        text = f"# {title}\n\nNo evaluation recorded yet.\n"
        (Path(run_dir) / "summary.md").write_text(text)
        return text
    first = curves["evals"][curves["rounds"][0]]
    last = curves["evals"][curves["rounds"][-1]]
    sites = sorted(last["sites"])
    reranked = any("global_rerank_mAP" in last["sites"][s] for s in sites)
    trains = curves["trains"]
    methods = {s: m.get("method", "?") for t in trains.values() for s, m in t.get("sites", {}).items()}
    mixed = len(set(methods.values())) > 1
    rows = []
    for s in sites:
        m = last["sites"][s]
        m0 = first["sites"].get(s, {})
        row = [f"{s} ({methods.get(s, '?')})" if mixed else s, m0.get("global_mAP", float("nan")),
               m["global_mAP"], m["global_rank1"]]
        if reranked:
            row += [m.get("global_rerank_mAP", float("nan")), m.get("global_rerank_rank1", float("nan"))]
        rows.append(row + [m["personal_mAP"], m["personal_rank1"]])
    mean_row = ["**mean**", first["mean_mAP"], last["mean_mAP"], last["mean_rank1"]]
    if reranked:
        mean_row += [last.get("mean_rerank_mAP", float("nan")), last.get("mean_rerank_rank1", float("nan"))]
    rows.append(mean_row + [last.get("mean_personal_mAP", float("nan")),
                            last.get("mean_personal_rank1", float("nan"))])
    final = curves["rounds"][-1]
    headers = ["site", "mAP round 0", f"mAP round {final}", f"Rank-1 round {final}"]
    if reranked:
        headers += ["mAP re-ranked", "Rank-1 re-ranked"]
    headers += ["personal mAP", "personal Rank-1"]
    last_train = trains[max(trains)] if trains else {}
    failures = sum(len(t.get("failures", [])) for t in trains.values())
    lines = [
        f"# {title}\n",
        markdown_table(headers, rows),
        f"\n- training rounds: {len(trains)}; failed or rejected site replies: {failures}",
        f"- bytes up: {curves['bytes_up']:,}; bytes down: {curves['bytes_down']:,}; "
        f"total: {curves['bytes_up'] + curves['bytes_down']:,} (training {curves['train_bytes']:,}, "
        f"evaluation {curves['eval_bytes']:,})",
        f"- dense-equivalent bytes: {sum(int(t.get('dense_bytes', 0)) for t in trains.values()):,}",
        f"- mean site sparsity after the last round: {last_train.get('mean_prune_ratio', 0.0):.3f}",
    ]
    protocols = protocol_table(first["sites"], last["sites"], final)
    if protocols:
        lines += ["\n## Each site's own protocol\n", protocols]
    refused = {r["site"]: r["refused"] for r in load_records(run_dir) if r.get("kind") == "admission"}
    lines += [f"- refused at admission: {site}: {why}" for site, why in refused.items()]
    text = "\n".join(lines) + "\n"
    (Path(run_dir) / "summary.md").write_text(text)
    return text


PROTOCOL_NAMES = {
    "a2g": "aerial→ground", "g2a": "ground→aerial", "ir2v": "infrared→visible", "v2ir": "visible→infrared",
    "general": "clothes: general", "cc": "clothes: changing", "sc": "clothes: same", "occ": "occluded queries",
}
_PROTOCOL_KEY = re.compile(r"^global_([a-z0-9]+)_mAP$")


def site_protocols(metrics: Mapping[str, Any]) -> list[str]:
    """The protocol prefixes a site reported beside plain single-query figures (``a2g``,
    ``cc``...: each set-up's own evaluation), in the order of :data:`PROTOCOL_NAMES`."""
    found = {m.group(1) for k in metrics if (m := _PROTOCOL_KEY.match(k)) and m.group(1) != "rerank"}
    return sorted(found, key=lambda p: (list(PROTOCOL_NAMES).index(p) if p in PROTOCOL_NAMES else 99, p))


def protocol_table(first: Mapping[str, Mapping[str, Any]], last: Mapping[str, Mapping[str, Any]],
                   final: int) -> str:
    """One row per (site, protocol) for sites evaluated with their set-up's protocol; "" if none."""
    rows = []
    for site in sorted(last):
        for p in site_protocols(last[site]):
            m, m0 = last[site], first.get(site, {})
            rows.append([site, PROTOCOL_NAMES.get(p, p), m0.get(f"global_{p}_mAP", float("nan")),
                         m[f"global_{p}_mAP"], m.get(f"global_{p}_rank1", float("nan")),
                         m.get(f"personal_{p}_mAP", float("nan"))])
    if not rows:
        return ""
    return markdown_table(["site", "protocol", "mAP round 0", f"mAP round {final}", f"Rank-1 round {final}",
                           "personal mAP"], rows)


def headline(name: str, c: dict, base_name: str, base: dict) -> str:
    """One sentence: the bytes ``name`` saved against ``base_name`` and the accuracy gap."""
    total, base_total = c["bytes_up"] + c["bytes_down"], base["bytes_up"] + base["bytes_down"]
    saved = 1 - total / base_total
    gap = 100 * (c["mAP"][-1] - base["mAP"][-1])
    return (f"**{name}** sent {100 * abs(saved):.1f} % {'fewer' if saved >= 0 else 'more'} bytes than "
            f"**{base_name}** ({total / 1e6:,.0f} MB against {base_total / 1e6:,.0f} MB: training and "
            f"evaluation, up and down) and ended {abs(gap):.1f} mAP points "
            f"{'above' if gap >= 0 else 'below'} it (final mean mAP {c['mAP'][-1]:.3f} against "
            f"{base['mAP'][-1]:.3f}).")


def compare_runs(runs: dict[str, Path], out_dir: Path, descriptions: dict[str, str] | None = None) -> str:
    """comparison.md and plots for several strategies run with the same seed. ``descriptions``:
    what each run is (its preset and own overrides), by run name. The first run that is not
    FedKLPR (``fedklpr``, ``fedklpr-2``, …) is the baseline; the text opens with each other
    run's saving and accuracy gap."""
    out_dir = Path(out_dir)
    curves = {name: run_curves(path) for name, path in runs.items()}
    describe = descriptions or {}
    base_name = next((n for n in curves if not n.startswith("fedklpr")), None)
    base_bytes = (curves[base_name]["bytes_up"] + curves[base_name]["bytes_down"]) if base_name else 0
    rows = []
    for name, c in curves.items():
        if not c["rounds"]:
            rows.append([name, *["—"] * 9])
            continue
        total = c["bytes_up"] + c["bytes_down"]
        reduction = (1 - total / base_bytes) if base_bytes else float("nan")
        mb = [f"{b / 1e6:,.1f} MB" for b in (c["bytes_up"], c["bytes_down"], c["train_bytes"], c["eval_bytes"])]
        rows.append([name, c["mAP"][0], c["mAP"][-1], c["rank1"][-1], c["personal_mAP"][-1], *mb,
                     f"{100 * reduction:.1f}%" if name != base_name else "—"])
    headers = ["strategy", "mean mAP round 0", "mean mAP final", "mean Rank-1 final",
               "personal mAP final", "bytes up", "bytes down", "of which training", "of which evaluation",
               f"bytes saved vs {base_name}"]
    per_site = _per_site_table(curves)
    lines = [headline(describe.get(n, n), c, describe.get(base_name, base_name), curves[base_name])
             for n, c in curves.items() if base_name and n != base_name and c["rounds"] and curves[base_name]["rounds"]]
    runs_list = "".join(f"- `{n}`: {describe[n]}\n" for n in curves if n in describe)
    text = ("# Strategy comparison\n\n" + "".join(f"{line}\n\n" for line in lines) + runs_list
            + ("\n" if runs_list else "") + markdown_table(headers, rows) + "\n## Final mAP per site\n\n" + per_site)
    (out_dir / "comparison.md").write_text(text)
    plot_curves(curves, out_dir)
    return text


def _per_site_table(curves: dict[str, dict]) -> str:
    names = [n for n, c in curves.items() if c["rounds"]]
    if not names:
        return ""
    sites = sorted(curves[names[0]]["evals"][curves[names[0]]["rounds"][-1]]["sites"])
    rows = []
    for s in sites:
        row: list[Any] = [s]
        for n in names:
            last = curves[n]["evals"][curves[n]["rounds"][-1]]["sites"].get(s, {})
            row.append(last.get("global_mAP", float("nan")))
        rows.append(row)
    return markdown_table(["site", *names], rows)


def plot_curves(curves: dict[str, dict], out_dir: Path) -> list[Path]:
    """mAP per round, cumulative bytes per round, and mAP against communication."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    paths = []
    specs: Sequence[tuple[str, str, str, str]] = (
        ("map_per_round.png", "rounds", "mAP", "mean mAP"),
        ("bytes_per_round.png", "rounds", "bytes", "cumulative bytes (up + down)"),
        ("map_vs_bytes.png", "bytes", "mAP", "mean mAP"),
    )
    for filename, xkey, ykey, ylabel in specs:
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
        for name, c in curves.items():
            if not c["rounds"]:
                continue
            x = np.asarray(c[xkey], dtype=float)
            y = np.asarray(c[ykey], dtype=float)
            if xkey == "bytes":
                x = x / 1e6
            if ykey == "bytes":
                y = y / 1e6
            ax.plot(x, y, marker="o", label=name)
        ax.set_xlabel("cumulative MB (up + down)" if xkey == "bytes" else "round")
        ax.set_ylabel(ylabel + (" (MB)" if ykey == "bytes" else ""))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
