"""`fedreid data check`: read a data set with every image decoded, and summarise it.

``check_dataset`` returns plain JSON-ready numbers (the CLI prints them for ``--json``);
``render_check_report`` turns the same report into a rich renderable (the table from
``render_check_table``, then one line per warning) for ``Console.print``.
"""

from __future__ import annotations

import os
from statistics import median_low
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from fedreid.data.images import validate_images
from fedreid.data.readers import load_dataset

SPLITS = ("train", "query", "gallery")


def _size_stats(sizes: list[tuple[int, int]]) -> dict[str, list[int]]:
    """Per-dimension min / median / max as ``[height, width]``."""
    heights = [h for h, _ in sizes]
    widths = [w for _, w in sizes]
    return {
        "min": [min(heights), min(widths)],
        "median": [median_low(heights), median_low(widths)],
        "max": [max(heights), max(widths)],
    }


def check_dataset(root: str | os.PathLike, name: str, *, seed: int = 0) -> dict[str, Any]:
    """Read ``name`` at ``root`` (seeded split ``seed``), decode every image, and return the
    summary: per-split identities / cameras / images (/ tracklets), totals, image sizes over
    all images, warnings. Raises ``DataError`` on the first broken rule."""
    splits = load_dataset(root, name, seed=seed)
    sizes: list[tuple[int, int]] = []
    for split in SPLITS:
        sizes += validate_images(getattr(splits, split), split, video=splits.video)
    every = splits.train + splits.query + splits.gallery
    report = splits.summary()
    report["dataset"] = name
    report["seed"] = seed
    report["identities"] = len({s.pid for s in every})
    report["images"] = len(every)
    if splits.video:
        report["tracklets"] = len({(s.pid, s.camid, s.tracklet) for s in every})
    report["image_size"] = _size_stats(sizes)
    return report


def _hw(pair: list[int]) -> str:
    return f"{pair[0]}x{pair[1]}"


def render_check_table(report: dict[str, Any]) -> Table:
    """The check report's numbers: one row per split, then totals (cameras = the data set's
    camera count); image sizes and the warning count in the caption."""
    video = report["video"]
    table = Table(title=f"{report['dataset']} at {report['root']}", caption_justify="left")
    table.add_column("split")
    for column in ("identities", "cameras", "images") + (("tracklets",) if video else ()):
        table.add_column(column, justify="right")
    for split in SPLITS:
        stats = report[split]
        row = [split, str(stats["ids"]), str(stats["cams"]), str(stats["images"])]
        table.add_row(*row + ([str(stats["tracklets"])] if video else []))
    total = ["all", str(report["identities"]), str(report["num_cameras"]), str(report["images"])]
    table.add_row(*total + ([str(report["tracklets"])] if video else []), style="bold")
    size = report["image_size"]
    table.caption = (
        f"seed {report['seed']}, {'video' if video else 'images'}; HxW min {_hw(size['min'])}, "
        f"median {_hw(size['median'])}, max {_hw(size['max'])}; {len(report['warnings'])} warning(s)"
    )
    return table


def render_check_report(report: dict[str, Any]) -> Group:
    """The table followed by the warnings, one unwrapped line each (they name long paths)."""
    lines = [
        Text(f"warning: {line}", style="yellow", overflow="fold") for line in report["warnings"]
    ]
    return Group(render_check_table(report), *lines)
