"""Bi-C2R's claim on synthetic-8: a site's stored gallery stays searchable as the global model
changes, without re-extracting a single gallery image.

    python -m sims.bench.bic2r_claim [--data /tmp/bic2r_claim/data] [--sites market,duke]
        [--scale 0.2] [--size 64x32] [--rounds 10] [--arch resnet18] [--out bic2r.md] [key=value ...]

A small federation run in process (FedAvg of the shared keys weighted by training images, one
local epoch per round, no pruning): the same rounds once with ``bot`` (no compatibility
training) and once with ``bic2r``. Each site indexes its gallery with the global model of
round 1 and keeps it; after every later round the new global model's query features are
matched against that gallery under three policies:

- ``naive``: the stored features as they are (cross-model search);
- ``upgraded`` (bic2r only): the stored features passed, round after round, through the
  site's upgrade transfer (previous global model's space → the new one, fitted at the
  download; :func:`fedreid.index.fusion.upgrade_features`, the code of ``fedreid site index
  upgrade``), no image read;
- ``reindex``: the gallery extracted again with the new model (the upper bound).

Reported per round (mean over sites): mAP and Rank-1 of each policy, the share of the
naive → re-index gap the upgrade recovers, and what an upgrade and a re-index cost the
sites: seconds, and bytes read plus written (an upgrade reads and rewrites the stored
features and reads the transfer net; a re-index reads every gallery image file and writes
the new features; the naive policy costs nothing). No policy sends anything over the
network: the transfer is fitted on the site from the download it receives anyway. A PNG of
the mAP curves is written beside ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from fedreid.config import load_config
from fedreid.data.split_images import SplitImages, load_split_images
from fedreid.data.synth import generate_synthetic8
from fedreid.eval import evaluate
from fedreid.index.fusion import upgrade_features
from fedreid.runlog import markdown_table
from fedreid.training import LocalTrainer, initial_shared_state, stream_seed


def fedavg(trainers: list[LocalTrainer], keys: list[str]) -> dict[str, torch.Tensor]:
    """The shared keys averaged over sites, weighted by training images (dtypes kept)."""
    weights = np.array([len(t.images.train) for t in trainers], dtype=np.float64)
    weights /= weights.sum()
    states = [t.model.state_dict() for t in trainers]
    out = {}
    for k in keys:
        mean = sum(w * s[k].detach().float().cpu() for w, s in zip(weights, states, strict=True))
        out[k] = mean.to(states[0][k].dtype)
    return out


def download(trainer: LocalTrainer, state: dict[str, torch.Tensor]) -> None:
    trainer.model.load_state_dict(state, strict=False)
    trainer.method.on_download(state)


def score(query: torch.Tensor, gallery: np.ndarray | torch.Tensor, images: SplitImages) -> tuple[float, float]:
    g = torch.as_tensor(gallery, dtype=torch.float32)
    dist = (1.0 - query.float() @ g.T).numpy()
    q, gal = images.query, images.gallery
    res = evaluate(dist, q.pids, gal.pids, q.camids, gal.camids)
    return res["mAP"], float(res["cmc"][0])


def run(method: str, sites: dict[str, SplitImages], rounds: int, common: list[str]) -> list[dict]:
    """Per round ≥ 2: {site: {policy: (mAP, Rank-1)}, seconds}; gallery indexed after round 1."""
    cfg = load_config([*common, f"method.name={method}"])
    trainers = [LocalTrainer(cfg, images) for images in sites.values()]
    cls = type(trainers[0].method)
    keys = cls.shared_keys(trainers[0].method.options, trainers[0].model)
    state = {k: torch.from_numpy(np.array(v)) for k, v in initial_shared_state(cfg, method).items()}
    optimizers = [t.optimizer() for t in trainers]
    stored: dict[str, dict[str, np.ndarray]] = {}
    history = []
    for rnd in range(1, rounds + 2):  # the last pass only downloads and measures
        for t in trainers:
            download(t, state)
        if rnd >= 2:
            history.append(measure(trainers, stored, rnd - 1))
            print(f"{method}, query model of round {rnd - 1}: {history[-1]['sites']}", flush=True)
        if rnd == rounds + 1:
            break
        for t, opt in zip(trainers, optimizers, strict=True):
            t.train_epochs(1, seed=stream_seed(cfg.seed, t.images.name, rnd), epoch_offset=rnd - 1, optimizer=opt)
        state = fedavg(trainers, keys)
    return history


def measure(trainers: list[LocalTrainer], stored: dict[str, dict[str, np.ndarray]], rnd: int) -> dict:
    """After the download of global model ``rnd``: index (round 1) or score the policies."""
    out: dict = {"round": rnd, "sites": {}, "upgrade_s": 0.0, "reindex_s": 0.0,
                 "upgrade_bytes": 0, "reindex_bytes": 0}
    for t in trainers:
        site, m = t.images.name, t.method
        query = m.embed(t.images.query, flip=False)
        started = time.perf_counter()
        fresh = m.embed(t.images.gallery, flip=False).numpy()
        out["reindex_s"] += time.perf_counter() - started
        out["reindex_bytes"] += sum(os.path.getsize(s.path) for s in t.images.gallery.samples) + fresh.nbytes
        if rnd == 1:
            stored[site] = {"naive": fresh, "upgraded": fresh}
        elif getattr(m, "upgrade", None) is not None:
            started = time.perf_counter()
            stored[site]["upgraded"] = upgrade_features(stored[site]["upgraded"], m.upgrade,
                                                        alpha=m.options.fusion_alpha)
            out["upgrade_s"] += time.perf_counter() - started
            transfer = sum(v.numel() * v.element_size() for v in m.upgrade.state_dict().values())
            out["upgrade_bytes"] += 2 * stored[site]["upgraded"].nbytes + transfer
        policies = {"naive": stored[site]["naive"], "reindex": fresh}
        if hasattr(m, "upgrade"):
            policies["upgraded"] = stored[site]["upgraded"]
        out["sites"][site] = {p: score(query, g, t.images) for p, g in policies.items()}
    return out


def summary(method: str, history: list[dict]) -> list[list]:
    rows = []
    for h in history[1:]:  # round 1 is where the gallery was indexed: every policy is the same
        mean = {p: np.mean([s[p] for s in h["sites"].values()], axis=0) for p in next(iter(h["sites"].values()))}
        gap = mean["reindex"][0] - mean["naive"][0]
        recovered = ((mean["upgraded"][0] - mean["naive"][0]) / gap) if "upgraded" in mean and gap > 1e-9 else np.nan
        rows.append([method, h["round"], mean["naive"][0], mean.get("upgraded", [np.nan])[0], mean["reindex"][0],
                     mean["naive"][1], mean.get("upgraded", [np.nan, np.nan])[1], mean["reindex"][1], recovered,
                     h["upgrade_s"], h["reindex_s"], h["upgrade_bytes"] / 1e6, h["reindex_bytes"] / 1e6])
    return rows


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    styles = {"bot": "--", "bic2r": "-"}
    for method, history in results.items():
        rounds = [h["round"] for h in history]
        for policy in next(iter(history[0]["sites"].values())):
            values = [np.mean([s[policy][0] for s in h["sites"].values()]) for h in history]
            ax.plot(rounds, values, styles.get(method, "-"), marker="o", markersize=3, label=f"{method}: {policy}")
    ax.set_xlabel("round of the query model (gallery indexed after round 1)")
    ax.set_ylabel("mAP (mean over sites)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/tmp/bic2r_claim/data")
    p.add_argument("--sites", default="market,duke")
    p.add_argument("--scale", type=float, default=0.2)
    p.add_argument("--size", default="64x32")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--methods", default="bot,bic2r")
    p.add_argument("--out", default="")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(1)
    h, w = (int(v) for v in args.size.split("x"))
    root = Path(args.data)
    names = args.sites.split(",")
    missing = [s for s in names if not (root / s).is_dir()]
    if missing:
        generate_synthetic8(root, scale=args.scale, seed=0, size=(h, w), sites=missing, workers=1)
    sites = {s: load_split_images(root / s, "fedreid", (h, w)) for s in names}
    common = [f"data.height={h}", f"data.width={w}", "device=cpu", f"model.arch={args.arch}", *args.overrides]
    results = {m: run(m, sites, args.rounds, common) for m in args.methods.split(",")}
    rows = [row for m, hist in results.items() for row in summary(m, hist)]
    table = markdown_table(["method", "query round", "naive mAP", "upgraded mAP", "re-index mAP", "naive R1",
                            "upgraded R1", "re-index R1", "gap recovered", "upgrade s", "re-index s",
                            "upgrade MB", "re-index MB"], rows)
    sizes = "; ".join(f"{n} {len(np.unique(s.train.pids))} ids, {len(s.train)} images" for n, s in sites.items())
    text = (f"{args.rounds} rounds, training data: {sizes}; {args.size}, {args.arch}, "
            f"gallery indexed after round 1, overrides {args.overrides}\n\n{table}\n")
    print("\n" + text)
    if args.out:
        out = Path(args.out)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=float))
        plot(results, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
