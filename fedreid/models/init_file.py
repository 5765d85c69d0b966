"""A federation's starting global model on disk: what `fedreid pretrain` writes and
``model.init`` reads.

The file is a torch dict ``{"model": state_dict, "method": name, "arch": backbone,
"image_size": [H, W], "vit_depth": int, "source": text}``. Only the keys the run's method
shares are taken from it; each must be there with the run model's shape, otherwise the error
names the file, what it was trained as and what the run builds, so neither side has to guess.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch


def save_init_file(path: str | os.PathLike, state: Mapping[str, torch.Tensor], *, method: str, arch: str,
                   image_size: tuple[int, int], vit_depth: int, source: str) -> Path:
    """Write a model's whole ``state`` and how it was built; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {k: v.detach().cpu() for k, v in state.items()},
                "method": method, "arch": arch, "image_size": list(image_size),
                "vit_depth": vit_depth, "source": source}, path)
    return path


def _built_as(ckpt: Mapping) -> str:
    size = ckpt.get("image_size")
    return (f"method {ckpt.get('method', '?')}, model.arch={ckpt.get('arch', '?')}, "
            f"model.vit_depth={ckpt.get('vit_depth', '?')}, size {'x'.join(map(str, size)) if size else '?'}")


def load_init_state(path: str | os.PathLike, expected: Mapping[str, np.ndarray], run: str) -> dict[str, np.ndarray]:
    """The values of ``expected``'s keys from the file at ``path``, in ``expected``'s dtypes.

    ``run`` describes the run's model (method, arch, size) for the error messages.
    """
    path = Path(path).expanduser()
    fix = "write it with `fedreid pretrain --generated DIR --out FILE`, or leave model.init empty"
    if not path.is_file():
        raise FileNotFoundError(f"model.init={path}: no such file; {fix}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike
        raise ValueError(f"model.init={path}: not a readable torch file ({exc}); {fix}") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"model.init={path}: no 'model' state dict inside; {fix}")
    state = ckpt["model"]
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(
            f"model.init={path} ({_built_as(ckpt)}) lacks {len(missing)} of the {len(expected)} "
            f"shared keys of this run's model ({run}), e.g. {missing[:3]}; pretrain with the run's "
            "model.arch and model.vit_depth (the method may differ), or change the run to match the file"
        )
    wrong = [(k, tuple(state[k].shape), v.shape) for k, v in expected.items() if tuple(state[k].shape) != v.shape]
    if wrong:
        key, got, want = wrong[0]
        raise ValueError(
            f"model.init={path} ({_built_as(ckpt)}) does not fit this run's model ({run}): "
            f"{len(wrong)} key(s) differ in shape, e.g. {key} is {got} in the file and {want} in the "
            "run; use the same model.arch, model.vit_depth and data.height/width as the pretraining"
        )
    return {k: state[k].detach().cpu().numpy().astype(v.dtype, copy=True) for k, v in expected.items()}
