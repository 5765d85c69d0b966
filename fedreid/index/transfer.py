"""Transfer functions (old feature space → new) as files a site can load without the code of
the method that trained them.

A transfer is saved as a ``torch.export`` program (``.pt2``) with a dynamic batch size, plus
its input and output widths in the archive's extra files; any method (Bi-C2R's T_on, a
linear map fitted by least squares, …) writes one with :func:`save_transfer`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

_META = "fedreid_transfer.json"


@dataclass(frozen=True)
class Transfer:
    """A callable ``[N, in_dim] → [N, out_dim]`` and the name recorded with upgraded versions."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    in_dim: int
    out_dim: int
    name: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def save_transfer(module: nn.Module, in_dim: int, path: str | Path) -> Path:
    """Export ``module`` (put in eval mode) for any batch size and write it to ``path``."""
    module.eval()
    example = torch.zeros(2, in_dim)
    with torch.no_grad():
        out = module(example)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        raise ValueError(
            f"a transfer must map [N, {in_dim}] to [N, D]; {type(module).__name__} returned "
            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
        )
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    path = Path(path)
    meta = {"in_dim": in_dim, "out_dim": int(out.shape[1])}
    torch.export.save(program, path, extra_files={_META: json.dumps(meta)})
    return path


def load_transfer(path: str | Path) -> Transfer:
    """A transfer written by :func:`save_transfer`; its name is the file name + content digest."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--transfer {path}: no such file; pass a .pt2 written by save_transfer")
    extra = {_META: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
        meta = json.loads(extra[_META])
        in_dim, out_dim = int(meta["in_dim"]), int(meta["out_dim"])
    except Exception as err:  # torch.export raises zip, unpickling and schema errors alike
        raise ValueError(
            f"--transfer {path}: not a transfer written by fedreid.index.save_transfer ({err}); "
            "fix: export the transfer network with save_transfer"
        ) from err
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return Transfer(program.module(), in_dim, out_dim, f"{path.name}@{digest}")
