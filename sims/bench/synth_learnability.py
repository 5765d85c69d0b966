"""Is synthetic-8 learnable but not trivial? Per-site mAP / Rank-1 of untrained features.

Four feature kinds, evaluated with the Market protocol (gallery items with the query's
identity *and* camera are dropped; queries without a match are skipped):
- raw: 32x16 pixels, per-image standardised, L2-normalised;
- resnet18: torchvision ResNet-18 with weights=None (random init, eval mode), pooled;
- pca+lda: raw pixels projected by PCA+LDA fitted on the site's train_all split (a
  seconds-long learned baseline: it shows train identities teach something that transfers);
- clothes: the ground-truth clothing attributes of the image's outfit, one-hot (what a
  perfect clothing-attribute recogniser would score; below 100% because look-alike
  identities share outfits and differ only in body, hair and colour shade).

Reads the images and labels from each site's meta.json (independent of the readers).
Run: .venv/bin/python -m sims.bench.synth_learnability [--root DIR] [--scale 1.0]
Uses torch.set_num_threads(2) by default (the machine has two shared cores).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from fedreid.data.synth import SITE_KEYS, generate_synthetic8

ATTRS = ("upper", "upper2", "pattern", "sleeves", "lower", "lower_style", "bag", "hat")


def evaluate(
    qf: np.ndarray, qp: np.ndarray, qc: np.ndarray, gf: np.ndarray, gp: np.ndarray, gc: np.ndarray
) -> tuple[float, float]:
    """mAP and Rank-1 (Market protocol, non-interpolated AP) for L2-normalised features."""
    sim = qf @ gf.T
    aps, r1 = [], []
    for i in range(len(qf)):
        keep = ~((gp == qp[i]) & (gc == qc[i]))
        order = np.argsort(-sim[i, keep], kind="stable")
        match = (gp[keep] == qp[i])[order]
        if not match.any():
            continue
        hits = np.flatnonzero(match)
        aps.append(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))
        r1.append(float(match[0]))
    return float(np.mean(aps)), float(np.mean(r1))


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _raw(paths: list[Path]) -> np.ndarray:
    x = np.stack(
        [
            np.asarray(
                Image.open(p).convert("RGB").resize((16, 32), Image.BILINEAR), np.float32
            ).ravel()
            for p in paths
        ]
    )
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    return x


@torch.no_grad()
def _resnet(model: torch.nn.Module, paths: list[Path]) -> np.ndarray:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    feats = []
    for i in range(0, len(paths), 128):
        batch = np.stack(
            [
                np.asarray(Image.open(p).convert("RGB"), np.float32) / 255.0
                for p in paths[i : i + 128]
            ]
        )
        x = (torch.from_numpy(batch).permute(0, 3, 1, 2) - mean) / std
        feats.append(model(x).numpy())
    return np.concatenate(feats)


def _attributes(meta: dict, items: list[dict]) -> np.ndarray:
    vocab: dict[tuple[str, str], int] = {}
    rows = []
    for it in items:
        ident = meta["identities"][str(it["pid"])]
        outfit = ident["outfits"][it["outfit"]]
        keys = [(a, str(outfit[a])) for a in ATTRS]
        rows.append([vocab.setdefault(k, len(vocab)) for k in keys])
    x = np.zeros((len(items), len(vocab)), np.float32)
    for i, r in enumerate(rows):
        x[i, r] = 1.0
    return x


def site_scores(site_dir: Path, model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    meta = json.loads((site_dir / "meta.json").read_text())
    split = {
        s: [(k, v) for k, v in meta["images"].items() if k.startswith(s + "/")]
        for s in ("train_all", "query", "gallery")
    }
    paths = {s: [site_dir / "pytorch" / k for k, _ in v] for s, v in split.items()}
    pid = {s: np.array([m["pid"] for _, m in v]) for s, v in split.items()}
    cam = {s: np.array([m["camid"] for _, m in v]) for s, v in split.items()}
    nq = len(split["query"])
    raw = {s: _raw(paths[s]) for s in split}
    both = np.concatenate([raw["query"], raw["gallery"]])
    pca = PCA(n_components=min(96, len(raw["train_all"]) - 1), random_state=0).fit(raw["train_all"])
    lda = LinearDiscriminantAnalysis().fit(pca.transform(raw["train_all"]), pid["train_all"])
    feats = {
        "raw": _l2(both),
        "resnet18": _l2(_resnet(model, paths["query"] + paths["gallery"])),
        "pca+lda": _l2(lda.transform(pca.transform(both))),
        "clothes": _l2(_attributes(meta, [m for _, m in split["query"] + split["gallery"]])),
    }
    return {
        k: evaluate(f[:nq], pid["query"], cam["query"], f[nq:], pid["gallery"], cam["gallery"])
        for k, f in feats.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--root", type=Path, help="an existing synthetic-8 folder (default: generate one)"
    )
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp)
            t = time.perf_counter()
            generate_synthetic8(root, scale=args.scale, workers=args.workers)
            print(f"generated scale {args.scale:g} in {time.perf_counter() - t:.1f} s")
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None)
        model.fc = torch.nn.Identity()
        model.eval()
        kinds = ("raw", "resnet18", "pca+lda", "clothes")
        print("| site | " + " | ".join(f"{k} mAP | {k} R1" for k in kinds) + " |")
        print("|---|" + "---|---|" * len(kinds))
        for key in SITE_KEYS:
            if not (root / key / "meta.json").is_file():
                continue
            s = site_scores(root / key, model)
            print(
                f"| {key} | "
                + " | ".join(f"{100 * s[k][0]:.1f} | {100 * s[k][1]:.1f}" for k in kinds)
                + " |"
            )


if __name__ == "__main__":
    main()
