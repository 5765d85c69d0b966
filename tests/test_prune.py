"""Pruning masks, the magnitude schedule and exact zeros through training."""

import pytest
import torch
from torch import nn

from fedreid.prune import (
    MaskedParameters,
    apply_masks,
    init_masks,
    magnitude_prune,
    prunable_names,
    pruning_due,
    sparsity,
    target_reached,
)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.downsample = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
        self.fc = nn.Linear(4, 6)
        self.neck = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)) + self.downsample(x))
        return self.neck(self.fc(y.mean(dim=(2, 3))))


def toy_state() -> dict[str, torch.Tensor]:
    return {
        "a.weight": torch.arange(1.0, 11.0).reshape(2, 5),
        "b.weight": torch.tensor([0.5, -4.0, 3.0, -2.0]).reshape(1, 1, 2, 2),
    }


def pruned_values(state, masks):
    return {n: sorted(state[n][~m].abs().tolist()) for n, m in masks.items()}


def test_prunable_names_conv_linear_only():
    model = Tiny()
    names = ["conv.weight", "downsample.0.weight", "fc.weight"]
    assert prunable_names(model) == names
    assert prunable_names(model.state_dict()) == names
    assert prunable_names(model, exclude=("downsample",)) == ["conv.weight", "fc.weight"]
    assert prunable_names(model, include=("linear",)) == ["fc.weight"]
    with pytest.raises(ValueError, match="include"):
        prunable_names(model, include=("bn",))


def test_init_masks_and_sparsity():
    masks = init_masks(Tiny())
    assert set(masks) == {"conv.weight", "downsample.0.weight", "fc.weight"}
    assert all(m.dtype == torch.bool and bool(m.all()) for m in masks.values())
    assert sparsity(masks) == 0.0
    assert sparsity({}) == 0.0
    assert sparsity({"x": torch.tensor([True, False, False, False])}) == 0.75
    with pytest.raises(ValueError, match="nope"):
        init_masks(Tiny(), names=["nope"])


def test_layer_scope_schedule_hand_computed():
    state = toy_state()
    m0 = init_masks(state)
    # 14 weights, step 0.5 -> 7 pruned, shares a: 7*10/14 = 5, b: 7*4/14 = 2.
    m1 = magnitude_prune(state, m0, step=0.5, target=0.9, scope="layer")
    assert pruned_values(state, m1) == {"a.weight": [1, 2, 3, 4, 5], "b.weight": [0.5, 2]}
    assert sparsity(m1) == pytest.approx(7 / 14)
    assert all(bool(m.all()) for m in m0.values())  # inputs untouched
    # 7 remaining, step 0.5 -> 3; shares a: 15/7 = 2.14 -> 2, b: 6/7 = 0.86 -> 0 + remainder 1.
    m2 = magnitude_prune(state, m1, step=0.5, target=0.9, scope="layer")
    assert pruned_values(state, m2) == {"a.weight": [1, 2, 3, 4, 5, 6, 7], "b.weight": [0.5, 2, 3]}
    assert sparsity(m2) == pytest.approx(10 / 14)


def test_target_caps_the_step():
    state = toy_state()
    m1 = magnitude_prune(state, init_masks(state), step=0.5, target=0.6, scope="layer")
    # floor(0.6 * 14) = 8 allowed, 7 already pruned -> only 1 more (goes to a, share 5/7).
    m2 = magnitude_prune(state, m1, step=0.5, target=0.6, scope="layer")
    assert pruned_values(state, m2) == {"a.weight": [1, 2, 3, 4, 5, 6], "b.weight": [0.5, 2]}
    assert sparsity(m2) == pytest.approx(8 / 14)
    m3 = magnitude_prune(state, m2, step=0.5, target=0.6, scope="layer")
    assert all(torch.equal(m3[n], m2[n]) for n in m2)
    mg = magnitude_prune(state, init_masks(state), step=1.0, target=0.5, scope="global")
    assert sparsity(mg) == pytest.approx(0.5)


def test_global_scope_one_threshold_ties_by_position():
    state = toy_state()
    m = magnitude_prune(state, init_masks(state), step=0.5, target=1.0, scope="global")
    # 7 smallest |w| of all 14: 0.5, 1, 2, 2, 3, 3 and one of the two 4s (a's, first in order).
    assert pruned_values(state, m) == {"a.weight": [1, 2, 3, 4], "b.weight": [0.5, 2, 3]}


def test_pruned_stay_pruned_and_edge_cases():
    state = toy_state()
    m1 = magnitude_prune(state, init_masks(state), step=0.5, target=1.0, scope="global")
    state["a.weight"][0, 0] = 100.0  # a pruned position that regrew must stay pruned
    m2 = magnitude_prune(state, m1, step=0.5, target=1.0, scope="global")
    assert not bool(m2["a.weight"][0, 0])
    assert all(torch.equal(magnitude_prune(state, m1, 0.0, 1.0)[n], m1[n]) for n in m1)
    with pytest.raises(ValueError, match="step"):
        magnitude_prune(state, m1, step=1.5, target=0.5)
    with pytest.raises(ValueError, match="scope"):
        magnitude_prune(state, m1, step=0.5, target=0.5, scope="net")
    with pytest.raises(ValueError, match="shape"):
        magnitude_prune(state, {"a.weight": torch.ones(3, dtype=torch.bool)}, 0.5, 0.5)


