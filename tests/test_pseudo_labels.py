"""Pseudo-labels: DBSCAN on the Jaccard distance recovers separated clusters; camera proxies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedreid.pseudo_labels import PseudoLabels, cluster_pseudo_labels


def gaussian_clusters(seed=0, clusters=4, per_cluster=24, dim=32, cameras=3):
    rng = np.random.default_rng(seed)
    centers = 3.0 * rng.normal(size=(clusters, dim))
    truth = np.repeat(np.arange(clusters), per_cluster)
    feats = centers[truth] + 0.3 * rng.normal(size=(len(truth), dim))
    order = rng.permutation(len(truth))
    return feats[order].astype(np.float32), truth[order], np.arange(len(truth)) % cameras


def same_partition(a, b):
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("cameras", [2, 3])
def test_recovers_clusters_and_camera_proxies(cameras):
    feats, truth, cams = gaussian_clusters(cameras=cameras)
    out = cluster_pseudo_labels(torch.from_numpy(feats), cams)
    assert isinstance(out, PseudoLabels)
    assert out.num_clusters == 4 and out.num_outliers == 0
    assert same_partition(out.labels, truth)
    # one proxy per (cluster, camera), ordered by cluster then camera
    assert len(out.proxy_cluster) == 4 * cameras
    np.testing.assert_array_equal(out.proxy_cluster, np.repeat(np.arange(4), cameras))
    np.testing.assert_array_equal(out.proxy_camera, np.tile(np.arange(cameras), 4))
    np.testing.assert_array_equal(out.proxy_cluster[out.sample_proxy], out.labels)
    np.testing.assert_array_equal(out.proxy_camera[out.sample_proxy], cams)
    assert out.proxy_centers.shape == (4 * cameras, 32)
    torch.testing.assert_close(out.proxy_centers.norm(dim=1), torch.ones(4 * cameras))
    # each center is the normalised mean of its samples' normalised features
    unit = torch.nn.functional.normalize(torch.from_numpy(feats), dim=1)
    members = torch.from_numpy(out.sample_proxy == 5)
    expected = torch.nn.functional.normalize(unit[members].mean(0), dim=0)
    torch.testing.assert_close(out.proxy_centers[5], expected)


def test_outliers_are_set_aside():
    feats, truth, cams = gaussian_clusters(clusters=3)
    rng = np.random.default_rng(1)
    # two lone points and a pair, far from everything: fewer than min_samples each, and with
    # k1=10 their encodings share too little with any cluster member to join it
    extra = np.concatenate(
        [10 * rng.normal(size=(2, 32)), np.repeat(10 * rng.normal(size=(1, 32)), 2, 0)]
    )
    feats = np.concatenate([feats, extra.astype(np.float32)])
    cams = np.concatenate([cams, [0, 1, 0, 1]])
    out = cluster_pseudo_labels(feats, cams, k1=10)
    assert out.num_clusters == 3 and out.num_outliers == 4
    np.testing.assert_array_equal(out.labels[-4:], -1)
    np.testing.assert_array_equal(out.sample_proxy[-4:], -1)
    assert same_partition(out.labels[:-4], truth)
    assert (out.sample_proxy[:-4] >= 0).all()


def test_deterministic():
    feats, _, cams = gaussian_clusters(seed=2)
    a = cluster_pseudo_labels(feats, cams)
    b = cluster_pseudo_labels(feats[::-1].copy(), cams[::-1].copy())
    np.testing.assert_array_equal(a.labels, cluster_pseudo_labels(feats, cams).labels)
    assert same_partition(a.labels, b.labels[::-1])


def test_all_outliers():
    rng = np.random.default_rng(0)
    out = cluster_pseudo_labels(rng.normal(size=(6, 8)), np.zeros(6, int), min_samples=50)
    assert out.num_clusters == 0 and out.num_outliers == 6
    assert out.proxy_centers.shape == (0, 8) and len(out.proxy_cluster) == 0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"eps": 1.0}, "eps"),
        ({"eps": 0.0}, "eps"),
        ({"min_samples": 0}, "min_samples"),
    ],
)
def test_argument_errors(kwargs, name):
    feats, _, cams = gaussian_clusters()
    with pytest.raises(ValueError, match=name):
        cluster_pseudo_labels(feats, cams, **kwargs)


def test_shape_errors():
    feats, _, cams = gaussian_clusters()
    with pytest.raises(ValueError, match="camids"):
        cluster_pseudo_labels(feats, cams[:-1])
    with pytest.raises(ValueError, match="features"):
        cluster_pseudo_labels(feats[0], cams)


def test_outliers_as_instance_proxies():
    feats, truth, cams = gaussian_clusters(clusters=3)
    rng = np.random.default_rng(1)
    extra = np.concatenate(  # as in test_outliers_are_set_aside: 4 outliers
        [10 * rng.normal(size=(2, 32)), np.repeat(10 * rng.normal(size=(1, 32)), 2, 0)]
    ).astype(np.float32)
    feats = np.concatenate([feats, extra])
    cams = np.concatenate([cams, [0, 1, 0, 1]])
    out = cluster_pseudo_labels(feats, cams, k1=10, outlier_instances=True)
    assert out.num_clusters == 3 and out.num_outliers == 4
    np.testing.assert_array_equal(out.labels[-4:], -1)  # DBSCAN's view is unchanged
    assert (out.sample_proxy >= 0).all()
    lone = out.sample_proxy[-4:]
    assert len(set(lone.tolist())) == 4  # one proxy each, a cluster id of its own
    assert sorted(out.proxy_cluster[lone].tolist()) == [3, 4, 5, 6]
    np.testing.assert_array_equal(out.proxy_camera[lone], [0, 1, 0, 1])
    unit = torch.nn.functional.normalize(torch.from_numpy(extra), dim=1)
    torch.testing.assert_close(out.proxy_centers[lone], unit)


def test_camera_centring_joins_one_identity_across_camera_offsets():
    # Each camera adds a large offset of its own (its "background"): raw clustering splits by
    # camera, centred clustering recovers the identities.
    rng = np.random.default_rng(0)
    ids, cameras, dim = 6, 2, 32
    centers = rng.normal(size=(ids, dim))
    offsets = 4.0 * rng.normal(size=(cameras, dim))
    truth = np.repeat(np.arange(ids), 8)
    cams = np.tile(np.arange(cameras), len(truth) // cameras)
    feats = (centers[truth] + offsets[cams] + 0.05 * rng.normal(size=(len(truth), dim))).astype(np.float32)
    raw = cluster_pseudo_labels(feats, cams, k1=6, k2=2, min_samples=2)
    centred = cluster_pseudo_labels(feats, cams, k1=6, k2=2, min_samples=2, camera_centre=True)
    assert not same_partition(raw.labels, truth)
    assert same_partition(centred.labels, truth)


def test_site_neighbourhood_shrinks_on_small_sites():
    from fedreid.pseudo_labels import site_neighbourhood

    assert site_neighbourhood(120, 20, 6) == (8, 3)
    assert site_neighbourhood(1002, 20, 6) == (10, 4)
    assert site_neighbourhood(5000, 20, 6) == (20, 6)
    assert site_neighbourhood(12936, 30, 6) == (30, 6)  # Market-sized: FedCAPR's values
    assert site_neighbourhood(30, 4, 6) == (4, 2)  # never above the configured values
