"""DPPP's two claims at tiny scale: generalisation from generated identities, and the
privacy-safe start of a federation.

    python -m sims.bench.dppp_claim [--identities 120] [--epochs 12] [--rounds 6] [--seed 0]
        [--out DIR [--reuse]] [--skip-b] [overrides ...]

(a) Train on prompt-generated identities only (``random_prompts``; the indoor styles
``corridor`` and ``station`` held out), ``dppp`` against plain ``bot`` — same generated data,
ViT, epochs, seed — and evaluate each model, untouched, on synthetic-8 sites: cuhk03 and
ilids are wholly in held-out styles, cuhk01 in part, the others in seen ones. An untrained
model of the same seed is the floor; the style gap (:func:`style_gap`) measures how much
background the embeddings of the generated test images still carry.

(b) FedKLPR (its preset: ``capr`` at every site, KL regulariser, pruning, CRR) over
``--fed-sites`` of synthetic-8, started from the ``dppp`` model of (a) (``model.init``, as
``fedreid pretrain`` writes it) against from random weights: mean mAP per round, the rounds
the pretrained start needs to reach the random start's final mAP, and final mAP at equal
rounds. Both federations run in-process (the real ClientApp and strategy, no Ray).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from clients.app import make_client_app
from fedreid.config import load_config
from fedreid.config.presets import strategy_overrides
from fedreid.data.split_images import SplitImages, load_split_images
from fedreid.data.synth import generate_from_prompts, generate_synthetic8, random_prompts
from fedreid.eval.protocols import EvalContext, RerankOptions, single_query
from fedreid.models.init_file import save_init_file
from fedreid.report import run_curves
from fedreid.runlog import markdown_table
from fedreid.training import LocalTrainer, stream_seed
from server.app import run_server
from sims.inprocess_grid import InProcessGrid, set_task_identity

HELD_OUT_SITES = ("cuhk03", "ilids")  # every camera in a held-out style (corridor, station)
MODELS = ("untrained", "bot", "dppp")


def cross_site(trainer: LocalTrainer, site: SplitImages) -> dict[str, float]:
    """Single-query mAP/Rank-1 of the trainer's model on another site's query/gallery."""
    ctx = EvalContext(query=site.query, gallery=site.gallery, query_features=trainer.features(site.query),
                      gallery_features=trainer.features(site.gallery), video=site.video,
                      embed=trainer.features, rerank=RerankOptions(method="none"))
    return single_query(ctx)


def style_gap(trainer: LocalTrainer, site: SplitImages) -> float:
    """How much style the embedding holds: mean cosine similarity of two different people's
    images rendered on the same background minus that of two different people on different
    backgrounds, over the generated test images. 0 = none."""
    feats = torch.cat([trainer.features(site.query, flip=False), trainer.features(site.gallery, flip=False)])
    pids = np.concatenate([site.query.pids, site.gallery.pids])
    style = np.concatenate([site.query.field("prompt_style")[:, -1], site.gallery.field("prompt_style")[:, -1]])
    sim = (feats @ feats.t()).numpy()
    other = pids[:, None] != pids[None, :]
    same_style = style[:, None] == style[None, :]
    return float(sim[other & same_style].mean() - sim[other & ~same_style].mean())


def train_generated(method: str, generated: SplitImages, common: list[str], epochs: int) -> LocalTrainer:
    cfg = load_config([f"method.name={method}", *common])
    trainer = LocalTrainer(cfg, generated)
    opt = trainer.optimizer()
    started = time.perf_counter()
    for epoch in range(epochs):
        stats = trainer.train_epochs(1, seed=stream_seed(cfg.seed, "generated", epoch), epoch_offset=epoch,
                                     optimizer=opt)
    print(f"{method}: {epochs} epochs in {time.perf_counter() - started:.0f} s, last loss {stats['loss']:.3f}",
          flush=True)
    return trainer


def claim_a(generated: SplitImages, targets: dict[str, SplitImages], common: list[str], epochs: int,
            init_file: Path) -> str:
    untrained = LocalTrainer(load_config(["method.name=bot", *common]), generated)
    results = {"untrained": {name: cross_site(untrained, site) for name, site in targets.items()}}
    results["untrained"]["generated (own test split)"] = untrained.evaluate()
    gaps = {"untrained": style_gap(untrained, generated)}
    for method in ("bot", "dppp"):
        trainer = train_generated(method, generated, common, epochs)
        results[method] = {name: cross_site(trainer, site) for name, site in targets.items()}
        results[method]["generated (own test split)"] = trainer.evaluate()
        gaps[method] = style_gap(trainer, generated)
        if method == "dppp":
            cfg = trainer.cfg
            save_init_file(init_file, trainer.model.state_dict(), method="dppp", arch=trainer.method.arch(cfg.model),
                           image_size=(cfg.data.height, cfg.data.width), vit_depth=cfg.model.vit_depth,
                           source="sims.bench.dppp_claim")
    rows = []
    for name in [*targets, "generated (own test split)"]:
        kind = "held-out styles" if name in HELD_OUT_SITES else ("own" if name.startswith("generated") else "seen/partly")
        rows.append([name, kind, *(results[m][name][k] for k in ("mAP", "rank1") for m in MODELS)])
    for label, names in (("mean, held-out-style sites", [n for n in targets if n in HELD_OUT_SITES]),
                         ("mean, all synthetic-8 sites", list(targets))):
        if names:
            rows.append([label, "", *(float(np.mean([results[m][n][k] for n in names]))
                                      for k in ("mAP", "rank1") for m in MODELS)])
    table = markdown_table(["evaluated on", "styles", *(f"{m} {k}" for k in ("mAP", "Rank-1") for m in MODELS)],
                           rows)
    return table + "\n\nstyle gap on generated test images (same-background minus other-background cosine " \
        "of different people; lower = less style in the embedding): " + ", ".join(f"{m} {gaps[m]:.4f}" for m in MODELS)


def federation(root: Path, sites: list[str], common: list[str], rounds: int, out: Path, init: str) -> dict:
    cfg = load_config([*strategy_overrides("fedklpr"), *common, f"data.root={root}",
                       f"data.sites=[{','.join(sites)}]", f"fl.rounds={rounds}",
                       *([f"model.init={init}"] if init else [])])
    cfg = replace(cfg, data=replace(cfg.data, root=str(root)))
    grid = InProcessGrid(make_client_app(cfg, state_dir=out / "site-state"),
                         {i + 1: {"partition-id": i} for i in range(len(sites))})
    started = time.perf_counter()
    run_server(grid, cfg, out, node_wait_s=1)
    curves = run_curves(out)
    print(f"federation from {'the generated start' if init else 'random weights'}: mAP per round "
          f"{[round(m, 3) for m in curves['mAP']]} ({time.perf_counter() - started:.0f} s)", flush=True)
    return curves


def claim_b(root: Path, sites: list[str], common: list[str], rounds: int, out: Path, init_file: Path) -> str:
    random = federation(root, sites, common, rounds, out / "random", "")
    pre = federation(root, sites, common, rounds, out / "pretrained", str(init_file))
    target = random["mAP"][-1]
    reached = next((r for r, m in zip(pre["rounds"], pre["mAP"], strict=True) if m >= target), None)
    rows = [[r, random["mAP"][i], pre["mAP"][i], random["rank1"][i], pre["rank1"][i]]
            for i, r in enumerate(random["rounds"])]
    table = markdown_table(["round", "random mAP", "generated-start mAP", "random Rank-1", "generated-start Rank-1"],
                           rows)
    return (f"{table}\n\nrandom start reaches mean mAP {target:.4f} at round {random['rounds'][-1]}; the "
            f"generated start reaches it at round {reached if reached is not None else 'never (within the run)'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--identities", type=int, default=120, help="generated identities (prompts)")
    p.add_argument("--images-per-identity", type=int, default=8)
    p.add_argument("--epochs", type=int, default=12, help="training epochs on the generated set")
    p.add_argument("--rounds", type=int, default=6, help="FedKLPR rounds in (b)")
    p.add_argument("--scale", type=float, default=0.1, help="synthetic-8 identity-count scale")
    p.add_argument("--targets", default="duke,market,cuhk03,prid,cuhk01,viper,3dpes,ilids")
    p.add_argument("--fed-sites", default="market,cuhk03,viper,ilids")
    p.add_argument("--size", default="64x32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    p.add_argument("--skip-b", action="store_true", help="only claim (a)")
    p.add_argument("--reuse", action="store_true", help="keep data already generated in --out")
    p.add_argument("overrides", nargs="*", help="config overrides for every run (e.g. model.vit_depth=4)")
    args = p.parse_args()
    set_task_identity()
    out = Path(args.out or tempfile.mkdtemp(prefix="fedreid-dppp-claim-"))
    h, w = (int(v) for v in args.size.split("x"))
    common = ["device=cpu", f"data.height={h}", f"data.width={w}", "model.arch=vit_tiny_p8", "model.vit_depth=2",
              "train.batch_size=32", "eval.batch_size=128", f"seed={args.seed}", *args.overrides]
    started = time.perf_counter()
    targets = sorted(set(args.targets.split(",")) | set(args.fed_sites.split(",")))
    if not (args.reuse and (out / "generated" / "meta.json").exists()):
        generate_from_prompts(random_prompts(args.identities, args.seed), out / "generated", seed=args.seed,
                              size=(h, w), images_per_identity=args.images_per_identity, cameras=4, workers=2)
    if not (args.reuse and all((out / "synthetic-8" / s).is_dir() for s in targets)):
        generate_synthetic8(out / "synthetic-8", scale=args.scale, seed=args.seed, size=(h, w), sites=targets,
                            min_test_ids=10, workers=2)
    print(f"data in {time.perf_counter() - started:.0f} s → {out}", flush=True)
    generated = load_split_images(out / "generated", "fedreid", (h, w))
    sites = {s: load_split_images(out / "synthetic-8" / s, "fedreid", (h, w)) for s in args.targets.split(",")}
    init_file = out / "dppp-init.pt"
    table_a = claim_a(generated, sites, common, args.epochs, init_file)
    print(f"\n(a) trained on {args.identities} generated identities only, {args.epochs} epochs\n{table_a}\n", flush=True)
    text = f"# DPPP claims\n\n## (a)\n\n{table_a}\n"
    if not args.skip_b:
        table_b = claim_b(out / "synthetic-8", args.fed_sites.split(","), common, args.rounds, out / "fed", init_file)
        print(f"(b) FedKLPR over {args.fed_sites}, {args.rounds} rounds\n{table_b}\n", flush=True)
        text += f"\n## (b)\n\n{table_b}\n"
    (out / "dppp_claim.md").write_text(text)
    print(f"done in {time.perf_counter() - started:.0f} s → {out / 'dppp_claim.md'}")


if __name__ == "__main__":
    main()
