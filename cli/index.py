"""`fedreid site index`: a site's gallery index that survives model updates.

    build SITE      extract the gallery's features with a checkpoint into a new version
                    (the first index, or a full re-index with a new model)
    upgrade         map the current version into a new model's space through a transfer
                    network: no image is read (Bi-C2R's gallery update)
    search IMAGES   rank the current (or a chosen) version against query images
    stats           versions, models, counts and capture-time ranges

Every write makes a new version and switches to it atomically; the previous one stays usable.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.common import console, fail
from fedreid.index import SEARCH_KINDS, SiteIndex, build_version, load_transfer, upgrade_version
from fedreid.index.extract import extract, gallery_items, image_files, load_model
from fedreid.models import resolve_device

index_app = typer.Typer(
    help="A site's gallery index: build, upgrade (no images), search, stats.", no_args_is_help=True
)

IndexDir = Annotated[Path, typer.Option("--index", help="The index folder (created by `build`).")]
Arch = Annotated[str | None, typer.Option(
    help="Backbone of the checkpoint, when the checkpoint does not record it (e.g. resnet18).")]
Size = Annotated[str, typer.Option(help="Model input size HxW (as the model was trained).")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
BatchSize = Annotated[int, typer.Option(help="Images per forward pass.")]
Search = Annotated[str, typer.Option(
    help=f"Search of the new version: {', '.join(SEARCH_KINDS)} (auto: exact below 100,000 vectors, else IVF).")]
Keep = Annotated[int | None, typer.Option(
    help="Keep only the newest N versions (the current one always); default keeps all.")]


def _size(size: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size.lower().split("x"))
    except ValueError:
        fail(f"--size {size!r} is not HxW; write e.g. --size 128x64")
    if height < 16 or width < 8:
        fail(f"--size {size} is too small; use at least 16x8")
    return height, width


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def _when(stamp: float | None) -> str:
    if stamp is None or stamp != stamp:  # NaN: no item
        return "-"
    return datetime.fromtimestamp(stamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@index_app.command("build")
def build(
    site: Annotated[Path, typer.Argument(help="The site's data folder (FedReID layout: holds pytorch/).")],
    index: IndexDir,
    weights: Annotated[Path, typer.Option(help="Checkpoint whose features to store (torch file with 'model').")],
    arch: Arch = None,
    model_name: Annotated[str | None, typer.Option(help="Name shown for this model (default: the file's stem).")] = None,
    dataset: Annotated[str, typer.Option(help="Reader of the site folder (fedreid.data.readers name).")] = "fedreid",
    split: Annotated[str, typer.Option(help="Which split is the gallery.")] = "gallery",
    size: Size = "128x64",
    batch_size: BatchSize = 64,
    device: Device = "auto",
    search: Search = "auto",
    keep: Keep = None,
) -> None:
    """Extract the gallery's features and store them as the new current version."""
    hw = _size(size)
    try:
        model, ref = load_model(weights, arch, model_name)
        samples, items = gallery_items(site, dataset, split)
        with _progress() as progress:
            task = progress.add_task(f"extracting {split} ({ref.name})", total=len(samples))
            feats = extract(model, [s.path for s in samples], hw, device=resolve_device(device),
                            batch_size=batch_size,
                            progress=lambda done: progress.update(task, completed=done))
        with console.status("writing the new version"):
            version = build_version(index, feats, items, ref, search=search, keep=keep)
    except ValueError as exc:
        fail(str(exc))
    sources = {item.time_source for item in items}
    console.print(
        f"version {version.id}: {version.count} images of {len({i.pid for i in items})} identities, "
        f"{version.dim}-d features of {ref.name} ({ref.digest}), search {version.search}; "
        f"capture times from {' and '.join(sorted(sources))} → {index}", highlight=False)


