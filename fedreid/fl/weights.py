"""Per-site aggregation weights: KLAW, PRAW, KLPWA, sample counts and FedCAPR's CDW.

Every function returns a float64 vector that sums to 1, one entry per site, in the order
given. The FedKLPR paper does not publish the formulas (research/fedklpr.md §1.2, §1.4), so
each open choice is a parameter; the defaults and why:

- KLAW sign, default ``"more_divergence_more_weight"``: the paper calls KLAW the
  "knowledge gained by a local model", and its direct predecessor (FedCAPR's / FedReID's
  cosine-distance weight, CDW) gives a site that moved further from the downloaded model a
  larger weight. The opposite reading ("stronger alignment with the global model") is
  ``"less_divergence_more_weight"``.
- Inverse form for that opposite sign, default ``"reciprocal"`` (``1 / (kl + eps)``): like
  the direct form it is scale-free (multiplying every KL by a constant, e.g. through the
  softmax temperature, leaves the weights unchanged). ``"exp"`` (``exp(-kl)``, computed as
  a softmax of ``-kl``) is bounded but depends on the KL's scale.
- PRAW form, default ``"ratio"`` (weight proportional to the pruned fraction): the paper
  prioritises sites "contributing compact, efficiently pruned models". ``"density"``
  (proportional to ``1 - ratio``) and ``"inverse_density"`` (``1 / (1 - ratio)``) are the
  other readings.
- Combination, default ``"convex"`` with ``beta = 0.5``: ``beta * KLAW + (1 - beta) * PRAW``.
  A product lets one zero factor erase a site for good: under ``"ratio"`` a site whose
  first pruning step was undone by CRR (ratio 0, pruning halted) would get zero weight in
  every later round. ``"product"`` (``KLAW * PRAW`` renormalised) is kept for ablation; it
  leaves KLAW unchanged while all ratios are equal, where the convex form halves its effect.

All-zero rule: when every input is zero (no site has pruned yet, no site's model changed)
the weights are uniform, 1/K each: no site carries a signal, so none is preferred, and the
round still proceeds. Negative, NaN or infinite inputs raise ValueError naming the site.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KLAW_SIGNS = ("more_divergence_more_weight", "less_divergence_more_weight")
KLAW_INVERSES = ("reciprocal", "exp")
PRAW_FORMS = ("ratio", "density", "inverse_density")
COMBINES = ("convex", "product")
WEIGHTINGS = ("klpwa", "samples", "uniform", "cdw")


def _vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """Validated 1-D float64 copy: non-empty, finite, non-negative."""
    arr = np.array(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence, got shape {arr.shape}")
    for i, v in enumerate(arr):
        if not np.isfinite(v) or v < 0:
            raise ValueError(
                f"{name}[{i}] = {v!r}: site {i} reported a negative or non-finite value; "
                f"fix or drop that site's reply"
            )
    return arr


def normalise(values: Sequence[float] | np.ndarray, name: str = "weights") -> np.ndarray:
    """Scale non-negative values to sum 1; all zeros become uniform (see module doc)."""
    arr = _vector(values, name)
    total = arr.sum()
    if total == 0:
        return np.full(arr.size, 1.0 / arr.size)
    return arr / total


def klaw(
    kl_values: Sequence[float] | np.ndarray,
    sign: str = "more_divergence_more_weight",
    inverse: str = "reciprocal",
    eps: float = 1e-12,
) -> np.ndarray:
    """KL-divergence aggregation weights from each site's probe-batch KL."""
    kl = _vector(kl_values, "kl_values")
    if sign == "more_divergence_more_weight":
        return normalise(kl, "kl_values")
    if sign != "less_divergence_more_weight":
        raise ValueError(f"sign: {sign!r} is not one of {KLAW_SIGNS}")
    if inverse == "reciprocal":
        if eps <= 0:
            raise ValueError(f"eps: {eps} must be > 0 to keep 1 / (kl + eps) finite")
        return normalise(1.0 / (kl + eps), "kl_values")
    if inverse == "exp":
        return normalise(np.exp(-(kl - kl.min())), "kl_values")
    raise ValueError(f"inverse: {inverse!r} is not one of {KLAW_INVERSES}")


