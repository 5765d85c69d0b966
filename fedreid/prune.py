"""Unstructured magnitude pruning with persistent masks (FedKLPR's pruning step).

Which tensors are pruned (``prunable_names``): floating tensors whose name ends in
``weight`` and that have at least two dimensions — conv kernels (ndim >= 3, kind ``"conv"``)
and linear matrices (ndim == 2, kind ``"linear"``). BatchNorm/BNNeck affine parameters and
biases are 1-D and buffers are either 1-D or integer, so they are never pruned: pruning a BN
scale removes a whole channel, which is structured pruning and outside the method. The rule
is shape-based on purpose: it gives the same answer on an ``nn.Module`` and on a state dict
that arrived over the wire. The 1x1 ``downsample`` convolutions are conv kernels and are
pruned by default, as in Sub-FedAvg and LotteryFL; pass ``exclude=("downsample",)`` to keep
them dense. A private classifier head should not be in the shared state at all; if it is,
exclude it by name.

Schedule (``magnitude_prune``): each call removes ``step`` of the *currently remaining*
weights (Sub-FedAvg/LotteryFL style "p % of what is left"), smallest ``|w|`` first, and never
lets the overall sparsity of the prunable weights exceed ``target``. The number pruned is
``min(floor(step * remaining), floor(target * total) - already_pruned)``, exactly.
``scope="global"`` (default, FedKLPR's) takes the smallest weights across all tensors;
``scope="layer"`` (the baselines' choice, keeps thin layers alive) gives every tensor its
proportional share of that number (floor or ceil of its exact share, largest remainder
first), each taken by magnitude within the tensor. When a site prunes is
:func:`pruning_due`, a pure function of the round, the schedule and the masks (the target
counts as reached where magnitude pruning stops). Ties at a threshold are broken by position (tensor
order, then row-major index), so results are deterministic.

Training with masks: wrap the model's masked parameters once per round
(``MaskedParameters(model, masks)``) and call ``.reapply()`` after every ``optimizer.step()``.
Re-masking is what keeps pruned weights exactly zero: Adam/AdamW and SGD momentum carry state
from before pruning and would otherwise move them even with a zero gradient. Gradients are not
masked: every optimiser here updates each element from that element's own gradient and state,
so a pruned position's gradient never changes a kept weight (tests/test_prune.py checks it),
and re-zeroing after the step is all that is needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

StateLike = nn.Module | Mapping[str, torch.Tensor]

_KINDS = ("conv", "linear")
SCOPES = ("global", "layer")


def _tensors(model_or_state: StateLike) -> dict[str, torch.Tensor]:
    if isinstance(model_or_state, nn.Module):
        # Only parameters can be pruned; named_parameters is much cheaper than state_dict,
        # which matters because reapply_masks runs after every optimizer step.
        return dict(model_or_state.named_parameters())
    if isinstance(model_or_state, Mapping):
        return dict(model_or_state)
    raise ValueError(
        f"model_or_state: expected an nn.Module or a mapping name -> tensor, got "
        f"{type(model_or_state).__name__}"
    )


def _kind(name: str, tensor: torch.Tensor) -> str | None:
    if not name.endswith("weight") or not tensor.is_floating_point():
        return None
    if tensor.dim() == 2:
        return "linear"
    if tensor.dim() >= 3:
        return "conv"
    return None


def prunable_names(
    model_or_state: StateLike,
    include: Iterable[str] = _KINDS,
    exclude: Iterable[str] = (),
) -> list[str]:
    """Names of the weight tensors to prune, in state-dict order.

    ``include`` picks kinds among ``"conv"`` (ndim >= 3) and ``"linear"`` (ndim == 2);
    ``exclude`` drops every name containing one of the given substrings.
    """
    include = tuple(include)
    bad = [k for k in include if k not in _KINDS]
    if bad:
        raise ValueError(f"include: unknown kind(s) {bad}; use a subset of {_KINDS}")
    exclude = tuple(exclude)
    return [
        name
        for name, t in _tensors(model_or_state).items()
        if _kind(name, t) in include and not any(p in name for p in exclude)
    ]


def init_masks(
    model_or_state: StateLike, names: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """All-True boolean masks (nothing pruned yet) for ``names`` (default: prunable_names)."""
    tensors = _tensors(model_or_state)
    names = prunable_names(tensors) if names is None else list(names)
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(f"names: {missing} are not in the model/state; check the spelling")
    return {n: torch.ones_like(tensors[n], dtype=torch.bool) for n in names}


def sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of masked elements that are pruned (0.0 for no masks)."""
    total = sum(m.numel() for m in masks.values())
    if total == 0:
        return 0.0
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total


