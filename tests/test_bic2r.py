"""Bi-C2R: the transfer network (identity at start, exportable for the gallery index), the
compatibility losses on hand-made cases, the method's step and download hook, and a
federated run whose sites hand their gallery an upgrade transfer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clients.app import make_client_app
from fedreid.client_state import ClientState
from fedreid.config import load_config
from fedreid.config.presets import strategy_overrides
from fedreid.data.split_images import load_split_images
from fedreid.data.synth import generate_synthetic8
from fedreid.index import (
    ItemRecord,
    ModelRef,
    SiteIndex,
    build_version,
    load_transfer,
    upgrade_version,
)
from fedreid.losses.compat import (
    affinity_alpha,
    anti_forgetting,
    directional_consistency,
    feature_alignment,
    forgetting_target,
    logit_distillation,
    relation_distillation,
)
from fedreid.methods.bic2r import Bic2rOptions, calibrate_upgrade, fit_transfer, upgrade_transfer
from fedreid.models.transfer_net import TransferNet
from fedreid.report import load_records
from fedreid.training import LocalTrainer
from server.app import run_server
from sims.inprocess_grid import InProcessGrid

SITES = ["market", "cuhk01"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate_synthetic8(root, scale=0.05, seed=3, size=(32, 16), sites=SITES, min_test_ids=6, workers=1)
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """Small CPU ops on a shared machine: several threads only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cfg_for(*extra):
    torch.set_num_threads(1)
    return load_config(["method.name=bic2r", "device=cpu", "train.batch_size=16", "data.height=32",
                        "data.width=16", "eval.batch_size=64", "method.bic2r.calibrate_steps=20",
                        "method.bic2r.anchor_images=48", "model.arch=vit_tiny_p8", "model.vit_depth=1", *extra])


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ---- the transfer network ---------------------------------------------------------------------
def test_an_untrained_transfer_is_the_identity_in_both_modes():
    net = TransferNet(16, blocks=2, paths=3, hidden=4, prototypes=5)
    x = unit(6, 16)
    assert torch.equal(net.train()(x), x) and torch.equal(net.eval()(x), x)
    with pytest.raises(ValueError, match="at least one block"):
        TransferNet(16, blocks=0)


def test_a_fitted_transfer_maps_a_rotated_space_and_exports_for_the_index(tmp_path):
    old = unit(256, 12, seed=1)
    rotation, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(2)))
    new = old @ rotation
    net = TransferNet(12, hidden=8)
    before = feature_alignment(F.normalize(net.eval()(old), dim=1), new)
    fit_transfer(net, old, new, steps=300, lr=0.01)
    after = feature_alignment(F.normalize(net(old), dim=1), new)
    assert after < 0.2 * before
    from fedreid.index import save_transfer

    loaded = load_transfer(save_transfer(net, 12, tmp_path / "t.pt2"))
    torch.testing.assert_close(loaded(old[:7]), net(old[:7]))
    with pytest.raises(ValueError, match="paired rows"):
        fit_transfer(net, old[:3], new[:4], steps=1, lr=0.01)


def test_the_upgrade_is_chosen_on_held_out_anchors_and_is_never_worse_than_none():
    old = unit(200, 12, seed=3)
    rotation, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(4)))
    scrambled = TransferNet(12, hidden=8)
    torch.nn.init.normal_(scrambled[0].paths[0][7].weight, std=1.0)  # T_on that maps far off
    net, info = calibrate_upgrade(scrambled, TransferNet(12, hidden=8), old, old @ rotation, steps=300, lr=0.01)
    assert info["choice"] == 2 and info["heldout_mse_fitted"] < 0.5 * info["heldout_mse_identity"]
    # no drift between the models: the identity (the gallery left as it is) is the upgrade
    net, info = calibrate_upgrade(scrambled, TransferNet(12, hidden=8), old, old, steps=20, lr=0.01)
    assert info["choice"] == 0 and info["heldout_mse_identity"] == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(F.normalize(net(old), dim=1), old)
    with pytest.raises(ValueError, match="paired anchors"):
        calibrate_upgrade(scrambled, TransferNet(12), old[:1], old[:1], steps=1, lr=0.01)


