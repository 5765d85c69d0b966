"""Aggregation weights against hand-computed values."""

import math

import numpy as np
import pytest

from fedreid.fl.weights import (
    cosine_distance,
    cosine_distance_weights,
    klaw,
    klpwa,
    normalise,
    praw,
    sample_count_weights,
)

E1 = math.exp(-1.0)


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_klaw_default_more_divergence_more_weight():
    close(klaw([1.0, 3.0]), [0.25, 0.75])
    close(klaw([0.0, 0.0, 0.0]), [1 / 3, 1 / 3, 1 / 3])


def test_klaw_inverse_forms():
    close(klaw([1.0, 3.0], sign="less_divergence_more_weight"), [0.75, 0.25])
    close(klaw([2.0, 6.0], sign="less_divergence_more_weight"), [0.75, 0.25])  # scale-free
    exp_w = [1 / (1 + E1), E1 / (1 + E1)]  # 0.7310585786, 0.2689414214
    close(klaw([0.0, 1.0], sign="less_divergence_more_weight", inverse="exp"), exp_w)
    close(klaw([1000.0, 1001.0], sign="less_divergence_more_weight", inverse="exp"), exp_w)
    close(klaw([0.0, 0.0], sign="less_divergence_more_weight"), [0.5, 0.5])


def test_klaw_rejects_bad_values_naming_the_site():
    with pytest.raises(ValueError, match=r"kl_values\[1\]"):
        klaw([1.0, -1.0])
    with pytest.raises(ValueError, match=r"kl_values\[0\]"):
        klaw([float("nan"), 1.0])
    with pytest.raises(ValueError, match=r"kl_values\[2\]"):
        klaw([1.0, 1.0, float("inf")])
    with pytest.raises(ValueError, match="sign"):
        klaw([1.0], sign="up")
    with pytest.raises(ValueError, match="inverse"):
        klaw([1.0], sign="less_divergence_more_weight", inverse="log")
    with pytest.raises(ValueError, match="non-empty"):
        klaw([])


def test_praw_forms():
    close(praw([0.2, 0.6]), [0.25, 0.75])
    close(praw([0.2, 0.6], form="density"), [2 / 3, 1 / 3])  # 0.8, 0.4 over 1.2
    close(praw([0.2, 0.6], form="inverse_density"), [1 / 3, 2 / 3])  # 1.25, 2.5 over 3.75
    close(praw([0.0, 0.0]), [0.5, 0.5])  # nobody pruned yet: uniform
    with pytest.raises(ValueError, match=r"prune_ratios\[1\]"):
        praw([0.5, 1.2])
    with pytest.raises(ValueError, match=r"prune_ratios\[0\]"):
        praw([1.0, 0.5], form="inverse_density")
    with pytest.raises(ValueError, match="form"):
        praw([0.5], form="sqrt")


def test_klpwa_combinations():
    close(klpwa([0.25, 0.75], [0.5, 0.5]), [0.375, 0.625])  # convex, beta 0.5
    close(klpwa([0.25, 0.75], [0.5, 0.5], combine="product"), [0.25, 0.75])
    close(klpwa([0.2, 0.8], [0.6, 0.4], combine="product"), [0.12 / 0.44, 0.32 / 0.44])
    close(klpwa([0.2, 0.8], [0.6, 0.4], combine="convex", beta=0.25), [0.5, 0.5])
    close(klpwa([1.0, 3.0], [2.0, 2.0], combine="product"), [0.25, 0.75])  # inputs renormalised
    close(klpwa([1.0, 0.0], [0.0, 1.0], combine="product"), [0.5, 0.5])  # all-zero product


def test_klpwa_convex_keeps_a_site_with_zero_pruning():
    # Site 0's pruning was undone by CRR (ratio 0): product would drop it entirely.
    p = praw([0.0, 0.2])
    close(p, [0.0, 1.0])
    close(klpwa([0.5, 0.5], p), [0.25, 0.75])
    close(klpwa([0.5, 0.5], p, combine="product"), [0.0, 1.0])


def test_klpwa_errors():
    with pytest.raises(ValueError, match="one per site"):
        klpwa([0.5, 0.5], [1.0])
    with pytest.raises(ValueError, match="beta"):
        klpwa([0.5, 0.5], [0.5, 0.5], beta=1.5)
    with pytest.raises(ValueError, match="combine"):
        klpwa([0.5, 0.5], [0.5, 0.5], combine="sum")
    with pytest.raises(ValueError, match=r"praw_weights\[1\]"):
        klpwa([0.5, 0.5], [0.5, -0.5])


def test_sample_count_and_normalise():
    close(sample_count_weights([100, 300]), [0.25, 0.75])
    close(sample_count_weights([0, 0]), [0.5, 0.5])
    close(normalise(np.array([2.0, 2.0, 4.0])), [0.25, 0.25, 0.5])
    with pytest.raises(ValueError, match=r"num_examples\[0\]"):
        sample_count_weights([-5, 3])


def test_cosine_distance_and_cdw():
    old = np.array([[1.0, 0.0], [0.0, 1.0]])
    new = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert cosine_distance(old, new) == pytest.approx(0.5)  # distances 0 and 1
    assert cosine_distance([[1.0, 1.0]], [[1.0, 0.0]]) == pytest.approx(1 - 1 / math.sqrt(2))
    assert cosine_distance([[0.0, 0.0]], [[1.0, 0.0]]) == pytest.approx(1.0)  # zero row
    same = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    assert 0.0 <= cosine_distance(same, same) < 1e-6  # clipped, never negative
    close(cosine_distance_weights([0.1, 0.3]), [0.25, 0.75])
    with pytest.raises(ValueError, match="rows"):
        cosine_distance(old, new[:1])
