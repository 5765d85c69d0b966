"""The gallery update of an index upgrade: stored features mapped into the new model's space
through a transfer, with no image (Bi-C2R's re-indexing-free gallery update).

    G_new = norm( α · norm(T(norm(G_old))) + (1 − α) · norm(G_old) )

α = 1 is the pure transfer. α < 1 keeps part of the stored feature, as Bi-C2R's dynamic
feature fusion does after fusing the model's parameters with the same α (θ ← α·θ_new +
(1−α)·θ_old, α from the LSTKC affinity rule): it only makes sense when the old and new spaces
have the same width, and is refused otherwise. The outer normalisation (not in the reference
code) keeps every stored vector unit-length, so inner-product search stays cosine search.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


@torch.inference_mode()
def upgrade_features(
    old: np.ndarray | torch.Tensor,
    transfer: Callable[[torch.Tensor], torch.Tensor],
    alpha: float = 1.0,
    batch_size: int = 8192,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``old`` (N×D_old) → float32 N×D_new, in batches of ``batch_size`` rows.

    ``progress(rows_done)`` is called after each batch. Errors name the bad value: α outside
    [0, 1], α < 1 across a width change, a transfer returning the wrong shape or non-finite
    values.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: the fusion weight must lie in [0, 1]")
    g = torch.as_tensor(old)
    if g.ndim != 2:
        raise ValueError(f"stored features must be N×D, got shape {tuple(g.shape)}")
    n, d_old = g.shape
    out: np.ndarray | None = None
    for start in range(0, n, batch_size):
        x = F.normalize(g[start : start + batch_size].float(), dim=1)
        try:
            y = transfer(x)
        except (RuntimeError, AssertionError) as err:  # shape guards of exported programs
            raise ValueError(
                f"the transfer failed on {d_old}-d stored features ({str(err).splitlines()[0]}); "
                "fix: use a transfer whose input width is the stored features' width"
            ) from err
        if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != x.shape[0]:
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"the transfer must return [{x.shape[0]}, D_new] for that batch, got {shape}")
        if not torch.isfinite(y).all():
            raise ValueError("the transfer returned NaN or infinite values; check the transfer network")
        if alpha < 1.0 and y.shape[1] != d_old:
            raise ValueError(
                f"alpha={alpha} mixes old and transferred features, which needs equal widths, but "
                f"the transfer maps {d_old}-d to {y.shape[1]}-d; fix: use alpha=1"
            )
        fused = F.normalize(y.float(), dim=1)
        if alpha < 1.0:
            fused = alpha * fused + (1.0 - alpha) * x
        if out is None:
            out = np.empty((n, fused.shape[1]), dtype=np.float32)
        out[start : start + len(fused)] = F.normalize(fused, dim=1).numpy()
        if progress is not None:
            progress(min(n, start + batch_size))
    if out is None:
        raise ValueError("no stored features to upgrade (the version is empty)")
    return out