def praw(prune_ratios: Sequence[float] | np.ndarray, form: str = "ratio") -> np.ndarray:
    """Pruning-ratio aggregation weights from each site's pruned fraction in [0, 1]."""
    r = _vector(prune_ratios, "prune_ratios")
    for i, v in enumerate(r):
        if v > 1:
            raise ValueError(f"prune_ratios[{i}] = {v!r}: site {i}'s pruned fraction exceeds 1")
    if form == "ratio":
        return normalise(r, "prune_ratios")
    if form == "density":
        return normalise(1.0 - r, "prune_ratios")
    if form == "inverse_density":
        full = np.flatnonzero(r >= 1.0)
        if full.size:
            raise ValueError(
                f"prune_ratios[{full[0]}] = 1.0: a fully pruned site has no inverse density; "
                f"use form='ratio' or 'density'"
            )
        return normalise(1.0 / (1.0 - r), "prune_ratios")
    raise ValueError(f"form: {form!r} is not one of {PRAW_FORMS}")


def klpwa(
    klaw_weights: Sequence[float] | np.ndarray,
    praw_weights: Sequence[float] | np.ndarray,
    combine: str = "convex",
    beta: float = 0.5,
) -> np.ndarray:
    """KLPWA: combine KLAW and PRAW (each renormalised first) into one weight per site."""
    k = normalise(klaw_weights, "klaw_weights")
    p = normalise(praw_weights, "praw_weights")
    if k.size != p.size:
        raise ValueError(
            f"klaw_weights has {k.size} sites but praw_weights has {p.size}; pass one per site"
        )
    if combine == "convex":
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta: {beta} is outside [0, 1]")
        return normalise(beta * k + (1.0 - beta) * p, "klpwa")
    if combine == "product":
        return normalise(k * p, "klpwa")
    raise ValueError(f"combine: {combine!r} is not one of {COMBINES}")


def sample_count_weights(num_examples: Sequence[int] | np.ndarray) -> np.ndarray:
    """FedAvg weights: proportional to each site's number of training examples."""
    return normalise(num_examples, "num_examples")


def cosine_distance(
    old_features: np.ndarray, new_features: np.ndarray, eps: float = 1e-12
) -> float:
    """Site side of CDW: mean over probe rows of ``1 - cos(old_i, new_i)``.

    ``old_features`` come from the downloaded model before local training, ``new_features``
    from the trained model, on the same fixed probe batch (rows = images). A zero row has
    cosine 0 (distance 1). The result lies in [0, 2]. FedCAPR sends ``int(d * 1000)``; the
    float is kept here because the weights are normalised anyway.
    """
    old = np.asarray(old_features, dtype=np.float64)
    new = np.asarray(new_features, dtype=np.float64)
    if old.ndim != 2 or old.shape != new.shape or old.shape[0] == 0:
        raise ValueError(
            f"old_features {old.shape} and new_features {new.shape}: expected two equal "
            f"(rows, dims) arrays with at least one row"
        )
    dots = np.einsum("ij,ij->i", old, new)
    norms = np.linalg.norm(old, axis=1) * np.linalg.norm(new, axis=1)
    cos = dots / np.maximum(norms, eps)
    # Rounding can push cos of identical rows just above 1; a negative distance would then
    # be rejected by cosine_distance_weights, so clip to the mathematical range.
    return float(np.mean(np.clip(1.0 - cos, 0.0, 2.0)))


def cosine_distance_weights(distances: Sequence[float] | np.ndarray) -> np.ndarray:
    """Server side of CDW (FedCAPR, FedReID): weights proportional to the sites' distances."""
    return normalise(distances, "distances")


def site_weights(
    weighting: str,
    *,
    num_examples: Sequence[float],
    kl_divergence: Sequence[float],
    cosine_distance: Sequence[float],
    prune_ratio: Sequence[float],
    klaw_sign: str = "more_divergence_more_weight",
    praw_form: str = "ratio",
    combine: str = "convex",
    beta: float = 0.5,
) -> np.ndarray:
    """The aggregation weights of ``weighting`` (one of :data:`WEIGHTINGS`) from the sites'
    reported signals, each a sequence in site order."""
    if weighting == "samples":
        return sample_count_weights(num_examples)
    if weighting == "uniform":
        return np.full(len(num_examples), 1.0 / len(num_examples))
    if weighting == "cdw":
        return cosine_distance_weights(cosine_distance)
    if weighting == "klpwa":
        return klpwa(klaw(kl_divergence, sign=klaw_sign), praw(prune_ratio, form=praw_form),
                     combine=combine, beta=beta)
    raise ValueError(f"weighting={weighting!r}: choose one of {WEIGHTINGS}")
