"""Central DP: client clipping, per-element noise scale, ε from dp_accounting (with sampling)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedreid.fl.dp import NoiseScale, add_noise, clip_to_download, gaussian_epsilon
from fedreid.fl.privacy_ledger import RDP_ORDERS, PrivacyLedger, dp_epsilon


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


def _gaussian_rdp_epsilon(z: float, rounds: int, delta: float) -> float:
    """Independent RDP accounting of ``rounds`` Gaussian mechanisms: RDP ``rounds*a/(2 z^2)``
    at the ledger's orders, converted with Canonne-Kamath-Steinke / Asoodeh et al.'s bound."""
    a = np.array(RDP_ORDERS, dtype=np.float64)
    rdp = rounds * a / (2 * z**2)
    return float(np.min(rdp + np.log1p(-1 / a) - np.log(delta * a) / (a - 1)))


def _gaussian_exact_epsilon(z: float, rounds: int, delta: float) -> float:
    """Exact ε of ``rounds`` composed Gaussian mechanisms (Balle & Wang 2018): one Gaussian
    with multiplier z/sqrt(rounds); δ(ε) = Φ(1/(2s) − εs) − e^ε Φ(−1/(2s) − εs), s = z/√T."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    s = z / math.sqrt(rounds)

    def gap(eps):
        return norm.cdf(1 / (2 * s) - eps * s) - math.exp(eps) * norm.cdf(-1 / (2 * s) - eps * s) - delta

    return brentq(gap, 0.0, 100.0)


@pytest.mark.parametrize("z, rounds", [(1.0, 1), (1.0, 20), (2.0, 50), (0.7, 5)])
def test_full_participation_is_gaussian_composition(z, rounds):
    rdp = dp_epsilon(z, 1e-5, [1.0] * rounds)
    assert rdp == pytest.approx(_gaussian_rdp_epsilon(z, rounds, 1e-5), rel=1e-9)
    assert gaussian_epsilon(z, rounds, 1e-5) == rdp
    # PLD is tight: the exact Gaussian figure, below RDP's, which is below the old closed form.
    exact = _gaussian_exact_epsilon(z, rounds, 1e-5)
    assert dp_epsilon(z, 1e-5, [1.0] * rounds, accountant="pld") == pytest.approx(exact, rel=2e-3)
    rho = rounds / (2 * z**2)
    closed = rho * (1 + math.sqrt(math.log(1e5) / rho)) + math.log(1e5) / math.sqrt(math.log(1e5) / rho)
    assert exact < rdp < closed


def test_sampling_fewer_sites_amplifies():
    full = dp_epsilon(1.0, 1e-5, [1.0] * 10)
    half = dp_epsilon(1.0, 1e-5, [0.5] * 10)
    tenth = dp_epsilon(1.0, 1e-5, [0.1] * 10)
    assert tenth < half < full
    assert dp_epsilon(1.0, 1e-5, [0.5] * 10, accountant="pld") < half  # PLD is the tighter
    assert dp_epsilon(1.0, 1e-5, [1.0] * 5 + [0.5] * 5) < full
    assert dp_epsilon(1.0, 1e-5, [0.5] * 20) > half  # more rounds, more ε
    assert gaussian_epsilon(0.0, 3, 1e-5) == math.inf and dp_epsilon(1.0, 1e-5, []) == 0.0
    with pytest.raises(ValueError, match="delta"):
        gaussian_epsilon(1.0, 1, 1.5)
    with pytest.raises(ValueError, match="sampling rate"):
        dp_epsilon(1.0, 1e-5, [0.0])
    with pytest.raises(ValueError, match="accountant"):
        dp_epsilon(1.0, 1e-5, [1.0], accountant="moments")


def test_ledger_records_rounds_and_round_trips():
    ledger = PrivacyLedger(1.2)
    ledger.record_round(sampled=4, population=8)
    ledger.record_round(sampled=8, population=8)
    assert ledger.rates == [0.5, 1.0]
    assert ledger.epsilon(1e-5) == dp_epsilon(1.2, 1e-5, [0.5, 1.0])
    again = PrivacyLedger.from_dict(ledger.to_dict())
    assert again.epsilon(1e-5) == ledger.epsilon(1e-5)
    with pytest.raises(ValueError, match="sampled=9"):
        ledger.record_round(sampled=9, population=8)
    with pytest.raises(ValueError, match="accountant"):
        PrivacyLedger(1.0, accountant="gdp")
