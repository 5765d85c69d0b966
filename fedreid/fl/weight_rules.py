"""Aggregation weights as linear forms in per-site scores, so replies can be folded on arrival.

SAS divides ``sum_k a_k m_k theta_k`` by ``sum_k a_k m_k``, which is invariant to a common
scale of the weights ``a_k``, but KLPWA's weights are not one per-site score up to a common
scale: ``a_k = beta * kl_k / sum(kl) + (1 - beta) * r_k / sum(r)`` has two normalisers that
are known only when every reply is in, and :mod:`fedreid.fl.weights` falls back to uniform
weights where a whole column is zero. What *is* exact: every rule there is

    a_k = sum_j c_j * s_jk

with per-site scores ``s_jk`` (known when site k's reply arrives: its KL, its prune ratio,
their product, or 1) and coefficients ``c_j`` that depend only on the column totals
``S_j = sum_k s_jk`` and the number of sites. So a streaming aggregator keeps one numerator
per basis j (``sum_k s_jk m_k theta_k``) and combines them with ``c_j`` at the end; the
denominator ``sum_k a_k m_k`` it builds at the end from the masks it keeps anyway. Totals
only grow (scores are non-negative), so once a basis' coefficient is provably zero for any
future replies (``alive``), its numerator is dropped: the convex KLPWA holds two numerators
(KL and ratio) once a site with both positive arrived, the product form and the one-score
rules hold one, and a rule whose weights are known up front (``FixedWeights``, e.g. after
a metrics-first exchange) holds one.

``coefficients`` may differ from :mod:`fedreid.fl.weights` by a common positive factor (the
result does not depend on it); ``reference`` gives those functions' normalised weights, for
logging and tests.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np

from fedreid.fl.weights import (
    COMBINES,
    KLAW_SIGNS,
    PRAW_FORMS,
    WEIGHTINGS,
    klaw,
    klpwa,
    normalise,
    praw,
)

Signal = float | Mapping[str, float]


def _metric(signal: Signal, key: str) -> float:
    if not isinstance(signal, Mapping) or key not in signal:
        raise ValueError(f"metrics: {key!r} is missing; the weighting needs it from every site")
    value = float(signal[key])
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"metrics[{key!r}] = {value!r}: must be finite and >= 0")
    return value


class WeightRule(ABC):
    """Weights ``a_k = sum_j c_j s_jk`` (see the module doc)."""

    bases: tuple[str, ...]

    @abstractmethod
    def scores(self, signal: Signal) -> np.ndarray:
        """Site k's scores ``s_jk``, one per basis (float64, finite, >= 0)."""

    @abstractmethod
    def coefficients(self, totals: np.ndarray, count: int) -> np.ndarray:
        """``c_j`` from the final column totals and the number of sites."""

    @abstractmethod
    def alive(self, totals: np.ndarray) -> np.ndarray:
        """Bool per basis: False once its coefficient is zero whatever replies follow."""

    @abstractmethod
    def reference(self, signals: Sequence[Signal]) -> np.ndarray:
        """The normalised weights :mod:`fedreid.fl.weights` gives for these sites."""

    def weights(self, scores: np.ndarray) -> np.ndarray:
        """Unnormalised weights ``a_k`` of sites whose scores are the rows of ``scores``."""
        scores = np.asarray(scores, dtype=np.float64).reshape(-1, len(self.bases))
        return scores @ self.coefficients(scores.sum(axis=0), scores.shape[0])


class FixedWeights(WeightRule):
    """The caller passes each site's weight (any positive scale)."""

    bases = ("weight",)

    def scores(self, signal: Signal) -> np.ndarray:
        if isinstance(signal, Mapping):
            raise ValueError("FixedWeights: pass the site's weight as a number, not metrics")
        w = float(signal)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weight {signal!r} must be finite and >= 0")
        return np.array([w])

    def coefficients(self, totals: np.ndarray, count: int) -> np.ndarray:
        return np.ones(1)

    def alive(self, totals: np.ndarray) -> np.ndarray:
        return np.ones(1, dtype=bool)

    def reference(self, signals: Sequence[Signal]) -> np.ndarray:
        w = np.array([float(s) for s in signals], dtype=np.float64)
        return w / w.sum()


class ScoreWeights(WeightRule):
    """Weights proportional to one metric (``None``: uniform), uniform when all are zero."""

    def __init__(self, metric: str | None) -> None:
        self.metric = metric
        self.bases = ("unit",) if metric is None else (metric, "unit")

    def scores(self, signal: Signal) -> np.ndarray:
        if self.metric is None:
            return np.ones(1)
        return np.array([_metric(signal, self.metric), 1.0])

    def coefficients(self, totals: np.ndarray, count: int) -> np.ndarray:
        if self.metric is None:
            return np.array([1.0 / count])
        if totals[0] > 0:
            return np.array([1.0 / totals[0], 0.0])
        return np.array([0.0, 1.0 / count])

    def alive(self, totals: np.ndarray) -> np.ndarray:
        if self.metric is None:
            return np.ones(1, dtype=bool)
        return np.array([True, totals[0] == 0])

    def reference(self, signals: Sequence[Signal]) -> np.ndarray:
        if self.metric is None:
            return np.full(len(signals), 1.0 / len(signals))
        return normalise([_metric(s, self.metric) for s in signals], self.metric)


