"""`fedreid data generate`: people described by prompts, rendered into one FedReID-layout site
(DPPP's GenePerson stage without diffusion weights: the synthetic renderer draws them)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.common import console, fail
from fedreid.data.synth import DEFAULT_HELD_OUT


def _size(size: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        fail(f"--size {size!r} is not HxW; write e.g. --size 128x64")
    return h, w


def summary_table(summary: dict, held_sites: dict[str, list[int]]) -> Table:
    """What was written: counts per split, each camera's default style, the held-out styles."""
    table = Table(title=f"{summary['site']}: {summary['num_cameras']} cameras, seed {summary['seed']}")
    table.add_column("split")
    table.add_column("identities", justify="right")
    table.add_column("images", justify="right")
    for split, row in summary["counts"].items():
        table.add_row(split, str(row["ids"]), str(row["images"]))
    for cam in summary["cameras"]:
        style = cam["style"]
        table.add_row(f"camera {cam['camid']}", "", f"{style['light']} {style['cast']} light, {style['background']}")
    held = ", ".join(summary["held_out_styles"]) or "none"
    unseen = ", ".join(f"{site} (cameras {', '.join(map(str, cams))})" for site, cams in held_sites.items())
    table.caption = f"held-out styles: {held}; synthetic-8 cameras with them: {unseen or 'none'}"
    return table


def generate(
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Text file, one prompt (identity) per line; '#' starts a comment.")] = None,
    random: Annotated[int | None, typer.Option("--random", help="Sample this many prompts instead of reading a file.")] = None,
    out: Annotated[Path, typer.Option(help="Site folder to write (pytorch/ and meta.json inside).")] = Path("data/generated"),
    seed: Annotated[int, typer.Option(help="Random seed; same prompts and seed give identical files.")] = 0,
    size: Annotated[str, typer.Option(help="Image size HxW.")] = "128x64",
    images_per_identity: Annotated[int, typer.Option(help="Pictures per identity, spread over the cameras.")] = 8,
    cameras: Annotated[int, typer.Option(help="Cameras (each with its own default style).")] = 4,
    test_fraction: Annotated[float, typer.Option(help="Share of identities in query/gallery.")] = 0.25,
    hold_out: Annotated[str, typer.Option(help="Comma-separated style words never rendered ('' for none).")] = ",".join(DEFAULT_HELD_OUT),
    workers: Annotated[int, typer.Option(help="Processes used to render.")] = 2,
) -> None:
    """Render identities from prompts (appearance, light, views, background) as one site."""
    from fedreid.data.synth import (
        generate_from_prompts,
        held_out_sites,
        parse_prompts,
        random_prompts,
    )

    if (prompts is None) == (random is None):
        fail("give exactly one of --prompts FILE and --random N")
    held = [w for w in hold_out.split(",") if w]
    started = time.perf_counter()
    try:
        people = parse_prompts(prompts) if prompts is not None else random_prompts(random, seed, exclude_styles=held)
        columns = (TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("render", total=None)
            summary = generate_from_prompts(
                people, out, seed=seed, size=_size(size), images_per_identity=images_per_identity,
                cameras=cameras, test_fraction=test_fraction, exclude_styles=held, workers=workers,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except ValueError as exc:
        fail(str(exc))
    console.print(summary_table(summary, held_out_sites(held)))
    console.print(f"wrote {out} in {time.perf_counter() - started:.1f} s")
