"""Is synthetic-8 learnable but not trivial? Per-site mAP / Rank-1 of untrained features,
per-protocol figures for the optional kinds, and a check of the attribute ground truth.

Four feature kinds, evaluated with the Market protocol (gallery items with the query's
identity *and* camera are dropped; queries without a match are skipped):
- raw: 32x16 pixels, per-image standardised, L2-normalised;
- resnet18: torchvision ResNet-18 with weights=None (random init, eval mode), pooled;
- pca+lda: raw pixels projected by PCA+LDA fitted on the site's train_all split (a
  seconds-long learned baseline: it shows train identities teach something that transfers);
- clothes: the ground-truth clothing attributes of the image's outfit, one-hot (what a
  perfect clothing-attribute recogniser would score; below 100% because look-alike
  identities share outfits and differ only in body, hair and colour shade).

Kinds add protocol rows: aerial->ground and ground->aerial (query platform against the other
platform's gallery), infrared->visible and visible->infrared (tracklet features = mean of
the frames), same-clothes and changed-clothes (CAL rules: a gallery image of the query's
identity with the other clothes state is dropped, not counted).

Attribute ground truth: the classes recorded per site (strong / weak / invisible / absent),
then a check of the visibility rules against the renderer: for ``--truth-images`` pictures
per site, every attribute the person has is taken away (``attributes_truth.counterfactual``),
the same shot is rendered again, and the pixel change (``measured_visibility``) is compared
with the visibility the rules give that picture: Spearman rho and mean absolute error over
(site, attribute) means, and the same for colour attributes in visible vs infrared pictures.

Reads the images and labels from each site's meta.json (independent of the readers).
Run: .venv/bin/python -m sims.bench.synth_learnability [--root DIR] [--scale 1.0]
     [--kinds aerial,ir-video,clothes] [--sites duke,market]
Uses torch.set_num_threads(2) by default (the machine has two shared cores).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from fedreid.data.synth import KIND_KEYS, SITE_KEYS, generate_synthetic8
from fedreid.data.synth.attributes_truth import (
    Palettes,
    counterfactual,
    measured_visibility,
    present,
    visibility,
)
from fedreid.data.synth.generate import render_job
from fedreid.data.synth.infrared import nir_identity
from fedreid.data.synth.kinds import draw_site_identity, plan_any

ATTRS = ("upper", "upper2", "pattern", "sleeves", "lower", "lower_style", "bag", "hat")
FEATURES = ("raw", "resnet18", "pca+lda", "clothes")
SPLITS = ("train_all", "query", "gallery")


def evaluate(
    qf: np.ndarray,
    qp: np.ndarray,
    qc: np.ndarray,
    gf: np.ndarray,
    gp: np.ndarray,
    gc: np.ndarray,
    junk: np.ndarray | None = None,
) -> tuple[float, float, int]:
    """mAP, Rank-1 and the number of scored queries (Market protocol, non-interpolated AP)
    for L2-normalised features; ``junk[i, j]`` drops gallery item j for query i as well."""
    sim = qf @ gf.T
    aps, r1 = [], []
    for i in range(len(qf)):
        keep = ~((gp == qp[i]) & (gc == qc[i]))
        if junk is not None:
            keep &= ~junk[i]
        order = np.argsort(-sim[i, keep], kind="stable")
        match = (gp[keep] == qp[i])[order]
        if not match.any():
            continue
        hits = np.flatnonzero(match)
        aps.append(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))
        r1.append(float(match[0]))
    if not aps:
        return float("nan"), float("nan"), 0
    return float(np.mean(aps)), float(np.mean(r1)), len(aps)


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
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)


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
        outfit = meta["identities"][str(it["pid"])]["outfits"][it["outfit"]]
        rows.append([vocab.setdefault((a, str(outfit[a])), len(vocab)) for a in ATTRS])
    x = np.zeros((len(items), len(vocab)), np.float32)
    for i, r in enumerate(rows):
        x[i, r] = 1.0
    return x


class Site:
    """One generated site: its meta.json, per-split labels and the four feature kinds."""

    def __init__(self, site_dir: Path, model: torch.nn.Module) -> None:
        self.meta = json.loads((site_dir / "meta.json").read_text())
        self.items = {
            s: [(k, v) for k, v in self.meta["images"].items() if k.startswith(s + "/")]
            for s in SPLITS
        }
        paths = {s: [site_dir / "pytorch" / k for k, _ in v] for s, v in self.items.items()}
        self.pid = {s: np.array([m["pid"] for _, m in v]) for s, v in self.items.items()}
        self.cam = {s: np.array([m["camid"] for _, m in v]) for s, v in self.items.items()}
        self.raw = {s: _raw(paths[s]) for s in SPLITS}
        test = np.concatenate([self.raw["query"], self.raw["gallery"]])
        train = self.raw["train_all"]
        pca = PCA(n_components=min(96, len(train) - 1), random_state=0).fit(train)
        lda = LinearDiscriminantAnalysis().fit(pca.transform(train), self.pid["train_all"])
        self.feats = {
            "raw": _l2(test),
            "resnet18": _l2(_resnet(model, paths["query"] + paths["gallery"])),
            "pca+lda": _l2(lda.transform(pca.transform(test))),
            "clothes": _l2(
                _attributes(self.meta, [m for _, m in self.items["query"] + self.items["gallery"]])
            ),
        }
        self.nq = len(self.items["query"])

    def field(self, split: str, get: Callable[[dict], object]) -> np.ndarray:
        return np.array([get(m) for _, m in self.items[split]])

    def scores(
        self,
        qsel: np.ndarray | None = None,
        gsel: np.ndarray | None = None,
        junk: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        tracklets: bool = False,
    ) -> dict[str, tuple[float, float, int]]:
        """Scores of every feature kind on a query/gallery subset (all by default)."""
        qsel = np.ones(self.nq, bool) if qsel is None else qsel
        gsel = np.ones(len(self.items["gallery"]), bool) if gsel is None else gsel
        out = {}
        for kind, f in self.feats.items():
            q = (f[: self.nq][qsel], self.pid["query"][qsel], self.cam["query"][qsel])
            g = (f[self.nq :][gsel], self.pid["gallery"][gsel], self.cam["gallery"][gsel])
            qi, gi = np.flatnonzero(qsel), np.flatnonzero(gsel)
            if tracklets:
                q, qi = _tracklets(*q, self.field("query", lambda m: m["tracklet"])[qsel], qi)
                g, gi = _tracklets(*g, self.field("gallery", lambda m: m["tracklet"])[gsel], gi)
            out[kind] = evaluate(*q, *g, junk=None if junk is None else junk(qi, gi))
        return out


def _tracklets(f, p, c, t, index):
    """Mean feature per (pid, camera, tracklet); returns it and one member index per row."""
    keys = np.stack([p, c, t], 1)
    uniq, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    sums = np.zeros((len(uniq), f.shape[1]))
    np.add.at(sums, inverse.ravel(), f)
    return (_l2(sums), uniq[:, 0], uniq[:, 1]), index[first]


def protocol_rows(site: Site, key: str) -> dict[str, dict[str, tuple[float, float, int]]]:
    """The protocol splits of one kind (see the module docstring)."""
    if key == "aerial":
        qa = site.field("query", lambda m: m["geometry"]["platform"]) == "aerial"
        ga = site.field("gallery", lambda m: m["geometry"]["platform"]) == "aerial"
        return {
            "aerial->ground": site.scores(qa, ~ga),
            "ground->aerial": site.scores(~qa, ga),
        }
    if key == "ir-video":
        qi = site.field("query", lambda m: m["modality"]) == "infrared"
        gi = site.field("gallery", lambda m: m["modality"]) == "infrared"
        return {
            "infrared->visible": site.scores(qi, ~gi, tracklets=True),
            "visible->infrared": site.scores(~qi, gi, tracklets=True),
        }
    qc = site.field("query", lambda m: m["clothes_id"])
    gc = site.field("gallery", lambda m: m["clothes_id"])
    qp, gp = site.pid["query"], site.pid["gallery"]

    def rule(same: bool) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        def junk(qi: np.ndarray, gi: np.ndarray) -> np.ndarray:
            same_pid = qp[qi, None] == gp[None, gi]
            same_clothes = qc[qi, None] == gc[None, gi]
            return same_pid & (same_clothes != same)

        return junk

    return {"same-clothes": site.scores(junk=rule(True)), "changed-clothes": site.scores(junk=rule(False))}


def truth_check(root: Path, key: str, n_images: int) -> list[tuple[str, str, bool, float, float]]:
    """(attribute, infrared picture, recorded, measured) per sampled picture and attribute."""
    manifest = json.loads((root / "synthetic-8.json").read_text())
    plan = plan_any(key, seed=manifest["seed"], scale=manifest["scale"],
                    min_test_ids=manifest["min_test_ids"])
    pri = plan.spec.priors
    palettes = Palettes(pri.upper_palette, pri.lower_palette, pri.hair_palette)
    size = tuple(manifest["size"])
    rng = np.random.default_rng(0)
    picked = rng.choice(len(plan.jobs), size=min(n_images, len(plan.jobs)), replace=False)
    out = []
    for i in sorted(picked):
        job = plan.jobs[int(i)]
        ident = draw_site_identity(key, manifest["seed"], job.pid, plan.n_prototypes)
        pixels, _, facts = render_job(key, manifest["seed"], size, job, ident)
        worn = nir_identity(ident) if facts.infrared else ident
        for name in sorted(present(ident, job.outfit)):
            changed = counterfactual(ident, job.outfit, name, palettes, rng)
            again, _, _ = render_job(key, manifest["seed"], size, job, changed)
            out.append((
                name,
                facts.infrared,
                visibility(name, ident, facts, palettes, worn),
                measured_visibility(pixels, again, facts.infrared),
            ))
    return out


def _agreement(pairs: dict[tuple, list[tuple[float, float]]]) -> tuple[int, float, float]:
    means = np.array([np.mean(v, axis=0) for v in pairs.values()])
    return len(means), float(spearmanr(means[:, 0], means[:, 1]).statistic), float(
        np.abs(means[:, 0] - means[:, 1]).mean()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, help="an existing folder (default: generate one)")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--sites", default=",".join(SITE_KEYS), help="default sites ('' for none)")
    ap.add_argument("--kinds", default=",".join(KIND_KEYS), help="optional kinds ('' for none)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--truth-images", type=int, default=150, help="pictures per site re-rendered")
    args = ap.parse_args()
    sites = [s for s in args.sites.split(",") if s]
    kinds = [k for k in args.kinds.split(",") if k]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp)
            t = time.perf_counter()
            generate_synthetic8(root, scale=args.scale, workers=args.workers, sites=sites, kinds=kinds)
            print(f"generated scale {args.scale:g} in {time.perf_counter() - t:.1f} s")
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None)
        model.fc = torch.nn.Identity()
        model.eval()
        print("| site | protocol | queries | " + " | ".join(f"{k} mAP | {k} R1" for k in FEATURES) + " |")
        print("|---|---|---|" + "---|---|" * len(FEATURES))
        classes: dict[str, dict[str, int]] = {}
        checks: dict[tuple, list[tuple[float, float]]] = {}
        by_light: dict[tuple, list[tuple[float, float]]] = {}
        for key in [*sites, *kinds]:
            if not (root / key / "meta.json").is_file():
                continue
            site = Site(root / key, model)
            rows = {"all": site.scores()}
            if key in KIND_KEYS:
                rows.update(protocol_rows(site, key))
            for name, s in rows.items():
                print(
                    f"| {key} | {name} | {s['raw'][2]} | "
                    + " | ".join(f"{100 * s[k][0]:.1f} | {100 * s[k][1]:.1f}" for k in FEATURES)
                    + " |"
                )
            truth = site.meta["attribute_truth"]["attributes"]
            labels = [t["class"] for t in truth.values()]
            classes[key] = {c: labels.count(c) for c in ("strong", "weak", "invisible", "absent")}
            for name, infrared, recorded, measured in truth_check(root, key, args.truth_images):
                checks.setdefault((key, name), []).append((recorded, measured))
                if name.split(":")[0] in ("upper", "lower"):
                    by_light.setdefault((key, name, infrared), []).append((recorded, measured))
        print("\n| site | strong | weak | invisible | absent | strongest | weakest present |")
        print("|---|---|---|---|---|---|---|")
        for key, c in classes.items():
            truth = json.loads((root / key / "meta.json").read_text())["attribute_truth"]["attributes"]
            worn = sorted((t["separability"], n) for n, t in truth.items() if t["class"] != "absent")
            print(f"| {key} | {c['strong']} | {c['weak']} | {c['invisible']} | {c['absent']} "
                  f"| {worn[-1][1]} {worn[-1][0]:.2f} | {worn[0][1]} {worn[0][0]:.2f} |")
        if checks:
            n, rho, mae = _agreement(checks)
            print(f"\nvisibility rules vs re-rendering: {n} (site, attribute) means, "
                  f"Spearman rho {rho:.2f}, mean |recorded - measured| {mae:.3f}")
            for infrared in (False, True):
                part = {k: v for k, v in by_light.items() if k[2] == infrared}
                if part:
                    rec = np.mean([np.mean(v, axis=0)[0] for v in part.values()])
                    mea = np.mean([np.mean(v, axis=0)[1] for v in part.values()])
                    print(f"colour attributes in {'infrared' if infrared else 'visible'} pictures: "
                          f"recorded {rec:.2f}, measured {mea:.2f} ({len(part)} means)")


if __name__ == "__main__":
    main()
