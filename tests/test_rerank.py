"""k-reciprocal re-ranking, the Jaccard distance and KWF against straightforward references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedreid.eval.reference import reference_jaccard, reference_re_ranking
from fedreid.eval.rerank import _smallest_k, jaccard_distance, jaccard_graph, k_reciprocal, kwf


def clustered(seed, n, dim=16, groups=10, noise=0.5):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(groups, dim))
    return centers[rng.integers(0, groups, n)] + noise * rng.normal(size=(n, dim))


def euclidean(a, b):
    return np.sqrt(np.maximum((a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T, 0))


@pytest.mark.parametrize(
    "seed, k1, k2, dtype, rounded",
    [
        (0, 20, 6, np.float64, False),
        (1, 20, 6, np.float32, False),
        (2, 7, 3, np.float64, False),
        (3, 5, 1, np.float32, False),
        (4, 20, 6, np.float64, True),
        (5, 9, 4, np.float64, True),
    ],
)
def test_k_reciprocal_equals_reference(seed, k1, k2, dtype, rounded):
    rng = np.random.default_rng(seed)
    nq, ng = int(rng.integers(5, 30)), int(rng.integers(30, 120))
    f = clustered(seed, nq + ng)
    d = euclidean(f, f)
    if rounded:  # many ties
        d = np.round(d, 1)
    d = d.astype(dtype)
    q_g, q_q, g_g = d[:nq, nq:], d[:nq, :nq], d[nq:, nq:]
    ours = k_reciprocal(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=0.3)
    ref = reference_re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=0.3)
    assert ours.dtype == np.float32 and ours.shape == (nq, ng)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_k_reciprocal_lambda_one_is_normalised_distance():
    f = clustered(0, 40)
    d = euclidean(f, f)
    out = k_reciprocal(d[:10, 10:], d[:10, :10], d[10:, 10:], lambda_value=1.0)
    col_max = np.max(d[:, :10] ** 2, axis=0)
    np.testing.assert_allclose(out, d[:10, 10:] ** 2 / col_max[:, None], rtol=1e-5)


@pytest.mark.parametrize(
    "args, name",
    [
        ((np.zeros((2, 3)), np.zeros((3, 3)), np.zeros((3, 3))), "q_q_dist"),
        ((np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((2, 2))), "g_g_dist"),
        ((np.full((2, 3), np.nan), np.zeros((2, 2)), np.zeros((3, 3))), "q_g_dist"),
        ((np.zeros(3), np.zeros((1, 1)), np.zeros((3, 3))), "q_g_dist"),
    ],
)
def test_k_reciprocal_input_errors(args, name):
    with pytest.raises(ValueError, match=name):
        k_reciprocal(*args)


def test_smallest_k_is_a_stable_argsort_prefix():
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 4, (50, 40)).astype(np.float32)  # ties everywhere, past the margin
    got = _smallest_k(torch.from_numpy(rows), 7).numpy()
    np.testing.assert_array_equal(got, np.argsort(rows, axis=1, kind="stable")[:, :7])


def normalised_features(seed, n, dim=16, noise=0.5):
    f = clustered(seed, n, dim=dim, noise=noise).astype(np.float32)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


@pytest.mark.parametrize("seed, k1, k2", [(0, 20, 6), (1, 10, 3), (2, 3, 1), (3, 4, 2)])
def test_jaccard_equals_reference_building_blocks(seed, k1, k2):
    f = normalised_features(seed, 90)
    f64 = f.astype(np.float64)
    sq = (f64**2).sum(1)
    d = (sq[:, None] + sq[None] - 2 * f64 @ f64.T).astype(np.float32)
    ref = np.clip(reference_jaccard(d, len(f), k1, k2), 0.0, 1.0)
    np.fill_diagonal(ref, 0.0)
    ours = jaccard_distance(torch.from_numpy(f), k1=k1, k2=k2)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_jaccard_is_a_distance_in_unit_interval():
    j = jaccard_distance(normalised_features(4, 120))
    assert j.dtype == np.float32 and j.shape == (120, 120)
    np.testing.assert_array_equal(np.diag(j), 0.0)
    np.testing.assert_allclose(j, j.T, atol=1e-6)
    assert j.min() >= 0.0 and j.max() <= 1.0
    assert (j < 1.0).sum() > 120  # neighbours overlap, not only the diagonal


def test_jaccard_graph_is_the_dense_matrix_without_the_ones():
    f = normalised_features(5, 100)
    dense = jaccard_distance(f)
    graph = jaccard_graph(f)
    assert graph.shape == (100, 100)
    filled = np.ones_like(dense)
    coo = graph.tocoo()
    filled[coo.row, coo.col] = coo.data
    np.testing.assert_array_equal(filled, dense)
    assert (coo.data < 1.0).all()
    np.testing.assert_array_equal(graph.diagonal(), 0.0)
    assert graph.nnz == (dense < 1.0).sum()


def test_jaccard_with_fewer_items_than_neighbours():
    j = jaccard_distance(normalised_features(6, 5), k1=20, k2=6)
    assert j.shape == (5, 5) and np.isfinite(j).all()


def test_jaccard_rejects_bad_features():
    with pytest.raises(ValueError, match="features"):
        jaccard_distance(np.array([[np.nan, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="features"):
        jaccard_distance(np.zeros(4))


# KWF on a hand-checked 2-D case. Gallery: g0=(1,0) cam0, g1=(.6,.8) cam1, g2=(0,1) cam1,
# g3=(-.8,.6) cam2. Query a=(1,0) cam0: cosine scores (1, .6, 0, -.8), top-2 = g0, g1.
# Neighbours outside cam0 (g1, g2, g3): g0 -> g1 (.6), g2 (0); g1 -> g1 (1), g2 (.8).
# Query b=(0,1) cam1: scores (0, .8, 1, .6), top-2 = g2, g1; neighbours outside cam1 (g0, g3):
# g2 -> g3 (.6), g0 (0); g1 -> g0 (.6), g3 (0).
KWF_Q = np.array([[1.0, 0.0], [0.0, 1.0]])
KWF_G = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.8, 0.6]])
KWF_QCAM, KWF_GCAM = np.array([0, 1]), np.array([0, 1, 1, 2])


def _query_a_expected(weighting):
    """Distances of query a to g0, g1 from the neighbour weights, worked by hand."""
    if weighting == "uniform":  # both multi-view features are (.3, .9)
        w0, w1 = (0.5, 0.5), (0.5, 0.5)
    elif weighting == "sim":
        w0, w1 = (1.0, 0.0), (1 / 1.8, 0.8 / 1.8)
    elif weighting == "inv_dist_pow":  # d = (.4, 1) -> 1/d² = (6.25, 1); g1's own d=0 dominates
        w0, w1 = (6.25 / 7.25, 1 / 7.25), (1.0, 0.0)
    else:  # exp_decay = softmax of the similarities
        e0, e1 = np.exp([0.6, 0.0]), np.exp([1.0, 0.8])
        w0, w1 = tuple(e0 / e0.sum()), tuple(e1 / e1.sum())
    # a·g1 = .6, a·g2 = 0: the score is .6 × the weight on g1
    return 1 - 0.6 * w0[0], 1 - 0.6 * w1[0]


@pytest.mark.parametrize("weighting", ["uniform", "sim", "inv_dist_pow", "exp_decay"])
def test_kwf_hand_checked(weighting):
    out = kwf(KWF_Q, KWF_G, KWF_GCAM, KWF_QCAM, top_m=2, k=2, weighting=weighting)
    d0, d1 = _query_a_expected(weighting)
    np.testing.assert_allclose(out[0], [d0, d1, 1.0, 1.8], atol=1e-5)
    if weighting == "uniform":  # query b: both fused features are (.1, .3)
        np.testing.assert_allclose(out[1], [1.0, 0.7, 0.7, 0.4], atol=1e-6)


def test_kwf_excludes_the_query_camera_and_normalises():
    # k=1: query b's g2 fuses to g3 (score .6), g1 to g0 (score 0); features given unnormalised
    out = kwf(KWF_Q * 3, KWF_G * 2, KWF_GCAM, KWF_QCAM, top_m=2, k=1)
    np.testing.assert_allclose(out[1], [1.0, 1.0, 0.4, 0.4], atol=1e-6)


def test_kwf_keeps_single_view_outside_top_m_and_without_other_cameras():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(6, 8)), rng.normal(size=(30, 8))
    cos = (
        1
        - (q / np.linalg.norm(q, axis=1, keepdims=True))
        @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    )
    out = kwf(q, g, np.zeros(30, int), np.array([0, 0, 0, 1, 1, 1]), top_m=5, k=3)
    np.testing.assert_allclose(out[:3], cos[:3], atol=1e-6)  # gallery is all camera 0
    top = np.argsort(cos[3:], axis=1)[:, :5]
    rest = np.ones_like(cos[3:], dtype=bool)
    np.put_along_axis(rest, top, False, axis=1)
    np.testing.assert_allclose(out[3:][rest], cos[3:][rest], atol=1e-6)
    assert not np.allclose(out[3:][~rest], cos[3:][~rest])


def test_kwf_rejects_unknown_weighting():
    with pytest.raises(ValueError, match="weighting"):
        kwf(KWF_Q, KWF_G, KWF_GCAM, KWF_QCAM, weighting="softmax")


def test_jaccard_graph_max_distance_keeps_only_close_pairs():
    f = normalised_features(7, 100)
    full, near = jaccard_graph(f), jaccard_graph(f, max_distance=0.5)
    assert 0 < near.nnz == (full.data <= 0.5).sum() < full.nnz
    assert (near.data <= 0.5).all()
    np.testing.assert_array_equal(near.diagonal(), 0.0)
    coo = near.tocoo()
    np.testing.assert_array_equal(full.toarray()[coo.row, coo.col], coo.data)


def reference_kwf(q, g, g_cams, q_cams, top_m, k, weighting):
    """KWF as described (reid.md §4(b)), one query and one candidate at a time."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    out = 1 - q @ g.T
    for i in range(len(q)):
        others = np.flatnonzero(g_cams != q_cams[i])
        if len(others) == 0:
            continue
        for m in np.argsort(-(q[i] @ g.T), kind="stable")[:top_m]:
            s = g[others] @ g[m]
            order = np.argsort(-s, kind="stable")[: min(k, len(others))]
            s = s[order]
            if weighting == "uniform":
                w = np.full(len(s), 1 / len(s))
            elif weighting == "sim":
                w = s / s.sum()
            elif weighting == "inv_dist_pow":
                w = 1 / np.maximum(1 - s, 1e-6) ** 2
                w = w / w.sum()
            else:
                w = np.exp(-(1 - s)) / np.exp(-(1 - s)).sum()
            out[i, m] = 1 - q[i] @ (w @ g[others[order]])
    return out


@pytest.mark.parametrize("weighting", ["uniform", "sim", "inv_dist_pow", "exp_decay"])
def test_kwf_equals_per_query_loop(weighting):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(8, 12))
    q = centres[rng.integers(0, 8, 60)] + 0.3 * rng.normal(size=(60, 12))
    g = centres[rng.integers(0, 8, 700)] + 0.3 * rng.normal(size=(700, 12))
    q_cams, g_cams = rng.integers(0, 3, 60), rng.integers(0, 3, 700)
    # 60 queries × top 40: the candidates span more than one gallery row block
    ours = kwf(q, g, g_cams, q_cams, top_m=40, k=4, weighting=weighting)
    ref = reference_kwf(q, g, g_cams, q_cams, 40, 4, weighting)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
