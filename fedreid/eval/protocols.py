"""Evaluation protocols by name: what a site reports about a model on its query/gallery.

A protocol receives an :class:`EvalContext` (the query and gallery splits, their features,
and a way to embed other images) and returns a flat dict of float metrics. A method lists
the protocols it is evaluated with (``ReidMethod.evaluators``; ``eval.protocols`` overrides);
``single_query`` is the Market-1501 protocol every method gets by default, with optional
re-ranking reported beside the plain figures (``rerank_*`` keys). The set-up protocols report
prefixed keys: ``aerial_ground`` (``a2g_*``, ``g2a_*``, per altitude/distance bin),
``cross_modality`` (``ir2v_*``, ``v2ir_*`` at tracklet level), ``clothes_change``
(``general_*``, ``cc_*``, ``sc_*``) and ``occlusion`` (``occ_*``: queries with a region
erased, and the drop against clean queries).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedreid.data.store import ImageStore
from fedreid.eval.clothes_change import evaluate_clothes_change
from fedreid.eval.cross_modality import evaluate_cross_modality
from fedreid.eval.cross_platform import evaluate_aerial_ground
from fedreid.eval.features import pairwise_distance, tracklet_features
from fedreid.eval.metrics import evaluate
from fedreid.eval.occlusion import Occlusion, evaluate_occluded, occlude
from fedreid.eval.rerank import KWF_WEIGHTINGS, k_reciprocal, kwf

RERANKERS = ("none", "k_reciprocal", "kwf")


@dataclass(frozen=True)
class RerankOptions:
    """Re-ranking of the single-query protocol: ``method`` one of :data:`RERANKERS`.

    k-reciprocal uses the CVPR 2017 constants (k1=20, k2=6, λ=0.3); KWF fuses each of the
    ``kwf_top_m`` best candidates with its ``kwf_k`` nearest gallery neighbours outside the
    query's camera, weighted by ``kwf_weighting``.
    """

    method: str = "none"
    kwf_weighting: str = "inv_dist_pow"
    kwf_top_m: int = 100
    kwf_k: int = 6

    def __post_init__(self) -> None:
        if self.method not in RERANKERS:
            raise ValueError(f"eval.rerank={self.method!r}: choose one of {RERANKERS}")
        if self.kwf_weighting not in KWF_WEIGHTINGS:
            raise ValueError(f"eval.kwf_weighting={self.kwf_weighting!r}: choose one of {KWF_WEIGHTINGS}")


@dataclass
class EvalContext:
    """What a protocol may use. ``embed(store)`` gives L2-normalised features of any split of
    the same site (the occlusion test embeds altered queries with it)."""

    query: ImageStore
    gallery: ImageStore
    query_features: torch.Tensor
    gallery_features: torch.Tensor
    video: bool
    embed: Callable[[ImageStore], torch.Tensor]
    rerank: RerankOptions


def summarise(result: dict) -> dict[str, float]:
    """mAP, mINP and Rank-1/5/10 from :func:`fedreid.eval.metrics.evaluate`'s result."""
    cmc = np.asarray(result["cmc"])
    return {
        "mAP": float(result["mAP"]),
        "mINP": float(result["mINP"]),
        "rank1": float(cmc[0]),
        "rank5": float(cmc[min(4, len(cmc) - 1)]),
        "rank10": float(cmc[min(9, len(cmc) - 1)]),
    }


def single_query(ctx: EvalContext) -> dict[str, float]:
    """Market-1501 single-query CMC/mAP/mINP (tracklet-averaged for video sites), plus the
    re-ranked figures under ``rerank_*`` and the seconds re-ranking took."""
    qf, gf = ctx.query_features, ctx.gallery_features
    q_pids, q_cams = ctx.query.pids, ctx.query.camids
    g_pids, g_cams = ctx.gallery.pids, ctx.gallery.camids
    if ctx.video:
        qf, q_pids, q_cams = tracklet_features(qf, ctx.query.samples)
        gf, g_pids, g_cams = tracklet_features(gf, ctx.gallery.samples)
    dist = np.asarray(pairwise_distance(qf, gf, metric="cosine"))
    out = summarise(evaluate(dist, q_pids, g_pids, q_cams, g_cams))
    if ctx.rerank.method == "none":
        return out
    started = time.perf_counter()
    if ctx.rerank.method == "k_reciprocal":
        qq = np.asarray(pairwise_distance(qf, qf, metric="cosine"))
        gg = np.asarray(pairwise_distance(gf, gf, metric="cosine"))
        reranked = k_reciprocal(dist, qq, gg)
    else:
        r = ctx.rerank
        reranked = kwf(qf, gf, g_cams, q_cams, top_m=r.kwf_top_m, k=r.kwf_k, weighting=r.kwf_weighting)
    seconds = time.perf_counter() - started
    out.update({f"rerank_{k}": v for k, v in summarise(evaluate(reranked, q_pids, g_pids, q_cams, g_cams)).items()})
    out["rerank_seconds"] = seconds
    return out


def aerial_ground(ctx: EvalContext) -> dict[str, float]:
    return evaluate_aerial_ground(ctx.query_features, ctx.gallery_features, ctx.query.samples,
                                  ctx.gallery.samples)


def cross_modality(ctx: EvalContext) -> dict[str, float]:
    return evaluate_cross_modality(ctx.query_features, ctx.gallery_features, ctx.query.samples,
                                   ctx.gallery.samples)


def clothes_change(ctx: EvalContext) -> dict[str, float]:
    return evaluate_clothes_change(ctx.query_features, ctx.gallery_features, ctx.query.samples,
                                   ctx.gallery.samples)


OCCLUSION = Occlusion(mode="random", fraction=0.25, fill=124, seed=0)  # fill: the mean grey


def occlusion(ctx: EvalContext) -> dict[str, float]:
    """Each query with a quarter of the image erased at a seeded place, against the clean
    gallery; reports the drop against the clean queries too."""
    q = ctx.query
    erased = occlude(q.images, range(len(q)), OCCLUSION)
    store = ImageStore.from_tensor(erased, q.pids, q.camids, samples=q.samples)
    return evaluate_occluded(ctx.embed(store), ctx.gallery_features, q.samples, ctx.gallery.samples,
                             qf_clean=ctx.query_features)


PROTOCOLS: dict[str, Callable[[EvalContext], dict[str, float]]] = {
    "single_query": single_query,
    "aerial_ground": aerial_ground,
    "cross_modality": cross_modality,
    "clothes_change": clothes_change,
    "occlusion": occlusion,
}


def run_protocols(names: tuple[str, ...] | list[str], ctx: EvalContext) -> dict[str, float]:
    """Every named protocol on one context; later protocols cannot overwrite earlier keys."""
    out: dict[str, float] = {}
    for name in names:
        if name not in PROTOCOLS:
            raise ValueError(f"evaluation protocol {name!r}: choose among {sorted(PROTOCOLS)}")
        for key, value in PROTOCOLS[name](ctx).items():
            if key in out:
                raise ValueError(f"protocol {name!r} reports {key!r} again; give it a prefix")
            out[key] = value
    return out
