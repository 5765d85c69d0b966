"""Losses against hand-computed small cases and naive reference loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedreid.losses import (
    CameraProxyMemoryLoss,
    CenterLoss,
    CentroidTripletLoss,
    CrossEntropyLabelSmooth,
    SupConLoss,
    TripletLoss,
    center_loss_optimizer,
    kl_feature_loss,
    mean_kl_divergence,
    rescale_center_grads,
)

sqrt = math.sqrt
log = math.log
e = math.e


def t(rows, grad=False):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def labels(values):
    return torch.tensor(values, dtype=torch.long)


# --- label-smoothed cross-entropy -------------------------------------------------------


def test_cross_entropy_hand_value():
    # p = (1/4, 3/4); target for class 1 with eps 0.1, C 2 = (0.05, 0.95)
    logits = t([[0.0, log(3.0)]])
    loss = CrossEntropyLabelSmooth(2, 0.1)(logits, labels([1]))
    assert loss.item() == pytest.approx(-(0.05 * log(0.25) + 0.95 * log(0.75)))


def test_cross_entropy_matches_torch_label_smoothing_and_eps_zero():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    ours = CrossEntropyLabelSmooth(5, 0.1)(logits, y)
    assert ours.item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item())
    plain = CrossEntropyLabelSmooth(5, 0.0)(logits, y)
    assert plain.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_cross_entropy_errors():
    with pytest.raises(ValueError, match="num_classes"):
        CrossEntropyLabelSmooth(0)
    with pytest.raises(ValueError, match="epsilon"):
        CrossEntropyLabelSmooth(3, 1.0)
    loss = CrossEntropyLabelSmooth(3)
    with pytest.raises(ValueError, match="logits"):
        loss(torch.zeros(2, 4), labels([0, 1]))
    with pytest.raises(ValueError, match="targets must lie"):
        loss(torch.zeros(2, 3), labels([0, 3]))


# --- batch-hard triplet -------------------------------------------------------------------

# A0=(0,0), A1=(0,1) identity 0; B0=(3,0), B1=(3,2) identity 1.
# d(A0,A1)=1, d(B0,B1)=2, d(A0,B0)=3, d(A0,B1)=sqrt13, d(A1,B0)=d(A1,B1)=sqrt10.
SQUARE = [[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 2.0]]
SQUARE_GAPS = [1 - 3, 1 - sqrt(10), 2 - 3, 2 - sqrt(10)]  # d_ap - d_an per anchor


def test_triplet_hand_value_margin():
    loss = TripletLoss(margin=2.5)(t(SQUARE), labels([0, 0, 1, 1]))
    expected = sum(max(0.0, gap + 2.5) for gap in SQUARE_GAPS) / 4
    assert loss.item() == pytest.approx(expected)
    assert TripletLoss(margin=0.3)(t(SQUARE), labels([0, 0, 1, 1])).item() == 0.0


def test_triplet_soft_margin():
    loss = TripletLoss(margin=None)(t(SQUARE), labels([0, 0, 1, 1]))
    expected = sum(log(1 + math.exp(gap)) for gap in SQUARE_GAPS) / 4
    assert loss.item() == pytest.approx(expected)


def test_triplet_unequal_counts_and_singleton_anchor():
    # identity 0 has three samples, identity 1 two, identity 2 one (a negative only).
    pts = SQUARE[:2] + [[0.0, -2.0]] + SQUARE[2:] + [[10.0, 10.0]]
    y = labels([0, 0, 0, 1, 1, 2])
    # A0: ap max(1, 2)=2, an 3; A1: ap 3, an sqrt10; C=(0,-2): ap 3, an d(C,B0)=sqrt13;
    # B0: ap 2, an 3; B1: ap 2, an sqrt10. The singleton (10,10) is never the nearest negative.
    gaps = [2 - 3, 3 - sqrt(10), 3 - sqrt(13), 2 - 3, 2 - sqrt(10)]
    loss = TripletLoss(margin=1.0)(t(pts), y)
    assert loss.item() == pytest.approx(sum(max(0.0, g + 1.0) for g in gaps) / 5)


def test_triplet_single_identity_is_zero_with_graph():
    x = t(SQUARE, grad=True)
    loss = TripletLoss()(x, labels([7, 7, 7, 7]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    # all singletons: no positives anywhere
    assert TripletLoss(None)(t(SQUARE), labels([0, 1, 2, 3])).item() == 0.0


def test_triplet_gradient_step_reduces_loss():
    torch.manual_seed(1)
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    y = labels([0, 0, 1, 1, 2, 2, 3, 3])
    crit = TripletLoss(margin=1.0)
    loss = crit(x, y)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        assert crit(x - 0.01 * x.grad, y) < loss


def test_triplet_errors():
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(-1.0)
    with pytest.raises(ValueError, match="labels"):
        TripletLoss()(torch.zeros(3, 2), labels([0, 1]))
    with pytest.raises(ValueError, match="feats"):
        TripletLoss()(torch.zeros(3), labels([0, 1, 2]))


# --- center loss --------------------------------------------------------------------------


def test_center_loss_hand_value_and_grads():
    crit = CenterLoss(2, 2).double()
    with torch.no_grad():
        crit.centers.copy_(t([[0.0, 0.0], [1.0, 1.0]]))
    x = t([[1.0, 0.0], [1.0, 3.0]], grad=True)
    loss = crit(x, labels([0, 1]))
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)
    loss.backward()
    # d/dc ||f - c||^2 / B = 2 (c - f) / B
    assert torch.allclose(crit.centers.grad, t([[-1.0, 0.0], [0.0, -2.0]]))
    assert torch.allclose(x.grad, t([[1.0, 0.0], [0.0, 2.0]]))


def test_center_rescale_undoes_weight_and_sgd_moves_centres():
    torch.manual_seed(2)
    crit = CenterLoss(3, 4).double()
    x, y = torch.randn(5, 4, dtype=torch.float64), labels([0, 0, 1, 2, 2])
    crit(x, y).backward()
    unweighted = crit.centers.grad.clone()
    crit.zero_grad()
    (0.0005 * crit(x, y)).backward()
    rescale_center_grads(crit, 0.0005)
    assert torch.allclose(crit.centers.grad, unweighted)
    before = crit.centers.detach().clone()
    opt = center_loss_optimizer(crit, lr=0.5)
    opt.step()
    assert torch.allclose(crit.centers.detach(), before - 0.5 * unweighted)


def test_center_errors():
    crit = CenterLoss(2, 3)
    with pytest.raises(ValueError, match="dim 3"):
        crit(torch.zeros(2, 4), labels([0, 1]))
    with pytest.raises(ValueError, match="labels must lie"):
        crit(torch.zeros(2, 3), labels([0, 2]))
    with pytest.raises(ValueError, match="weight"):
        rescale_center_grads(crit, 0.0)
    with pytest.raises(ValueError, match="lr"):
        center_loss_optimizer(crit, lr=0.0)


# --- centroid triplet ---------------------------------------------------------------------

# Identity 0: (0,0), (0,2), (0,6); identity 1: (5,0), (5,2), interleaved in the batch.
CTL_POINTS = [[0.0, 0.0], [5.0, 0.0], [0.0, 2.0], [5.0, 2.0], [0.0, 6.0]]
CTL_LABELS = [0, 1, 0, 1, 0]


def ctl_expected(margin):
    # Mask 0: queries (0,0), (5,0); centroids (0,4), (5,2).
    mask0 = [4 - 5, 2 - 5, 4 - sqrt(29), 2 - sqrt(29)]
    # Mask 1: queries (0,2), (5,2); centroids (0,3), (5,0).
    mask1 = [1 - 5, 2 - 5, 1 - sqrt(26), 2 - sqrt(29)]
    # Mask 2: only identity 0 has a third sample -> no negatives, mask left out.
    return sum(sum(max(0.0, g + margin) for g in m) / 4 for m in (mask0, mask1)) / 2


def test_centroid_triplet_hand_value():
    loss = CentroidTripletLoss(margin=5.0)(t(CTL_POINTS), labels(CTL_LABELS))
    assert loss.item() == pytest.approx(ctl_expected(5.0))
    loss = CentroidTripletLoss(margin=0.5)(t(CTL_POINTS), labels(CTL_LABELS))
    assert loss.item() == pytest.approx(ctl_expected(0.5))


def test_centroid_triplet_skips_single_sample_identities():
    pts, y = CTL_POINTS + [[0.0, 5.0]], CTL_LABELS + [9]
    loss = CentroidTripletLoss(margin=5.0)(t(pts), labels(y))
    assert loss.item() == pytest.approx(ctl_expected(5.0))
    x = t(SQUARE, grad=True)
    zero = CentroidTripletLoss()(x, labels([0, 1, 2, 3]))
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_centroid_triplet_gradient_flows():
    torch.manual_seed(3)
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    CentroidTripletLoss(margin=2.0)(x, labels([0, 1, 2, 3] * 2)).backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum(1) > 0).all()


# --- SupCon -------------------------------------------------------------------------------


def test_supcon_hand_value_two_classes():
    # two samples x two identical views: each anchor has 1 positive (sim 1), 2 negatives (sim 0)
    feats = t([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    T, bT = 0.1, 0.07
    loss = SupConLoss(T, bT)(feats, labels([0, 1]))
    expected = -(T / bT) * (1 / T - log(math.exp(1 / T) + 2))
    assert loss.item() == pytest.approx(expected)
    # same label: 3 positives per anchor, mean of their log-probabilities
    loss = SupConLoss(T, bT)(feats, labels([4, 4]))
    denom = log(math.exp(1 / T) + 2)
    expected = -(T / bT) * ((1 / T - denom) + 2 * (0 - denom)) / 3
    assert loss.item() == pytest.approx(expected)


def test_supcon_normalises_inside_and_scales_with_temperature_ratio():
    torch.manual_seed(4)
    feats, y = torch.randn(4, 2, 8, dtype=torch.float64), labels([0, 0, 1, 2])
    base = SupConLoss()(feats, y)
    assert SupConLoss()(7.0 * feats, y).item() == pytest.approx(base.item())
    assert SupConLoss(0.1, 0.1)(feats, y).item() == pytest.approx(base.item() * 0.07 / 0.1)


def test_supcon_anchor_without_positive_is_left_out():
    # one view: only samples 0 and 1 (same label) have a positive.
    feats = t([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]], grad=True)
    loss = SupConLoss(1.0, 1.0)(feats, labels([0, 0, 1]))
    c = 1 / sqrt(2)  # cosine to the third vector
    expected = -(0 - log(math.exp(0) + math.exp(c)))  # both anchors are symmetric
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert torch.isfinite(feats.grad).all()


def test_supcon_errors():
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(0.0)
    with pytest.raises(ValueError, match="views"):
        SupConLoss()(torch.zeros(2, 3), labels([0, 1]))
    with pytest.raises(ValueError, match="at least 2"):
        SupConLoss()(torch.ones(1, 1, 3), labels([0]))
    with pytest.raises(ValueError, match="labels"):
        SupConLoss()(torch.ones(2, 2, 3), labels([0, 1, 2]))


# --- camera-aware proxy memory ------------------------------------------------------------


def naive_cap(feats, targets, camids, memory, cluster, camera, T, knn, reduction):
    """Per-sample loop in the FedCAPR style: returns (intra, inter), reduced."""
    feats = F.normalize(feats, dim=1)
    n_proxies = memory.shape[0]
    intra, inter = [], []
    for i in range(feats.shape[0]):
        own = int(targets[i])
        cam_proxies = [p for p in range(n_proxies) if camera[p] == camera[own]]
        logits = torch.stack([feats[i] @ memory[p] for p in cam_proxies]) / T
        intra.append(-torch.log_softmax(logits, 0)[cam_proxies.index(own)])
        pos = [p for p in range(n_proxies) if cluster[p] == cluster[own]]
        negs = [p for p in range(n_proxies) if cluster[p] != cluster[own]]
        negs.sort(key=lambda p: -float(feats[i].detach() @ memory[p]))
        chosen = pos + negs[:knn]
        logits = torch.stack([feats[i] @ memory[p] for p in chosen]) / T
        inter.append(-torch.log_softmax(logits, 0)[: len(pos)].mean())
    if reduction == "mean":
        w = [1.0 / len(intra)] * len(intra)
    else:
        w = [1.0 / int((camids == camids[i]).sum()) for i in range(len(intra))]
    return sum(a * b for a, b in zip(w, intra, strict=True)), sum(
        a * b for a, b in zip(w, inter, strict=True)
    )


def random_proxies(seed, n_proxies=18, n_cams=3, n_clusters=6, dim=8):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_proxies, dim, generator=g, dtype=torch.float64)
    cluster = torch.arange(n_proxies) % n_clusters
    camera = torch.randint(0, n_cams, (n_proxies,), generator=g)
    targets = torch.randint(0, n_proxies, (24,), generator=g)
    feats = F.normalize(torch.randn(24, dim, generator=g, dtype=torch.float64), dim=1)
    return centers, cluster, camera, targets, feats


def test_cap_hand_value():
    crit = CameraProxyMemoryLoss(temperature=1.0)
    # p0=(1,0) cam 0 cluster 0; p1=(0,1) cam 0 cluster 1; p2=(1,0) cam 1 cluster 0.
    crit.reset(t([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), labels([0, 1, 0]), labels([0, 0, 1]))
    intra, inter = crit.terms(t([[1.0, 0.0]]), labels([0]), labels([0]))
    assert intra.item() == pytest.approx(-log(e / (e + 1)))  # among (p0, p1): sims (1, 0)
    assert inter.item() == pytest.approx(-log(e / (2 * e + 1)))  # positives p0, p2; neg p1
    loss = crit(t([[1.0, 0.0]]), labels([0]), labels([0]))
    assert loss.item() == pytest.approx(0.6 * intra.item() + 0.7 * inter.item())
    crit.bg_knn = 0  # positives only: softmax over two equal logits
    assert crit.terms(t([[1.0, 0.0]]), labels([0]), labels([0]))[1].item() == pytest.approx(log(2))


@pytest.mark.parametrize(("knn", "reduction"), [(4, "mean"), (50, "mean"), (4, "camera_sum")])
def test_cap_matches_naive_loop(knn, reduction):
    centers, cluster, camera, targets, feats = random_proxies(5)
    crit = CameraProxyMemoryLoss(bg_knn=knn, reduction=reduction).double()
    crit.reset(centers, cluster, camera)
    memory = F.normalize(centers, dim=1)
    camids = camera[targets]
    x = feats.clone().requires_grad_(True)
    intra, inter = crit.terms(x, targets, camids)
    x_ref = feats.clone().requires_grad_(True)
    ref_intra, ref_inter = naive_cap(
        x_ref, targets, camids, memory, cluster, camera, 0.07, knn, reduction
    )
    assert intra.item() == pytest.approx(ref_intra.item(), abs=1e-5)
    assert inter.item() == pytest.approx(ref_inter.item(), abs=1e-5)
    (0.6 * intra + 0.7 * inter).backward()
    (0.6 * ref_intra + 0.7 * ref_inter).backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)


def test_cap_memory_update_matches_sequential_loop_and_keeps_backward_valid():
    centers, cluster, camera, targets, feats = random_proxies(6)
    crit = CameraProxyMemoryLoss(alpha=0.2).double()
    crit.reset(centers, cluster, camera)
    expected = F.normalize(centers, dim=1)
    for x, p in zip(feats, targets, strict=True):  # CAP: sample by sample, renormalising each time
        expected[p] = 0.2 * expected[p] + 0.8 * x
        expected[p] = expected[p] / expected[p].norm()
    x = feats.clone().requires_grad_(True)
    loss = crit(x, targets, camera[targets])
    crit.update(x, targets)  # before backward: the old memory must still serve the graph
    loss.backward()
    assert torch.allclose(crit.memory, expected, atol=1e-10)
    assert torch.allclose(crit.memory.norm(dim=1), torch.ones(len(centers), dtype=torch.float64))
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_cap_errors():
    crit = CameraProxyMemoryLoss()
    with pytest.raises(ValueError, match="reset"):
        crit(torch.ones(1, 2), labels([0]), labels([0]))
    with pytest.raises(ValueError, match="proxy_camera"):
        crit.reset(torch.ones(3, 2), labels([0, 1, 2]), labels([0, 1]))
    crit.reset(torch.eye(2), labels([0, 1]), labels([0, 1]))
    with pytest.raises(ValueError, match="camids"):
        crit(torch.ones(1, 2), labels([0]), labels([1]))
    with pytest.raises(ValueError, match="proxy_targets must lie"):
        crit(torch.ones(1, 2), labels([2]), labels([0]))
    with pytest.raises(ValueError, match="reduction"):
        CameraProxyMemoryLoss(reduction="sum")


# --- KL regulariser -----------------------------------------------------------------------


def test_kl_hand_values_and_direction_asymmetry():
    tau = 0.5
    local = t([[0.0, 0.0], [1.0, 2.0]], grad=True)  # row 0: p_local = (1/2, 1/2)
    ref = t([[tau * log(3.0), 0.0], [1.0, 2.0]])  # row 0: p_ref = (3/4, 1/4); row 1 equal
    r2l = 0.75 * log(0.75 / 0.5) + 0.25 * log(0.25 / 0.5)
    l2r = 0.5 * log(0.5 / 0.75) + 0.5 * log(0.5 / 0.25)
    assert kl_feature_loss(local, ref, tau).item() == pytest.approx(r2l / 2)
    assert kl_feature_loss(local, ref, tau, "local_to_ref").item() == pytest.approx(l2r / 2)
    assert kl_feature_loss(local, ref, tau, "symmetric").item() == pytest.approx((r2l + l2r) / 4)
    assert r2l != pytest.approx(l2r)
    torch_kl = F.kl_div(
        F.log_softmax(local / tau, 1), F.softmax(ref / tau, 1), reduction="batchmean"
    )
    assert kl_feature_loss(local, ref, tau).item() == pytest.approx(torch_kl.item())


@pytest.mark.parametrize("direction", ["ref_to_local", "local_to_ref", "symmetric"])
def test_kl_zero_when_identical_and_reference_detached(direction):
    torch.manual_seed(7)
    local = torch.randn(4, 16, requires_grad=True)
    ref = local.detach().clone().requires_grad_(True)
    assert kl_feature_loss(local, ref, 0.1, direction).item() == pytest.approx(0.0, abs=1e-6)
    shifted = kl_feature_loss(local, ref + torch.randn(4, 16), 0.1, direction)
    shifted.backward()
    assert shifted.item() > 0 and local.grad.abs().sum() > 0 and ref.grad is None


def test_mean_kl_divergence_is_a_float_without_graph():
    torch.manual_seed(8)
    local, ref = torch.randn(5, 6, requires_grad=True), torch.randn(5, 6)
    value = mean_kl_divergence(local, ref, tau=0.2, direction="local_to_ref")
    assert isinstance(value, float)
    expected = kl_feature_loss(local.double(), ref.double(), 0.2, "local_to_ref").item()
    assert value == pytest.approx(expected)


def test_kl_errors():
    a = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="same shape"):
        kl_feature_loss(a, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="tau"):
        kl_feature_loss(a, a, tau=0.0)
    with pytest.raises(ValueError, match="direction"):
        mean_kl_divergence(a, a, direction="forward")


# --- float32 smoke: every loss gives a finite float32 scalar and finite gradients ----------


def test_all_losses_float32_finite():
    torch.manual_seed(9)
    x = torch.randn(8, 6, requires_grad=True)
    y = labels([0, 0, 1, 1, 2, 2, 3, 3])
    cap = CameraProxyMemoryLoss(bg_knn=3)
    cap.reset(torch.randn(6, 6), labels([0, 0, 1, 1, 2, 3]), labels([0, 1, 0, 1, 0, 1]))
    targets = labels([0, 1, 2, 3, 4, 5, 0, 2])
    values = [
        CrossEntropyLabelSmooth(6)(x, y),
        TripletLoss()(x, y),
        TripletLoss(None)(x, y),
        CenterLoss(4, 6)(x, y),
        CentroidTripletLoss()(x, y),
        SupConLoss()(x.view(4, 2, 6), labels([0, 1, 2, 3])),
        cap(F.normalize(x, dim=1), targets, cap.proxy_camera[targets]),
        kl_feature_loss(x, torch.randn(8, 6)),
    ]
    for value in values:
        assert value.dtype == torch.float32 and value.dim() == 0 and torch.isfinite(value)
    sum(values).backward()
    assert torch.isfinite(x.grad).all()
