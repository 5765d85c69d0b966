"""How fast the FedReID-layout reader lists a 20k-image site (the target is well under 1 s).

Writes a throw-away site in the synthetic generator's form (Market-style names, meta.json with
per-image entries, identities and cameras), then times, side by side on the warm file cache:
a bare ``os.scandir`` walk (the floor), the reader without meta.json, the reader with it, and
one full image validation (decode + hash every file, what ``fedreid data check`` does).

    .venv/bin/python -m sims.bench.reader_speed [--images 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.table import Table

from fedreid.data.readers import load_dataset

IMAGES_PER_ID = 28
SPLIT_SHARES = (("train_all", 0.6), ("query", 0.1), ("gallery", 0.3))


def _tiny_jpeg(n: int) -> bytes:
    """A 16x8 JPEG whose colour (steps of 4, quality 100) no other file shares."""
    buffer = io.BytesIO()
    colour = (n * 4 % 256, n // 64 * 4 % 256, n // 4096 * 4 % 256)
    Image.new("RGB", (8, 16), colour).save(buffer, "JPEG", quality=100)
    return buffer.getvalue()


def write_site(site: Path, n_images: int) -> None:
    """A FedReID-layout site of ``n_images`` files plus a generator-style meta.json."""
    images: dict[str, dict] = {}
    identities: dict[str, dict] = {}
    n, pid = 0, 0
    for split, share in SPLIT_SHARES:
        quota = round(n_images * share)
        while quota > 0:
            pid += 1
            identities[str(pid)] = {"role": split, "hat": pid % 2 == 0, "top_rgb": [0.1, 0.2, 0.3]}
            folder = site / "pytorch" / split / f"{pid:04d}"
            folder.mkdir(parents=True)
            for i in range(min(IMAGES_PER_ID, quota)):
                name = f"{pid:04d}_c{i % 6 + 1}s1_{i:06d}_00.jpg"
                (folder / name).write_bytes(_tiny_jpeg(n))
                images[f"{split}/{pid:04d}/{name}"] = {
                    "pid": pid,
                    "camid": i % 6,
                    "viewpoint": "front",
                    "angle": 10,
                    "outfit": 0,
                    "occluded": False,
                }
                n += 1
                quota -= 1
    cameras = [
        {"camid": c, "height_m": 3.0, "pitch_deg": 15.0, "distance_m": 8.0} for c in range(6)
    ]
    meta = {
        "video": False,
        "num_cameras": 6,
        "cameras": cameras,
        "identities": identities,
        "images": images,
    }
    (site / "meta.json").write_text(json.dumps(meta, separators=(",", ":")))


def scandir_floor(site: Path) -> int:
    """List every file name and nothing else: the least any reader must do."""
    count = 0
    for split, _ in SPLIT_SHARES:
        with os.scandir(site / "pytorch" / split) as pid_dirs:
            for pid_dir in pid_dirs:
                with os.scandir(pid_dir.path) as files:
                    count += sum(1 for _ in files)
    return count


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="reader_speed_"))
    try:
        with_meta, without_meta = work / "with_meta", work / "without_meta"
        start = time.perf_counter()
        write_site(with_meta, args.images)
        shutil.copytree(with_meta / "pytorch", without_meta / "pytorch")
        setup = time.perf_counter() - start
        splits = load_dataset(with_meta, "fedreid")
        n = len(splits.train) + len(splits.query) + len(splits.gallery)
        assert n == args.images == scandir_floor(with_meta), (n, args.images)
        floor = median_seconds(lambda: scandir_floor(with_meta), args.repeats)
        rows = [
            ("os.scandir walk (floor)", floor),
            (
                "read fedreid, no meta.json",
                median_seconds(lambda: load_dataset(without_meta, "fedreid"), args.repeats),
            ),
            (
                "read fedreid, with meta.json",
                median_seconds(lambda: load_dataset(with_meta, "fedreid"), args.repeats),
            ),
            (
                "read + validate_images (1 run)",
                median_seconds(lambda: load_dataset(with_meta, "fedreid", validate_images=True), 1),
            ),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = Table(
        title=f"FedReID-layout reader, {n} images (median of {args.repeats}; setup {setup:.1f} s)"
    )
    for column in ("case", "seconds", "µs / image", "× floor"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for case, seconds in rows:
        table.add_row(case, f"{seconds:.3f}", f"{seconds / n * 1e6:.1f}", f"{seconds / floor:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
