"""evaluate(): hand-made cases and equality with the per-query reference loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedreid.data.records import Sample
from fedreid.eval import evaluate, extract_features, pairwise_distance, tracklet_features
from fedreid.eval.reference import reference_market1501


def random_problem(seed, ties):
    rng = np.random.default_rng(seed)
    nq, ng, ids = rng.integers(5, 40), rng.integers(5, 150), rng.integers(3, 12)
    q_pids, g_pids = rng.integers(0, ids, nq), rng.integers(0, ids, ng)
    q_cams, g_cams = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    if ties:
        dist = rng.integers(0, 5, (nq, ng)).astype(np.float32)
    else:
        dist = rng.random((nq, ng))
    return dist, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("ties", [False, True])
def test_equals_reference_loop(seed, ties):
    dist, qp, gp, qc, gc = random_problem(seed, ties)
    cmc, m_ap, m_inp, all_ap = reference_market1501(dist, qp, gp, qc, gc, max_rank=20)
    out = evaluate(dist, qp, gp, qc, gc, max_rank=20, num_threads=2)
    assert out["cmc"].shape == (min(20, dist.shape[1]),)
    np.testing.assert_allclose(out["cmc"], cmc, atol=1e-6)
    assert out["mAP"] == pytest.approx(m_ap, abs=1e-6)
    assert out["mINP"] == pytest.approx(m_inp, abs=1e-6)
    np.testing.assert_allclose(out["all_AP"], all_ap, atol=1e-6)
    assert out["num_valid_queries"] == len(all_ap)


def test_threads_and_chunks_do_not_change_results():
    rng = np.random.default_rng(3)
    dist = rng.integers(0, 50, (300, 400)).astype(np.float32)
    qp, gp = rng.integers(0, 30, 300), rng.integers(0, 30, 400)
    qc, gc = rng.integers(0, 4, 300), rng.integers(0, 4, 400)
    one = evaluate(dist, qp, gp, qc, gc, num_threads=1)
    two = evaluate(dist, qp, gp, qc, gc, num_threads=2)
    ref = reference_market1501(dist, qp, gp, qc, gc)
    np.testing.assert_array_equal(one["all_AP"], two["all_AP"])
    np.testing.assert_allclose(one["all_AP"], ref[3], atol=1e-6)


def test_hand_made_case():
    # query 0: pid 1 cam 0. gallery order by distance: g2 (pid 1, cam 0: junk), g0 (pid 2),
    # g1 (pid 1, cam 1: good), g3 (pid 1, cam 2: good). Kept list: g0, g1, g3 -> hits at 2, 3.
    # query 1: pid 2 cam 1; g0 (pid 2, cam 1) is its only match and is junk -> skipped.
    dist = np.array([[0.2, 0.3, 0.1, 0.4], [0.5, 0.1, 0.2, 0.3]])
    g_pids, g_cams = np.array([2, 1, 1, 1]), np.array([1, 1, 0, 2])
    out = evaluate(dist, np.array([1, 2]), g_pids, np.array([0, 1]), g_cams, max_rank=3)
    assert out["num_valid_queries"] == 1
    np.testing.assert_array_equal(out["valid_queries"], [0])
    np.testing.assert_allclose(out["cmc"], [0.0, 1.0, 1.0])
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert out["mINP"] == pytest.approx(2 / 3)


def test_ties_broken_by_gallery_index():
    # the positive ties with a negative: the lower gallery index ranks first
    dist = np.array([[0.5, 0.5]])
    first_neg = evaluate(dist, np.array([1]), np.array([0, 1]), np.array([0]), np.array([1, 1]))
    first_pos = evaluate(dist, np.array([1]), np.array([1, 0]), np.array([0]), np.array([1, 1]))
    assert first_neg["mAP"] == pytest.approx(0.5) and first_neg["cmc"][0] == 0.0
    assert first_pos["mAP"] == pytest.approx(1.0) and first_pos["cmc"][0] == 1.0


def test_max_rank_lowered_to_gallery_size():
    dist = np.array([[0.1, 0.2, 0.3]])
    out = evaluate(dist, np.array([0]), np.array([1, 0, 2]), np.array([0]), np.array([1, 1, 1]))
    np.testing.assert_allclose(out["cmc"], [0.0, 1.0, 1.0])
    assert out["mINP"] == pytest.approx(0.5)


def test_all_matches_junk_is_an_error():
    dist = np.zeros((2, 3))
    with pytest.raises(ValueError, match="no valid query"):
        evaluate(dist, np.array([0, 1]), np.array([0, 1, 1]), np.array([0, 0]), np.array([0, 0, 0]))


@pytest.mark.parametrize(
    "args, name",
    [
        ((np.zeros((2, 3)), [0], [0, 1, 2], [0, 0], [1, 1, 1]), "q_pids"),
        ((np.zeros((2, 3)), [0, 1], [0, 1], [0, 0], [1, 1, 1]), "g_pids"),
        ((np.zeros((2, 3)), [0, 1], [0, 1, 2], [0], [1, 1, 1]), "q_camids"),
        ((np.zeros((2, 3)), [0, 1], [0, 1, 2], [0, 0], [1, 1]), "g_camids"),
        ((np.zeros(3), [0], [0, 1, 2], [0], [1, 1, 1]), "distmat"),
        ((np.array([[0.0, np.nan, 1.0]]), [0], [0, 1, 2], [0], [1, 1, 1]), "distmat"),
    ],
)
def test_input_errors_name_the_argument(args, name):
    with pytest.raises(ValueError, match=name):
        evaluate(*[np.asarray(a) for a in args])


def test_infinite_distances_are_allowed():
    dist = np.array([[np.inf, 0.1, -np.inf]])
    out = evaluate(dist, np.array([0]), np.array([0, 1, 2]), np.array([0]), np.array([1, 1, 1]))
    assert out["mAP"] == pytest.approx(1 / 3)


def test_torch_input():
    dist, qp, gp, qc, gc = random_problem(0, False)
    a = evaluate(dist, qp, gp, qc, gc)
    b = evaluate(torch.from_numpy(dist), torch.from_numpy(qp), torch.from_numpy(gp), qc, gc)
    np.testing.assert_array_equal(a["all_AP"], b["all_AP"])


def test_cuhk03_single_shot_is_seeded_and_keeps_ap():
    dist, qp, gp, qc, gc = random_problem(5, False)
    market = evaluate(dist, qp, gp, qc, gc, max_rank=10)
    a = evaluate(dist, qp, gp, qc, gc, max_rank=10, cuhk03_single_shot=True, seed=1)
    b = evaluate(dist, qp, gp, qc, gc, max_rank=10, cuhk03_single_shot=True, seed=1)
    np.testing.assert_array_equal(a["cmc"], b["cmc"])
    assert a["mAP"] == market["mAP"] and a["mINP"] == market["mINP"]
    assert np.all(np.diff(a["cmc"]) >= 0) and a["cmc"][-1] <= 1.0
    # the CMC is an average of 10 draws: multiples of 1 / (10 · valid queries)
    steps = a["cmc"] * 10 * a["num_valid_queries"]
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)


def test_cuhk03_single_shot_equals_market_when_one_image_per_identity():
    rng = np.random.default_rng(0)
    g_pids = np.arange(30)
    q_pids = rng.integers(0, 30, 12)
    dist = rng.random((12, 30))
    qc, gc = np.zeros(12, int), np.ones(30, int)
    market = evaluate(dist, q_pids, g_pids, qc, gc, max_rank=10)
    single = evaluate(dist, q_pids, g_pids, qc, gc, max_rank=10, cuhk03_single_shot=True, seed=3)
    np.testing.assert_allclose(single["cmc"], market["cmc"])


def test_cuhk03_single_shot_matches_reference_in_expectation():
    # One gallery identity has many images: with many seeds the averaged single-shot rank-1
    # approaches the exact probability that the drawn positive beats the drawn negatives.
    dist = np.array([[0.1, 0.3, 0.2, 0.4]])  # g0,g1: pid 0 (positives), g2, g3: pid 1
    out = [
        evaluate(
            dist,
            np.array([0]),
            np.array([0, 0, 1, 1]),
            np.array([0]),
            np.array([1] * 4),
            cuhk03_single_shot=True,
            seed=s,
        )["cmc"][0]
        for s in range(200)
    ]
    # rank-1 iff the drawn positive is closer than the drawn negative:
    # g0 (0.1) beats both; g1 (0.3) beats only g3 -> 1/2 + 1/4 = 0.75
    assert np.mean(out) == pytest.approx(0.75, abs=0.03)


# --- features.py: extraction with flip TTA, tracklet pooling, distances ---------------------


class _Flat(torch.nn.Module):
    """A tiny embedding model: flatten + linear; asymmetric so flipping changes the output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 4 * 6, 5)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_extract_features_flip_and_batch_forms():
    model = _Flat().train()
    images = torch.randn(7, 3, 4, 6)
    with torch.no_grad():
        plain = torch.nn.functional.normalize(model(images), dim=1)
        flipped = torch.nn.functional.normalize(model(images) + model(images.flip(3)), dim=1)
    loader_tuples = [(images[:4], torch.zeros(4)), (images[4:], torch.zeros(3))]
    loader_dicts = [{"image": images[:3]}, {"image": images[3:]}]
    torch.testing.assert_close(extract_features(model, loader_tuples), flipped)
    torch.testing.assert_close(extract_features(model, loader_dicts, flip=False), plain)
    torch.testing.assert_close(extract_features(model, images, batch_size=2), flipped)
    assert model.training  # mode restored


