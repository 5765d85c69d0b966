"""`fedreid site augment` and `fedreid site styles`: a site's camera-style data, made on the site.

``augment`` trains the site's camera-style GAN on its own training images (resumable: run it
again after an interruption) and writes a translated copy of every training image as each
other camera, labels kept, beside the site's data (what methods ``iqaga`` and ``daprh``
read). ``styles`` writes the per-camera style aggregates an unlabelled site may share (opt-in):
mean low-frequency amplitude spectra over at least ``--min-images`` images, no image.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.common import console, fail
from fedreid.data.records import DataError


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        fail(f"--size {text!r}: write HxW, e.g. 64x32")
    return h, w


def _train_split(data: Path, dataset: str, size: tuple[int, int]):
    from fedreid.data.readers import load_dataset
    from fedreid.data.store import ImageStore

    splits = load_dataset(data, dataset)
    return splits, ImageStore(splits.train, size)


def augment(
    data: Annotated[Path, typer.Option(help="The site's data folder (e.g. holding pytorch/).")],
    out: Annotated[Path | None, typer.Option(help="Folder for the copies (default: <data>/augmented, where the methods look).")] = None,
    dataset: Annotated[str, typer.Option(help="Reader of the site folder, e.g. fedreid, market1501.")] = "fedreid",
    size: Annotated[str, typer.Option(help="Image size HxW of the GAN and the copies (use the training size).")] = "64x32",
    iterations: Annotated[int, typer.Option(help="GAN discriminator steps (the generator steps every 5th).")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Images per GAN step.")] = 16,
    dim: Annotated[int, typer.Option(help="Generator width (StarGAN: 64).")] = 16,
    res_blocks: Annotated[int, typer.Option(help="Generator residual blocks (StarGAN: 6).")] = 3,
    per_image: Annotated[int, typer.Option(help="Copies per image, each as another camera (0 = every other camera).")] = 0,
    quality: Annotated[str, typer.Option(help="Pixel score recorded per copy for `method.iqaga.drop_worst`: sharpness, laplacian, piqe or none.")] = "sharpness",
    seed: Annotated[int, typer.Option(help="Seed of the GAN and of the copies' cameras.")] = 0,
) -> None:
    """Train the site's camera-style GAN on its own images and write translated copies that
    keep their labels. Nothing leaves this machine."""
    from fedreid.augment import GanOptions, train_camstyle_gan, write_camstyle_copies
    from fedreid.augment.quality import QUALITY_SCORES

    if quality not in QUALITY_SCORES:
        fail(f"--quality {quality!r}: choose one of {', '.join(QUALITY_SCORES)}")
    out = out or data / "augmented"
    shape = _size(size)
    try:
        options = GanOptions(iterations=iterations, batch_size=batch_size, dim=dim, res_blocks=res_blocks,
                             seed=seed)
        splits, store = _train_split(data, dataset, shape)
        out.mkdir(parents=True, exist_ok=True)
        checkpoint = out / "gan.pt"
        cameras = sorted({int(c) for c in store.camids})
        console.print(f"[bold]site augment[/] {data}: {len(store)} training images, cameras {cameras}, "
                      f"{shape[0]}x{shape[1]}, GAN checkpoint {checkpoint}", highlight=False)
        started = time.perf_counter()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TextColumn("{task.fields[losses]}"), console=console,
                      transient=True) as bar:
            task = bar.add_task("GAN", total=iterations, losses="")
            gan = train_camstyle_gan(
                store.images, store.camids, options, checkpoint=checkpoint,
                progress=lambda i, n, logs: bar.update(task, completed=i, total=n, losses=" ".join(
                    f"{k} {v:.2f}" for k, v in logs.items() if k in ("d_cls", "g_cls", "g_rec"))))
            gan_seconds = time.perf_counter() - started
            bar.update(task, description="copies", completed=0, total=None, losses="")
            written = write_camstyle_copies(
                data, splits.train, store.images, gan, out, per_image=per_image, score=quality, seed=seed,
                gan_info={**asdict(options), "checkpoint": checkpoint.name},
                progress=lambda i, n: bar.update(task, completed=i, total=n))
    except (DataError, ValueError) as exc:
        fail(str(exc), code=1)
    total = time.perf_counter() - started
    console.print(f"GAN: {gan.iterations} iterations ({gan_seconds / 60:.1f} min); wrote {written} copies to "
                  f"{out} ({total / 60:.1f} min in all)", highlight=False)
    console.print(f"train with them: method=iqaga (labelled) or method=daprh (unlabelled); "
                  f"their `generated` option finds {out.name}/ when it is beside pytorch/", highlight=False)


def styles(
    data: Annotated[Path, typer.Option(help="The site's data folder (e.g. holding pytorch/).")],
    out: Annotated[Path, typer.Option(help="The .npz message to hand to the coordinator.")],
    min_images: Annotated[int, typer.Option(help="Cameras with fewer training images are not shared.")] = 50,
    dataset: Annotated[str, typer.Option(help="Reader of the site folder.")] = "fedreid",
    size: Annotated[str, typer.Option(help="Image size HxW the spectra are taken at.")] = "64x32",
    band: Annotated[str, typer.Option(help="Frequencies kept, cycles per height x width (4x2 = a 9x5 window).")] = "4x2",
) -> None:
    """Write this site's per-camera style aggregates (mean low-frequency amplitude spectra
    over at least --min-images images each; no image, no phase) and list exactly what is in it."""
    from fedreid.augment.style import save_style_message, site_style_message

    shape, bands = _size(size), _size(band)
    try:
        _, store = _train_split(data, dataset, shape)
        message = site_style_message(store.images, store.camids, min_images, bands)
    except (DataError, ValueError) as exc:
        fail(str(exc), code=1)
    table = Table("key", "shape", "values", title=f"style message of {data.resolve().name}")
    for key, value in message.items():
        table.add_row(key, str(tuple(value.shape)), str(value.size))
    console.print(table)
    shared = {int(k[3:].split(".")[0]) for k in message}
    withheld = sorted({int(c) for c in store.camids} - shared)
    if withheld:
        console.print(f"not shared (fewer than {min_images} images): cameras {withheld}", highlight=False)
    if not message:
        fail(f"no camera has {min_images} training images; nothing to share", code=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_style_message(out, message)
    console.print(f"wrote {out}", highlight=False)