def test_apply_masks_zeroes_in_place():
    state = {"w": torch.tensor([-1.0, 2.0, -3.0])}
    apply_masks(state, {"w": torch.tensor([False, True, False])})
    assert state["w"].tolist() == [0.0, 2.0, 0.0]


def _train(model, opt, masks, steps, remask=True, mask_grads=False):
    torch.manual_seed(1)
    masked = MaskedParameters(model, masks) if masks is not None else None
    params = dict(model.named_parameters())
    for _ in range(steps):
        x = torch.randn(4, 3, 6, 6)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        if mask_grads:
            for n, m in masks.items():
                params[n].grad.mul_(m)
        opt.step()
        if masked is not None and remask:
            masked.reapply()


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=5e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero(name):
    torch.manual_seed(0)
    model = Tiny()
    opt = OPTIMIZERS[name](model.parameters())
    _train(model, opt, None, 2)  # momentum / moments built up before pruning
    masks = magnitude_prune(model, init_masks(model), step=0.5, target=0.5, scope="global")
    apply_masks(model, masks)
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in masks}
    _train(model, opt, masks, 3)
    for n, m in masks.items():
        w = params[n].detach()
        assert bool((w[~m] == 0).all())
        assert not torch.equal(w[m], before[n][m])  # the kept weights did train


def test_without_reapplying_adam_moves_pruned_weights():
    torch.manual_seed(0)
    model = Tiny()
    opt = OPTIMIZERS["adam"](model.parameters())
    _train(model, opt, None, 3)
    masks = magnitude_prune(model, init_masks(model), step=0.5, target=0.5)
    apply_masks(model, masks)
    _train(model, opt, masks, 2, remask=False)
    w = dict(model.named_parameters())["conv.weight"].detach()
    assert bool((w[~masks["conv.weight"]] != 0).any())


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_masking_gradients_too_would_change_no_kept_weight(name):
    """Why training re-zeroes weights but leaves gradients alone: the optimisers are elementwise."""
    trained = []
    for mask_grads in (False, True):
        torch.manual_seed(0)
        model = Tiny()
        opt = OPTIMIZERS[name](model.parameters())
        _train(model, opt, None, 2)
        masks = magnitude_prune(model, init_masks(model), step=0.5, target=0.5, scope="global")
        apply_masks(model, masks)
        _train(model, opt, masks, 3, mask_grads=mask_grads)
        trained.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for name_, value in trained[0].items():
        torch.testing.assert_close(value, trained[1][name_], rtol=0, atol=0)


def test_masked_parameters_reject_foreign_masks():
    model = Tiny()
    with pytest.raises(ValueError, match="not parameters"):
        MaskedParameters(model, {"nope.weight": torch.ones(2, dtype=torch.bool)})


def masks_at(sparsity_now: float, elements: int = 1000) -> dict[str, torch.Tensor]:
    """One mask of ``elements`` with ``sparsity_now`` of them pruned (rounded to an element)."""
    m = torch.ones(elements, dtype=torch.bool)
    m[: round(sparsity_now * elements)] = False
    return {"w": m}


@pytest.mark.parametrize(
    "server_round, sparsity_now, allowed, due",
    [
        (2, 0.0, True, False),  # before start_round
        (3, 0.0, True, True),  # start_round
        (4, 0.2, True, False),  # off the every-2 schedule
        (5, 0.2, True, True),
        (7, 0.6, True, False),  # target reached
        (7, 0.6 - 1e-13, True, False),  # reached up to rounding
        (7, 0.4, False, False),  # cross-round recovery forbids it
    ],
)
def test_pruning_due_follows_start_every_target_and_recovery(server_round, sparsity_now, allowed, due):
    assert pruning_due(server_round, start_round=3, every=2, masks=masks_at(sparsity_now),
                       target=0.6, allowed=allowed) is due


def test_the_target_counts_as_reached_where_magnitude_pruning_stops():
    state = {"a.weight": torch.randn(7, 7), "b.weight": torch.randn(3, 11)}  # 82 elements
    masks = init_masks(state, list(state))
    masks = magnitude_prune(state, masks, step=0.9, target=0.3)
    assert sparsity(masks) < 0.3 and target_reached(masks, 0.3)  # 24 of 82 = floor(24.6)
    again = magnitude_prune(state, masks, step=0.9, target=0.3)
    assert all(torch.equal(again[k], masks[k]) for k in masks)  # nothing left to prune
    assert not target_reached(masks, 0.35)


def test_pruning_due_rejects_a_schedule_without_steps():
    with pytest.raises(ValueError, match="every=0"):
        pruning_due(1, start_round=1, every=0, masks=masks_at(0.0), target=0.6)