def test_extract_features_rejects_bad_model_output():
    class Pair(torch.nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(ValueError, match="model must return"):
        extract_features(Pair(), torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="image"):
        extract_features(_Flat(), [{"img": torch.zeros(1, 3, 4, 6)}])


def test_tracklet_features_average_in_first_appearance_order():
    samples = [
        Sample("a", pid=5, camid=1, tracklet=0, frame=0),
        Sample("b", pid=2, camid=0, tracklet=3, frame=0),
        Sample("c", pid=5, camid=1, tracklet=0, frame=1),
        Sample("d", pid=5, camid=0, tracklet=0, frame=0),
    ]
    feats = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 1.0], [3.0, 4.0]])
    out, pids, cams = tracklet_features(feats, samples)
    s = 2**-0.5
    torch.testing.assert_close(out, torch.tensor([[s, s], [0.0, 1.0], [0.6, 0.8]]))
    np.testing.assert_array_equal(pids, [5, 2, 5])
    np.testing.assert_array_equal(cams, [1, 0, 0])
    with pytest.raises(ValueError, match="tracklet"):
        tracklet_features(feats[:1], [Sample("x", pid=1, camid=0)])
    with pytest.raises(ValueError, match="one row per sample"):
        tracklet_features(feats, samples[:2])


def test_pairwise_distance():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(5, 6)).astype(np.float32)
    euc = np.linalg.norm(q[:, None] - g[None], axis=2)
    cos = (
        1
        - (q / np.linalg.norm(q, axis=1, keepdims=True))
        @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    )
    np.testing.assert_allclose(pairwise_distance(q, g, "euclidean").numpy(), euc, atol=1e-5)
    np.testing.assert_allclose(pairwise_distance(torch.from_numpy(q), g).numpy(), cos, atol=1e-6)
    with pytest.raises(ValueError, match="metric"):
        pairwise_distance(q, g, "manhattan")
