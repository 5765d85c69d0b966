"""Device choice and mixed precision: sites use a GPU when they have one, CPU otherwise."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

_DEVICE = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def resolve_device(spec: str = "auto") -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> device."""
    m = _DEVICE.fullmatch(spec.strip().lower()) if isinstance(spec, str) else None
    if m is None:
        raise ValueError(f"device={spec!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    name = m.group(0)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device={spec!r}: CUDA is not available here; use device=auto or cpu")
    index = m.group(1)
    if index is not None and int(index) >= torch.cuda.device_count():
        raise ValueError(
            f"device={spec!r}: only {torch.cuda.device_count()} CUDA device(s) "
            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )
    return torch.device(name)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it (no loss scaling needed), else fp16; None on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_context(device: torch.device, enabled: bool = True) -> AbstractContextManager:
    """AMP autocast on CUDA; a no-op on CPU, where autocast would mostly slow training down."""
    dtype = amp_dtype(device)
    if not enabled or dtype is None:
        return nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def make_grad_scaler(device: torch.device, enabled: bool = True) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 autocast (bf16 and fp32 need none).

    A disabled scaler passes ``scale``/``step``/``update`` straight through, so training code
    can always use it.
    """
    active = enabled and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda", enabled=active)


def to_channels_last(model: nn.Module, device: torch.device) -> nn.Module:
    """channels_last memory format on CUDA (faster convs with tensor cores); CPU unchanged."""
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model