@index_app.command("upgrade")
def upgrade(
    index: IndexDir,
    transfer: Annotated[Path, typer.Option(help="Transfer network old → new space (.pt2 from save_transfer).")],
    to_weights: Annotated[Path, typer.Option(help="Checkpoint of the model the transfer maps into.")],
    arch: Arch = None,
    model_name: Annotated[str | None, typer.Option(help="Name shown for the new model (default: the file's stem).")] = None,
    alpha: Annotated[float, typer.Option(
        help="Fusion weight: G_new = norm(α·T(G) + (1−α)·G); 1 = pure transfer.")] = 1.0,
    search: Search = "auto",
    keep: Keep = None,
) -> None:
    """Move the stored gallery into a new model's space without any image."""
    try:
        fn = load_transfer(transfer)
        _, ref = load_model(to_weights, arch, model_name)
        with _progress() as progress:
            task = progress.add_task(f"transferring ({fn.name})", total=None)
            version = upgrade_version(
                index, fn, ref, transfer_name=fn.name, alpha=alpha, search=search, keep=keep,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except ValueError as exc:
        fail(str(exc))
    console.print(
        f"version {version.id} (upgrade of {version.parent}, α={alpha}): {version.count} vectors "
        f"now in the space of {ref.name} ({ref.digest}), search {version.search} → {index}",
        highlight=False)


@index_app.command("search")
def search(
    query_images: Annotated[list[Path], typer.Argument(help="Query image files or folders (searched recursively).")],
    index: IndexDir,
    weights: Annotated[Path, typer.Option(help="Checkpoint that extracts the query features.")],
    arch: Arch = None,
    k: Annotated[int, typer.Option("-k", help="Matches per query.")] = 10,
    version: Annotated[int | None, typer.Option(help="Version to search (default: the current one).")] = None,
    allow_other_model: Annotated[bool, typer.Option(
        "--allow-other-model",
        help="Search a version made for another model (to measure how far apart the spaces are).")] = False,
    size: Size = "128x64",
    batch_size: BatchSize = 64,
    device: Device = "auto",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every match to this JSON file.")] = None,
) -> None:
    """Rank stored gallery items for each query image."""
    hw = _size(size)
    try:
        with SiteIndex(index) as site_index:
            info = site_index.version(version)
            model, ref = load_model(weights, arch)
            if allow_other_model:
                if site_index.store.model(info.model).digest != ref.digest:
                    console.print(f"[yellow]warning:[/] version {info.id} was made for another "
                                  "model; ranks compare two different spaces", highlight=False)
            else:
                site_index.check_model(ref.digest, info.id)
            paths = image_files(query_images)
            with _progress() as progress:
                task = progress.add_task("extracting queries", total=len(paths))
                feats = extract(model, [str(p) for p in paths], hw, device=resolve_device(device),
                                batch_size=batch_size,
                                progress=lambda done: progress.update(task, completed=done))
            hits = site_index.search(feats, k, info.id)
    except ValueError as exc:
        fail(str(exc))
    table = Table(title=f"version {hits.version}: top-{k} of {info.count} ({info.search} search)")
    for col in ("query", "score", "pid", "cam", "captured (UTC)", "gallery item", f"top-{k} pids"):
        table.add_column(col, overflow="fold")
    for i, path in enumerate(paths):
        table.add_row(path.name, f"{hits.scores[i, 0]:.3f}", str(hits.pids[i, 0]), str(hits.camids[i, 0]),
                      _when(hits.capture_times[i, 0]), hits.keys[i][0],
                      " ".join(str(p) for p in hits.pids[i]))
    console.print(table)
    if json_out is not None:
        results = [
            {"query": str(path), "matches": [
                {"rank": r + 1, "score": float(hits.scores[i, r]), "row": int(hits.rows[i, r]),
                 "item": hits.keys[i][r], "pid": int(hits.pids[i, r]), "camid": int(hits.camids[i, r]),
                 "capture_time": _when(hits.capture_times[i, r]),
                 "source_model": int(hits.source_models[i, r]), "hops": int(hits.hops[i, r])}
                for r in range(k) if hits.rows[i, r] >= 0]}
            for i, path in enumerate(paths)
        ]
        json_out.write_text(json.dumps({"version": hits.version, "k": k, "results": results}, indent=1))
        console.print(f"wrote {json_out}", highlight=False)


@index_app.command("stats")
def stats(
    index: IndexDir,
    json_out: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
) -> None:
    """List the versions: model, size, identities, cameras, capture times, lineage, search."""
    try:
        with SiteIndex(index) as site_index:
            info = site_index.stats()
    except ValueError as exc:
        fail(str(exc))
    if json_out:
        console.print_json(json.dumps(info))
        return
    table = Table(title=f"site index {info['root']} (current: version {info['current']}, marked *)")
    for col in ("version", "made", "model", "vectors", "ids", "cams", "captured (UTC)", "search", "MiB"):
        table.add_column(col)
    for v in info["versions"]:
        made = v["kind"] if v["parent"] is None else f"{v['kind']} ← {v['parent']}"
        if v["kind"] == "upgrade":
            made += f", α={v['alpha']:g}"
        how = v["search"] if v["search"] != "ivf" else (
            f"ivf {v['nlist']} lists, nprobe {v['nprobe']}, recall@10 {v['recall']:.2f}")
        table.add_row(
            f"{v['id']}{' *' if v['current'] else ''}", made, v["model_name"],
            f"{v['count']}×{v['dim']}", str(v["identities"]), str(v["cameras"]),
            f"{_when(v['first_capture'])[:16]} … {_when(v['last_capture'])[:16]}", how,
            f"{v['bytes'] / 2**20:.1f}",
        )
    console.print(table)
    for v in info["versions"]:
        if v["kind"] == "upgrade":
            console.print(f"version {v['id']}: {v['transferred']} vectors mapped through transfers "
                          f"(at most {v['max_hops']}), last {v['transfer']}", highlight=False)
    models = Table(title="models")
    for col in ("name", "arch", "digest", "dim"):
        models.add_column(col)
    for m in info["models"]:
        models.add_row(m["name"], m["arch"], m["digest"], str(m["dim"]))
    console.print(models)
