"""Client methods: the registry, the batch a method asks for, each method's step on a tiny
generated site, the loss parts of scm and vitc on hand-made cases, and what is shared."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedreid.config import ConfigError, load_config
from fedreid.data.batch import BatchSpec, make_batch
from fedreid.data.split_images import load_split_images
from fedreid.data.synth import generate_synthetic8
from fedreid.federated_client import FederatedClient
from fedreid.fl.codec import decode_sparse, encode_sparse
from fedreid.losses import ClusterContrastMemory
from fedreid.methods import METHODS, get_method
from fedreid.training import LocalTrainer, initial_shared_state

SMALL_VIT = ["model.vit_depth=1"]


@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate_synthetic8(root, scale=0.05, seed=1, size=(32, 16), sites=["market"], min_test_ids=6, workers=1)
    return load_split_images(root / "market", "fedreid", (32, 16))


def cfg_for(method, *extra):
    torch.set_num_threads(1)
    return load_config([f"method.name={method}", "device=cpu", "train.batch_size=16",
                        "data.height=32", "data.width=16", "method.capr.eps=0.7",
                        "method.capr.min_samples=2", "method.vitc.eps=0.7", "method.vitc.min_samples=2",
                        "eval.batch_size=64", *extra])


def test_registry_names_options_and_unknown():
    assert set(METHODS) >= {"bot", "capr", "scm", "vitc"}
    with pytest.raises(ValueError, match="bot"):
        get_method("nope")
    cfg = load_config(["method.scm.supcon_weight=0.3"])
    assert cfg.method.scm.supcon_weight == 0.3
    with pytest.raises(ConfigError, match="supcon_weigth"):
        load_config(["method.scm.supcon_weigth=0.3"])
    with pytest.raises(ConfigError, match="backbone\\+neck"):
        load_config(["method.bot.share=everything"])
    with pytest.raises(ConfigError, match="capr, scm"):
        load_config(["method.name=nope"])


def test_batches_carry_what_the_method_asked_for(tiny_site):
    store = tiny_site.train
    idx = np.arange(6)
    gen = torch.Generator().manual_seed(0)
    two = make_batch(store, idx, BatchSpec(views=2, labels=False, fields=("clothes", "geometry")), gen,
                     torch.device("cpu"))
    assert len(two.views) == 2 and not torch.equal(two.views[0], two.views[1])  # independent augmentations
    assert two.pids is None and two.camids.tolist() == store.camids[:6].tolist()
    assert two.fields["geometry"].shape == (6, 3) and two.fields["clothes"].shape == (6,)
    one = make_batch(store, idx, BatchSpec(), gen, torch.device("cpu"))
    assert one.pids.tolist() == store.pids[:6].tolist()
    with pytest.raises(ValueError, match="choose among"):
        BatchSpec(fields=("shoe_size",))


@pytest.mark.parametrize("method", ["bot", "capr", "scm", "vitc"])
def test_each_method_trains_one_epoch_on_a_tiny_site(tiny_site, method):
    trainer = LocalTrainer(cfg_for(method, "train.max_batches=2", *SMALL_VIT), tiny_site)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    stats = trainer.train_epochs(1, seed=0)
    assert stats["batches"] > 0 and np.isfinite(stats["loss"])
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.evaluate()["mAP"] >= 0


def test_bot_learns_and_keeps_its_heads_out_of_the_model(tiny_site):
    trainer = LocalTrainer(cfg_for("bot", "train.lr=1e-3"), tiny_site)
    first = trainer.train_epochs(1, seed=0)
    for e in range(4):
        last = trainer.train_epochs(1, seed=e + 1)
    assert last["loss_id"] < first["loss_id"]
    assert {"heads.classifier.weight", "heads.center.centers"} <= set(trainer.method.local_state())
    assert not any(k.startswith("heads") for k in trainer.model.state_dict())


def test_scm_terms_follow_their_weights(tiny_site):
    only_ce = ["method.scm.triplet_weight=0", "method.scm.center_weight=0",
               "method.scm.centroid_weight=0", "method.scm.supcon_weight=0"]
    trainer = LocalTrainer(cfg_for("scm", "train.max_batches=1", *only_ce), tiny_site)
    stats = trainer.train_epochs(1, seed=0)
    assert stats["loss"] == pytest.approx(stats["loss_id"])
    assert not {"loss_triplet", "loss_supcon", "loss_centroid"} & set(stats)
    full = LocalTrainer(cfg_for("scm", "train.max_batches=1"), tiny_site).train_epochs(1, seed=0)
    assert {"loss_id", "loss_triplet", "loss_center", "loss_centroid", "loss_supcon"} <= set(full)
    with pytest.raises(ValueError, match="supcon_weight=-1"):
        LocalTrainer(cfg_for("scm", "method.scm.supcon_weight=-1"), tiny_site)


def test_cluster_memory_loss_and_hardest_instance_update():
    memory = ClusterContrastMemory(temperature=0.5, momentum=0.5)
    centres = torch.eye(3)
    memory.reset(centres)
    feats = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    targets = torch.tensor([0, 0, 2])
    expected = F.cross_entropy(feats @ centres.T / 0.5, targets)
    torch.testing.assert_close(memory(feats, targets), expected)
    memory.update(feats, targets)
    # cluster 0's hardest instance is [0.6, 0.8, 0]: c = normalise(0.5·e0 + 0.5·x)
    torch.testing.assert_close(memory.centres[0], F.normalize(torch.tensor([0.8, 0.4, 0.0]), dim=0))
    torch.testing.assert_close(memory.centres[1], centres[1])  # not in the batch: unchanged
    with pytest.raises(ValueError, match="targets must lie in"):
        memory(feats, torch.tensor([0, 0, 5]))


def test_vitc_without_camera_proxies_is_plain_cluster_contrast(tiny_site):
    trainer = LocalTrainer(cfg_for("vitc", "train.max_batches=1", "method.vitc.camera_proxies=false",
                                   *SMALL_VIT), tiny_site)
    stats = trainer.train_epochs(1, seed=0)
    assert "loss_camera" not in stats and stats["loss"] == pytest.approx(stats["loss_cluster"])
    assert trainer.method.arch(trainer.cfg.model) == "vit_tiny_p16"  # model.arch=auto
    assert trainer.method.crr_labels() is not None


def test_share_backbone_keeps_the_neck_on_the_site(tiny_site):
    cfg = cfg_for("bot", "method.bot.share=backbone", "train.max_batches=1", "prune.enabled=false")
    init = initial_shared_state(cfg, "bot")
    assert init and not any(k.startswith("neck.") for k in init)
    client = FederatedClient(cfg, tiny_site)
    reply, _ = client.train_round(encode_sparse(init, {}), 1)
    sent, _ = decode_sparse(reply)
    assert set(sent) == set(init)
    neck = client.state.local_model
    assert set(neck) == {k for k in client.model.state_dict() if k.startswith("neck.")}
    again = FederatedClient(cfg, tiny_site, client.state)  # next round: the neck comes back
    again.load_global(reply)
    for key, value in neck.items():
        np.testing.assert_array_equal(again.model.state_dict()[key].numpy(), value)


def test_evaluation_reports_kwf_beside_plain(tiny_site):
    trainer = LocalTrainer(cfg_for("bot", "eval.rerank=kwf", "eval.kwf_weighting=exp_decay"), tiny_site)
    res = trainer.evaluate()
    assert {"mAP", "rank1", "rerank_mAP", "rerank_rank1", "rerank_seconds"} <= set(res)
    with pytest.raises(ConfigError, match="k_reciprocal"):
        load_config(["eval.rerank=magic"])


def test_setup_protocols_run_through_the_registry(tiny_site):
    """The occlusion test embeds altered queries with the method; every protocol's keys are
    prefixed so they sit beside the single-query ones."""
    trainer = LocalTrainer(cfg_for("bot", "eval.protocols=[single_query,occlusion]"), tiny_site)
    res = trainer.evaluate()
    assert {"mAP", "occ_mAP", "occ_mAP_drop"} <= set(res)
    assert res["occ_mAP"] == pytest.approx(res["mAP"] - res["occ_mAP_drop"])
    with pytest.raises(ConfigError, match="occlusion"):
        load_config(["eval.protocols=[nope]"])
