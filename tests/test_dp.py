"""Central DP: client clipping against the download, per-element noise scale, ε accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedreid.fl.dp import NoiseScale, add_noise, clip_to_download, gaussian_epsilon


def _state(rng, scale=1.0):
    return {"w": (scale * rng.normal(size=(6, 5))).astype(np.float32),
            "bn.running_var": np.ones(5, np.float32),
            "bn.num_batches_tracked": np.array(3, np.int64)}


def test_clip_bounds_the_update_and_keeps_pruned_zeros():
    rng = np.random.default_rng(0)
    download = _state(rng)
    mask = rng.random((6, 5)) > 0.4
    trained = {k: v.copy() for k, v in download.items()}
    trained["w"] = (download["w"] + 5.0 * rng.normal(size=(6, 5)).astype(np.float32)) * mask
    trained["bn.running_var"] = download["bn.running_var"] + 2.0
    clipped, norm = clip_to_download(trained, download, {"w": mask}, clipping_norm=1.0)
    base_w = download["w"] * mask
    assert norm == pytest.approx(float(np.linalg.norm(trained["w"] - base_w)), rel=1e-5)
    assert np.linalg.norm(clipped["w"] - base_w) == pytest.approx(1.0, rel=1e-5)
    assert np.all(clipped["w"][~mask] == 0.0)
    # BN statistics stay on the site: the reply carries the downloaded ones back
    np.testing.assert_array_equal(clipped["bn.running_var"], download["bn.running_var"])
    assert clipped["bn.num_batches_tracked"] == 3 and clipped["w"].dtype == np.float32


def test_small_update_is_left_alone():
    rng = np.random.default_rng(1)
    download = _state(rng)
    trained = {k: v.copy() for k, v in download.items()}
    trained["w"] = trained["w"] + 1e-3
    clipped, norm = clip_to_download(trained, download, {}, clipping_norm=10.0)
    assert norm < 10.0
    np.testing.assert_allclose(clipped["w"], trained["w"], rtol=0, atol=1e-7)


def test_clip_rejects_bad_norm_and_missing_keys():
    rng = np.random.default_rng(2)
    s = _state(rng)
    with pytest.raises(ValueError, match="clipping_norm"):
        clip_to_download(s, s, {}, clipping_norm=0.0)
    with pytest.raises(ValueError, match="download lacks"):
        clip_to_download(s, {"w": s["w"]}, {}, clipping_norm=1.0)


def test_noise_scale_is_the_largest_effective_weight():
    g = {"w": np.zeros(4, np.float32), "b": np.zeros(2, np.float32), "n": np.array(0, np.int64)}
    ns = NoiseScale(g)
    ns.add(1.0, {"w": np.array([1, 1, 0, 0], bool)})
    ns.add(3.0, {"w": np.array([1, 0, 1, 0], bool)})
    s = ns.scales()
    np.testing.assert_allclose(s["w"], [0.75, 1.0, 1.0, 0.0])  # kept by both / one / one / none
    np.testing.assert_allclose(s["b"], [0.75, 0.75])  # unmasked: max weight / sum
    assert "n" not in s
    # Uniform weights, no masks: Flower's z*C/n.
    ns = NoiseScale(g)
    for _ in range(4):
        ns.add(0.25, {})
    np.testing.assert_allclose(ns.scales()["w"], 0.25)
    # SAS off: masks are ignored (a pruned zero is averaged in like any value).
    ns = NoiseScale(g, mask_aware=False)
    ns.add(1.0, {"w": np.array([1, 0, 0, 0], bool)})
    ns.add(1.0, {})
    np.testing.assert_allclose(ns.scales()["w"], 0.5)


def test_noise_has_the_calibrated_std_and_spares_unreleased_elements():
    rng = np.random.default_rng(3)
    n = 200_000
    state = {"w": np.zeros(n, np.float32), "bn.running_var": np.ones(4, np.float32)}
    s = np.zeros(n, np.float32)
    s[: n // 2] = 0.5
    noisy, top = add_noise(state, {"w": s}, noise_multiplier=2.0, clipping_norm=0.1, rng=rng)
    assert top == pytest.approx(0.1)
    assert np.std(noisy["w"][: n // 2]) == pytest.approx(0.1, rel=0.02)
    assert np.all(noisy["w"][n // 2:] == 0.0)
    np.testing.assert_array_equal(noisy["bn.running_var"], 1.0)  # not released, not noised
    assert "bn.running_var" not in NoiseScale(state).scales()


def test_epsilon_matches_the_rdp_formula_and_orders():
    # z = 1, one release, δ = 1e-5: α* = 1 + sqrt(2 log 1e5), ε = α*/2 + log(1e5)/(α* - 1)
    a = 1 + math.sqrt(2 * math.log(1e5))
    assert gaussian_epsilon(1.0, 1, 1e-5) == pytest.approx(a / 2 + math.log(1e5) / (a - 1))
    assert gaussian_epsilon(2.0, 10, 1e-5) < gaussian_epsilon(1.0, 10, 1e-5)
    assert gaussian_epsilon(1.0, 20, 1e-5) > gaussian_epsilon(1.0, 10, 1e-5)
    assert gaussian_epsilon(0.0, 3, 1e-5) == math.inf
    with pytest.raises(ValueError, match="delta"):
        gaussian_epsilon(1.0, 1, 1.5)