class KlpwaWeights(WeightRule):
    """KLPWA (:func:`fedreid.fl.weights.klpwa` of ``klaw`` and ``praw``) from the metrics
    ``"kl_divergence"`` (the site's probe KL) and ``"prune_ratio"``.

    Per site ``kappa`` = KL (or ``1 / (KL + eps)`` for ``less_divergence_more_weight``) and
    ``rho`` = ratio (or ``1 - ratio`` for ``density``). Convex bases ``(kappa, rho, 1)``:
    ``c = (beta / S_kappa, (1 - beta) / S_rho, (beta [S_kappa = 0] + (1 - beta) [S_rho = 0]) / K)``
    with a term dropped when its total is 0. Product bases ``(kappa*rho, kappa, rho, 1)``: only
    one is used, by which totals are zero (both positive: ``kappa*rho``, or uniform if its
    total is 0; only ``kappa``'s positive: ``kappa``; only ``rho``'s: ``rho``; neither: 1).
    """

    def __init__(self, klaw_sign: str = "more_divergence_more_weight", praw_form: str = "ratio",
                 combine: str = "convex", beta: float = 0.5, eps: float = 1e-12) -> None:
        if klaw_sign not in KLAW_SIGNS:
            raise ValueError(f"klaw_sign: {klaw_sign!r} is not one of {KLAW_SIGNS}")
        if praw_form not in PRAW_FORMS[:2]:
            raise ValueError(f"praw_form: {praw_form!r} is not one of {PRAW_FORMS[:2]}")
        if combine not in COMBINES:
            raise ValueError(f"combine: {combine!r} is not one of {COMBINES}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta: {beta} is outside [0, 1]")
        if eps <= 0:
            raise ValueError(f"eps: {eps} must be > 0 to keep 1 / (kl + eps) finite")
        self.klaw_sign, self.praw_form, self.combine = klaw_sign, praw_form, combine
        self.beta, self.eps = beta, eps
        self.bases = (("klaw", "praw", "unit") if combine == "convex"
                      else ("klaw*praw", "klaw", "praw", "unit"))

    def _kappa_rho(self, signal: Signal) -> tuple[float, float]:
        kl, ratio = _metric(signal, "kl_divergence"), _metric(signal, "prune_ratio")
        if ratio > 1:
            raise ValueError(f"metrics['prune_ratio'] = {ratio!r}: a pruned fraction exceeds 1")
        kappa = kl if self.klaw_sign == "more_divergence_more_weight" else 1.0 / (kl + self.eps)
        return kappa, (ratio if self.praw_form == "ratio" else 1.0 - ratio)

    def scores(self, signal: Signal) -> np.ndarray:
        kappa, rho = self._kappa_rho(signal)
        if self.combine == "convex":
            return np.array([kappa, rho, 1.0])
        return np.array([kappa * rho, kappa, rho, 1.0])

    def coefficients(self, totals: np.ndarray, count: int) -> np.ndarray:
        if self.combine == "convex":
            s_k, s_r = totals[0], totals[1]
            b = self.beta
            return np.array([
                b / s_k if s_k > 0 else 0.0,
                (1 - b) / s_r if s_r > 0 else 0.0,
                (b * (s_k == 0) + (1 - b) * (s_r == 0)) / count,
            ])
        t_kr, s_k, s_r = totals[0], totals[1], totals[2]
        c = np.zeros(4)
        if s_k > 0 and s_r > 0:
            if t_kr > 0:
                c[0] = 1.0 / t_kr
            else:
                c[3] = 1.0 / count
        elif s_k > 0:
            c[1] = 1.0 / s_k
        elif s_r > 0:
            c[2] = 1.0 / s_r
        else:
            c[3] = 1.0 / count
        return c

    def alive(self, totals: np.ndarray) -> np.ndarray:
        if self.combine == "convex":
            b = self.beta
            unit = (b > 0 and totals[0] == 0) or (b < 1 and totals[1] == 0)
            return np.array([b > 0, b < 1, unit])
        return np.array([True, totals[2] == 0, totals[1] == 0, totals[0] == 0])

    def reference(self, signals: Sequence[Signal]) -> np.ndarray:
        kls = [_metric(s, "kl_divergence") for s in signals]
        ratios = [_metric(s, "prune_ratio") for s in signals]
        k = klaw(kls, sign=self.klaw_sign, eps=self.eps)
        p = praw(ratios, form=self.praw_form)
        return klpwa(k, p, combine=self.combine, beta=self.beta)


def weight_rule(weighting: str, klaw_sign: str = "more_divergence_more_weight",
                praw_form: str = "ratio", combine: str = "convex", beta: float = 0.5) -> WeightRule:
    """The rule for an ``agg.weighting`` name (the same choices as the server's weights)."""
    if weighting == "klpwa":
        return KlpwaWeights(klaw_sign, praw_form, combine, beta)
    if weighting == "samples":
        return ScoreWeights("num-examples")
    if weighting == "cdw":
        return ScoreWeights("cosine_distance")
    if weighting == "uniform":
        return ScoreWeights(None)
    raise ValueError(f"weighting: {weighting!r} is not one of {WEIGHTINGS}")