def _checked(tensors: dict[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    for name, m in masks.items():
        if name not in tensors:
            raise ValueError(f"masks: {name!r} is not in the model/state; rebuild the masks")
        if m.dtype != torch.bool or m.shape != tensors[name].shape:
            raise ValueError(
                f"masks[{name!r}]: expected a bool tensor of shape "
                f"{tuple(tensors[name].shape)}, got {m.dtype} {tuple(m.shape)}"
            )


def _smallest_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """Bool selector of exactly ``k`` smallest entries of 1-D ``values`` (ties: lowest index)."""
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if k >= values.numel():
        return torch.ones_like(values, dtype=torch.bool)
    thr = values.kthvalue(k).values
    below = values < thr
    eq = values == thr
    need = k - int(below.sum())
    return below | (eq & (eq.cumsum(0) <= need))


def _apportion(total: int, sizes: list[int]) -> list[int]:
    """Split ``total`` over layers in proportion to ``sizes`` (largest remainder, exact).

    Each layer gets floor or ceil of its exact share, and the shares add up to ``total``,
    so the layer-wise schedule reaches the target exactly instead of stalling on rounding.
    """
    whole = sum(sizes)
    if whole == 0:
        return [0] * len(sizes)
    base = [total * s // whole for s in sizes]
    order = sorted(range(len(sizes)), key=lambda i: -((total * sizes[i]) % whole))
    for i in order[: total - sum(base)]:
        base[i] += 1
    return base


def _floor(x: float) -> int:
    # 0.29 * 100 == 28.999999999999996 in floating point; the epsilon keeps it 29.
    return math.floor(x + 1e-9)


def magnitude_prune(
    model_or_state: StateLike,
    masks: Mapping[str, torch.Tensor],
    step: float,
    target: float,
    scope: str = "global",
) -> dict[str, torch.Tensor]:
    """New masks with ``step`` of the remaining weights pruned by |w|, capped at ``target``.

    The overall sparsity (over all masked elements) after the call is at most ``target``.
    The input masks are not modified; already-pruned elements stay pruned.
    """
    if not 0.0 <= step <= 1.0:
        raise ValueError(f"step: {step} is outside [0, 1]; it is a fraction of remaining weights")
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target: {target} is outside [0, 1]; it is an overall sparsity")
    if scope not in SCOPES:
        raise ValueError(f"scope: {scope!r} is not one of {SCOPES}")
    tensors = _tensors(model_or_state)
    _checked(tensors, masks)
    new = {n: m.clone() for n, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    alive = sum(int(m.sum()) for m in masks.values())
    cap = _floor(target * total) - (total - alive)
    if cap <= 0 or alive == 0 or step == 0.0:
        return new

    alive_abs: dict[str, torch.Tensor] = {}
    for name, m in masks.items():
        vals = tensors[name].detach()[m].abs()
        if not torch.isfinite(vals).all():
            raise ValueError(f"{name}: non-finite weights; cannot rank them by magnitude")
        alive_abs[name] = vals

    k_total = min(_floor(step * alive), cap)
    if scope == "global":
        flat = torch.cat([v.float().reshape(-1) for v in alive_abs.values()])
        parts = torch.split(_smallest_k(flat, k_total), [v.numel() for v in alive_abs.values()])
        selections = dict(zip(alive_abs, parts, strict=True))
    else:
        quotas = _apportion(k_total, [v.numel() for v in alive_abs.values()])
        selections = {
            n: _smallest_k(v, k) for (n, v), k in zip(alive_abs.items(), quotas, strict=True)
        }

    for name, sel in selections.items():
        if bool(sel.any()):
            flat_mask = new[name].view(-1)
            alive_idx = masks[name].reshape(-1).nonzero().squeeze(1)
            flat_mask[alive_idx[sel]] = False
    return new


def target_reached(masks: Mapping[str, torch.Tensor], target: float) -> bool:
    """Whether :func:`magnitude_prune` would prune nothing more: it stops at
    ``floor(target × elements)`` pruned, so the sparsity it reaches is usually a hair under
    ``target`` (0.29999995 for 0.3), which must not count as a step still to take."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return total - kept >= _floor(target * total)


def pruning_due(server_round: int, *, start_round: int, every: int, masks: Mapping[str, torch.Tensor],
                target: float, allowed: bool = True) -> bool:
    """Whether a site takes a pruning step after training ``server_round``.

    Steps happen every ``every`` rounds from ``start_round`` until ``masks`` reach ``target``
    (:func:`target_reached`) and while nothing (cross-round recovery) forbids them.
    """
    if every < 1:
        raise ValueError(f"every={every}: prune every N >= 1 rounds")
    on_schedule = server_round >= start_round and (server_round - start_round) % every == 0
    return allowed and on_schedule and not target_reached(masks, target)


def apply_masks(model_or_state: StateLike, masks: Mapping[str, torch.Tensor]) -> None:
    """Set pruned weights to exactly zero in place.

    Multiplies by the mask, which is several times faster than ``masked_fill_`` on CPU; a
    pruned weight that was negative becomes -0.0, which equals 0 and is never sent (the
    codec only ships kept values and decodes pruned positions as +0.0).
    """
    tensors = _tensors(model_or_state)
    _checked(tensors, masks)
    with torch.no_grad():
        for name, m in masks.items():
            tensors[name].mul_(m)


class MaskedParameters:
    """A model's pruned parameters and their masks, re-zeroed in one batched multiply.

    The masks are converted once to the parameters' dtype and device, so the per-step cost
    is one fused ``_foreach_mul_`` over the masked tensors instead of a bool-to-float cast
    and a kernel launch per tensor.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        missing = [n for n in masks if n not in params]
        if missing:
            raise ValueError(f"masks: {missing[:3]} are not parameters of the model; rebuild the masks")
        _checked(params, masks)
        self.params = [params[n] for n in masks]
        self.masks = [m.to(device=params[n].device, dtype=params[n].dtype) for n, m in masks.items()]

    @torch.no_grad()
    def reapply(self) -> None:
        """Pruned weights back to exactly 0 (call right after ``optimizer.step()``)."""
        if self.params:
            torch._foreach_mul_(self.params, self.masks)