# ---- the losses on hand-made cases --------------------------------------------------------------
def test_alignment_and_directional_consistency():
    a, b = unit(4, 8, seed=1), unit(4, 8, seed=2)
    torch.testing.assert_close(feature_alignment(a, b), ((a - b) ** 2).mean())
    # transfers that move a feature part of the way the models drifted: 0
    mid = (a + b) / 2
    assert directional_consistency(b, a, t_on=mid, t_no=mid).abs() < 1e-6
    # transfers that move it the opposite way: 1 − cos = 2 for each direction
    torch.testing.assert_close(directional_consistency(b, a, t_on=2 * a - b, t_no=2 * a - b), torch.tensor(4.0))


def test_relation_distillation_compares_negative_relations_only():
    f = unit(4, 5, seed=3)
    pids = torch.tensor([0, 0, 1, 2])
    assert relation_distillation(f, f, pids).abs() < 1e-7
    # moving a positive pair changes nothing; negatives are what is compared
    g = f.clone()
    g[1] = unit(5, seed=9)
    s, t = torch.softmax(f @ f.T, 1), torch.softmax(g @ g.T, 1)
    negatives = pids[:, None] != pids[None, :]
    p = (s * negatives) / (s * negatives).sum(1, keepdim=True)
    q = (t * negatives) / (t * negatives).sum(1, keepdim=True)
    expected = torch.stack([sum(p[i, j] * math.log(p[i, j] / q[i, j]) for j in range(4) if negatives[i, j])
                            for i in range(4)]).mean()
    torch.testing.assert_close(relation_distillation(f, g, pids), expected)
    assert relation_distillation(f, g, torch.zeros(4, dtype=torch.long)) == 0  # no negatives at all


def test_forgetting_target_follows_who_ranks_each_pair_right():
    pids = torch.tensor([0, 0, 1])
    # row 0: positive is column 1, negative column 2 (diagonal left out)
    old = torch.tensor([[0.0, 0.7, 0.3], [0.6, 0.0, 0.4], [0.5, 0.5, 0.0]])  # old ranks row 0 right
    new = torch.tensor([[0.0, 0.2, 0.8], [0.3, 0.0, 0.7], [0.4, 0.6, 0.0]])  # new gets rows 0, 1 wrong
    target = forgetting_target(new, old, pids)
    torch.testing.assert_close(target[0], torch.tensor([0.0, 0.7, 0.3]))  # old right: old kept
    both_wrong = torch.tensor([[0.0, 0.2, 0.8], [0.3, 0.0, 0.7], [0.5, 0.5, 0.0]])
    row = forgetting_target(both_wrong, both_wrong, pids)[1]
    # row 1: positive 0.3 below negative 0.7 for both → positive raised to the hardest-negative
    # threshold (0.7), the negative (also wrong) lowered to the hardest-positive one (0.3)
    torch.testing.assert_close(row, torch.tensor([0.7, 0.0, 0.3]))
    # both models rank every pair right: the target is their own affinity, nothing to distil
    f = F.normalize(torch.eye(3, 4).repeat_interleave(2, 0) + 0.05 * unit(6, 4, seed=5), dim=1)
    assert anti_forgetting(f, f, torch.tensor([0, 0, 1, 1, 2, 2])).abs() < 1e-6
    g = unit(6, 4, seed=6)  # a new model that forgot: pulled towards the old affinities
    assert anti_forgetting(g, f, torch.tensor([0, 0, 1, 1, 2, 2])) > 0.1


def test_logit_distillation_and_affinity_alpha():
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    assert logit_distillation(logits, logits).abs() < 1e-6
    assert logit_distillation(logits, -logits) > 0.1
    f, g = unit(10, 6, seed=1), unit(10, 6, seed=2)
    assert affinity_alpha(f, f) == pytest.approx(1.0)
    assert 0.0 <= affinity_alpha(f, g) < 0.5


