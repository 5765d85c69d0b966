"""Central differential privacy for sparse, weighted replies: client clipping, server noise.

Flower's ``DifferentialPrivacyClientSideFixedClipping`` wrapper needs one dense ArrayRecord
per reply and FedAvg's uniform aggregate; FedKLPR's replies are sparse-encoded and averaged
with KLPWA weights and SAS, so the same mechanism (McMahan et al. 2018, "DP-FedAvg") is
applied here, with the flat clipping of Flower's ``compute_clip_model_update`` (this package
does not import Flower):

- a site clips its update against the model it downloaded, ``θ = b + clip(θ − b, C)``,
  ``b`` = the download restricted to the site's mask, over every float tensor
  (:func:`clip_to_download`);
- the server adds Gaussian noise to the aggregate. One site moves element ``j`` of the
  aggregate by its effective weight ``e_kj = a_k m_kj / Σ_i a_i m_ij`` (SAS) times its
  update, so the L2 sensitivity of the whole model is at most ``C · max_k e_kj`` element by
  element; noise of standard deviation ``z · C · s_j``, ``s_j = max_k e_kj``, gives every
  element the Gaussian mechanism with multiplier ``z`` (:class:`NoiseScale`). With uniform
  weights and no pruning this is Flower's ``z · C / n``.

BN running statistics are not privatised: with DP on they stay on each site, and a reply
carries the downloaded ones back unchanged (:data:`LOCAL_SUFFIXES`), so they say nothing of the
site and get no noise. What else it does not cover, stated in docs/choices.md: the aggregation weights (KLAW, PRAW) and
the pruning masks are computed from local data and sent as they are; the (ε, δ) figure
(:mod:`fedreid.fl.privacy_ledger`: ``dp_accounting``'s RDP or PLD accountant, amplified by
subsampling when a round samples fewer sites than all) is a guarantee for the model values
given those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedreid.fl.privacy_ledger import dp_epsilon

LOCAL_SUFFIXES = ("running_mean", "running_var")  # BN statistics: kept on the site under DP


def privatised_keys(state: Mapping[str, np.ndarray]) -> list[str]:
    """The float tensors whose values a site releases: all but the BN running statistics."""
    return [k for k, v in state.items() if np.asarray(v).dtype.kind == "f" and not k.endswith(LOCAL_SUFFIXES)]


def clip_to_download(
    state: Mapping[str, np.ndarray],
    download: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    clipping_norm: float,
) -> tuple[dict[str, np.ndarray], float]:
    """``(state with its float update clipped to norm C, the update's norm before)``.

    The base is the download times the site's current mask, so pruning (a weight set to 0)
    is part of the update and pruned elements stay exactly 0 after clipping. BN running
    statistics are replaced by the downloaded ones (the site keeps its own).
    """
    if clipping_norm <= 0:
        raise ValueError(f"dp.clipping_norm must be > 0, got {clipping_norm}")
    keys = privatised_keys(state)
    local = [k for k in state if k.endswith(LOCAL_SUFFIXES)]
    missing = [k for k in keys + local if k not in download]
    if missing:
        raise ValueError(f"the download lacks {missing[:3]}: cannot clip the update against it")
    base = {k: np.asarray(download[k], dtype=np.float32) * masks[k] if k in masks
            else np.asarray(download[k], dtype=np.float32) for k in keys}
    update = {k: np.asarray(state[k], dtype=np.float32) - base[k] for k in keys}
    norm = float(np.sqrt(sum(float(np.vdot(u, u)) for u in update.values())))
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    out = dict(state)
    for k in local:
        out[k] = np.asarray(download[k]).astype(np.asarray(state[k]).dtype, copy=False)
    for k in keys:
        out[k] = (base[k] + scale * update[k]).astype(np.asarray(state[k]).dtype, copy=False)
    return out, norm


class NoiseScale:
    """Per element, the largest effective weight of one site in the aggregate (``s_j``)."""

    def __init__(self, global_state: Mapping[str, np.ndarray], mask_aware: bool = True):
        self.keys = privatised_keys(global_state)
        self.shapes = {k: np.asarray(global_state[k]).shape for k in self.keys}
        self.mask_aware = mask_aware
        self._sum = {k: np.zeros(self.shapes[k], np.float32) for k in self.keys}
        self._max = {k: np.zeros(self.shapes[k], np.float32) for k in self.keys}

    def add(self, weight: float, masks: Mapping[str, np.ndarray]) -> None:
        """One accepted site: its aggregation weight and its masks (missing = kept all)."""
        w = np.float32(weight)
        for k in self.keys:
            contrib = masks[k] * w if (self.mask_aware and k in masks) else w  # a scalar broadcasts
            self._sum[k] += contrib
            np.maximum(self._max[k], contrib, out=self._max[k])

    def scales(self) -> dict[str, np.ndarray]:
        """``s_j`` per float tensor: 0 where no site kept the element (it is not released)."""
        out = {}
        for k in self.keys:
            s = np.zeros(self.shapes[k], np.float32)
            np.divide(self._max[k], self._sum[k], out=s, where=self._sum[k] > 0)
            out[k] = s
        return out


def add_noise(
    state: Mapping[str, np.ndarray],
    scales: Mapping[str, np.ndarray],
    noise_multiplier: float,
    clipping_norm: float,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], float]:
    """``(state + N(0, (z C s_j)^2) per element, the largest standard deviation used)``."""
    out = dict(state)
    top = 0.0
    for k, s in scales.items():
        std = (noise_multiplier * clipping_norm) * s
        top = max(top, float(std.max(initial=0.0)))
        noisy = np.asarray(state[k], dtype=np.float32) + rng.standard_normal(s.shape, dtype=np.float32) * std
        out[k] = noisy.astype(np.asarray(state[k]).dtype, copy=False)
    return out, top


def gaussian_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """ε after ``releases`` rounds in which every site took part (no sampling amplification),
    from ``dp_accounting``'s RDP accountant (:func:`fedreid.fl.privacy_ledger.dp_epsilon`;
    a :class:`~fedreid.fl.privacy_ledger.PrivacyLedger` also credits rounds that sampled
    fewer sites). ``inf`` when z = 0."""
    if releases < 0:
        raise ValueError(f"releases must be >= 0, got {releases}")
    return dp_epsilon(noise_multiplier, delta, [1.0] * releases)

@dataclass(frozen=True)
class GaussianNoise:
    """The server's noise for one run: multiplier z, clipping norm C, and its generator."""

    noise_multiplier: float
    clipping_norm: float
    rng: np.random.Generator


def noise_in_place(values: np.ndarray, scale: np.ndarray, noise: GaussianNoise) -> float:
    """``values += N(0, (z C s_j)^2)`` per element, drawn exactly as :func:`add_noise` draws
    for one tensor (same generator calls, same float32 arithmetic); returns the largest std."""
    std = (noise.noise_multiplier * noise.clipping_norm) * scale
    values += noise.rng.standard_normal(scale.shape, dtype=np.float32) * std
    return float(std.max(initial=0.0))
