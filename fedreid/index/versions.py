"""Version folders and the order of writes that makes a switch atomic.

A writer (build or upgrade) holds ``root/write.lock`` and then:
1. writes the new version's files into ``versions/v<id>.partial/``;
2. fsyncs every file and the folder, renames it to ``versions/v<id>`` and fsyncs ``versions/``;
3. commits one sqlite transaction that adds the version's rows and points ``current`` at it.

A crash before 3 leaves the previous version current and intact; what it left behind (a
``.partial`` folder, or a complete folder no row names) is removed by the next writer. The
lock is an ``flock``, which the kernel drops when its process dies, so a killed writer never
blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

VERSIONS_DIR = "versions"
LOCK_FILE = "write.lock"
PARTIAL_SUFFIX = ".partial"


def version_dir(root: Path, version_id: int) -> Path:
    return root / VERSIONS_DIR / f"v{version_id:06d}"


@contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Exclusive right to add or remove versions under ``root``; fails at once if taken."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{root}: another build or upgrade is writing this index; wait for it to finish "
                "(the lock is released when that process ends, even if it crashes)"
            ) from None
        yield
    finally:
        os.close(fd)  # closing releases the flock


def write_version_dir(root: Path, version_id: int, write: Callable[[Path], None]) -> Path:
    """Run ``write(folder)`` into a ``.partial`` folder, make it durable, then rename it into
    place. The caller commits the version's rows afterwards (step 3 above)."""
    final = version_dir(root, version_id)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    if final.exists():
        raise ValueError(f"{final} already exists; remove_orphans() must run before a new version")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    write(partial)
    for path in partial.iterdir():
        _fsync(path)
    _fsync(partial)
    os.rename(partial, final)
    _fsync(final.parent)
    return final


def remove_orphans(root: Path, known: set[int]) -> list[Path]:
    """Delete ``.partial`` folders and version folders with no row (a crashed writer's
    leftovers, or versions just deleted from the database); returns what was removed."""
    base = root / VERSIONS_DIR
    if not base.is_dir():
        return []
    removed = []
    for path in sorted(base.iterdir()):
        name = path.name
        number = name[1:] if name.startswith("v") else ""
        if name.endswith(PARTIAL_SUFFIX) or not number.isdigit() or int(number) not in known:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