# ---- the method ---------------------------------------------------------------------------------------
def test_compatibility_starts_with_a_download_and_the_upgrade_is_kept(tiny_root, tmp_path):
    images = load_split_images(tiny_root / "market", "fedreid", (32, 16))
    trainer = LocalTrainer(cfg_for("train.max_batches=2"), images)
    method = trainer.method
    first = trainer.train_epochs(1, seed=0)
    assert "loss_ca" not in first  # no old model yet: CE + triplet only
    method.on_download({})  # the first model arrives: its anchors; nothing to be compatible with
    assert method.upgrade is None and method.old is None and method.anchors.shape == (48, method.dim)
    method.on_download({})  # the next one: old model, and the upgrade transfer from the first
    before = {k: v.clone() for k, v in method.heads["transfer_on"].state_dict().items()}
    second = trainer.train_epochs(1, seed=1)
    assert {"loss_ca", "loss_cr", "loss_ad", "loss_dc", "loss_af"} <= set(second)
    after = method.heads["transfer_on"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # T_on trains with the model
    method.on_download({})  # and the next: the upgrade transfer 1 → 2 is fitted
    assert method.upgrade is not None and 0.0 <= method.upgrade_info["affinity_alpha"] <= 1.0
    state = method.local_state()
    restored = upgrade_transfer(state, method.options)
    x = unit(3, method.dim)
    torch.testing.assert_close(restored(x), method.upgrade(x))
    again = LocalTrainer(cfg_for(), images).method
    again.load_local_state(state)
    np.testing.assert_array_equal(again.anchors, method.anchors)
    assert again.upgrade_info == method.upgrade_info
    with pytest.raises(ValueError, match="transfer options"):
        upgrade_transfer(state, Bic2rOptions(prototypes=3))

    files = method.site_files(tmp_path / "files", server_round=3)
    assert [p.name for p in files] == ["transfer-r1-to-r2.pt2", "transfer-r1-to-r2.json"]
    d = method.dim
    root = tmp_path / "index"
    items = [ItemRecord(f"g{i}.jpg", i % 3, 0, 0.0, "meta") for i in range(5)]
    build_version(root, unit(5, d).numpy(), items, ModelRef("r1", "resnet18", "sha256:1", d))
    version = upgrade_version(root, load_transfer(files[0]), ModelRef("r2", "resnet18", "sha256:2", d),
                              transfer_name=files[0].name)
    with SiteIndex(root) as index:
        assert index.gallery(version.id).features.shape == (5, d)


def test_federated_rounds_train_compatibly_and_keep_the_transfer_local(tiny_root, tmp_path, task_identity):
    cfg = cfg_for(*strategy_overrides("fedklpr"), f"data.root={tiny_root}", f"data.sites=[{','.join(SITES)}]",
                  "fl.rounds=2", "train.max_batches=1", "crr.delta=1.0", "fl.round_timeout=60", "eval.every=2",
                  "method.name=bic2r")
    grid = InProcessGrid(make_client_app(cfg, state_dir=tmp_path / "s"), {100 + i: {"partition-id": i} for i in range(2)})
    strategy = run_server(grid, cfg, tmp_path / "run", node_wait_s=1)
    trains = [r for r in load_records(tmp_path / "run") if r["kind"] == "train"]
    assert len(trains) == 2 and not any(r["failures"] for r in trains)
    assert "loss_ca" not in trains[0]["sites"]["market"] and "loss_ca" in trains[1]["sites"]["market"]
    assert not any("transfer" in k for k in strategy.state.global_state)  # never shared
    # round 2's state: committed as market.pt once the coordinator evaluated round 2
    states = [ClientState.load(p) for p in (tmp_path / "s").rglob("market*.pt")]
    state = next(s for s in states if s.last_round == 2)
    net = upgrade_transfer(state.method, Bic2rOptions())  # round 2's download: model 0 → model 1
    assert net is not None and "anchors" in state.method
    # the site wrote that transfer for `fedreid site index upgrade` beside its state
    assert [p.name for p in (tmp_path / "s").rglob("transfer-*.pt2")] == ["transfer-r0-to-r1.pt2"]
