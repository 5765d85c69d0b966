"""Where a run's data comes from: a real folder, or synthetic-8 generated on first use."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fedreid.data.records import DataError

SYNTHETIC_MARKER = "synthetic-8.json"


def ensure_data_root(root: str | Path, *, sites: list[str], synth_scale: float, synth_seed: int,
                     generate: bool = True) -> Path:
    """Return ``root``; generate synthetic-8 there if it is absent and ``generate`` allows.

    A folder that exists is used as it is (real data in the FedReID layout, or an earlier
    generation). Each site must be a sub-folder ``root/<site>``; generated site kinds named
    in ``sites`` (``aerial``, ``ir-video``, ``clothes``) are rendered beside the eight, also
    into an earlier generation that lacks them. synthetic-8 is always
    rendered at its native 128×64; a run's input size only resizes on loading, so one
    generated folder serves every experiment.
    """
    path = Path(root).expanduser().resolve()
    if not path.exists():
        if not generate:
            raise DataError(
                f"data root {path} does not exist; pass --data DIR with one folder per site "
                "(FedReID layout) or let fedreid generate synthetic-8 there"
            )
        from fedreid.data.synth import generate_synthetic8
        from fedreid.data.synth.kinds import KINDS

        generate_synthetic8(path, scale=synth_scale, seed=synth_seed, kinds=[s for s in sites if s in KINDS])
    missing = [s for s in sites if not (path / s).is_dir()]
    if generate and missing and (path / SYNTHETIC_MARKER).is_file():
        from fedreid.data.synth.kinds import KINDS

        kinds = [s for s in missing if s in KINDS]
        if kinds:
            add_generated_kinds(path, kinds, scale=synth_scale, seed=synth_seed)
            missing = [s for s in missing if s not in kinds]
    if missing:
        have = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise DataError(
            f"data root {path} has no folder for site(s) {', '.join(missing)} (found: "
            f"{', '.join(have) or 'nothing'}); set data.sites to the folders you have (generated "
            f"site kinds: `fedreid data synth --kinds KIND --sites '' --out {path}`)"
        )
    return path


def add_generated_kinds(root: Path, kinds: list[str], *, scale: float, seed: int,
                        size: tuple[int, int] = (128, 64)) -> None:
    """Render generated site ``kinds`` into the existing folder ``root``, leaving its other
    sites and its manifest as they are (the kinds are rendered aside, then moved in)."""
    from fedreid.data.synth import generate_synthetic8

    with tempfile.TemporaryDirectory(dir=root, prefix=".kinds-") as tmp:
        generate_synthetic8(tmp, sites=[], kinds=kinds, scale=scale, seed=seed, size=size)
        for kind in kinds:
            shutil.move(Path(tmp) / kind, root / kind)
