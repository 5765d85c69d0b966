"""One short training run per method on a tiny generated site, through the site trainer."""

from __future__ import annotations

import pytest
import torch

from fedreid.config import load_config
from fedreid.data.synth import generate_synthetic8
from fedreid.engine import SiteTrainer, load_site
from fedreid.methods import METHODS, get_method
from fedreid.models import shared_state_dict


@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate_synthetic8(root, scale=0.05, seed=1, size=(32, 16), sites=["market"], min_test_ids=6, workers=1)
    return load_site(root / "market", "fedreid", (32, 16))


def cfg_for(method, *extra):
    torch.set_num_threads(1)
    return load_config([f"method.name={method}", "device=cpu", "train.batch_size=16",
                        "data.height=32", "data.width=16", "method.capr.eps=0.7",
                        "method.capr.min_samples=2", *extra])


def test_registry_names_and_unknown():
    assert set(METHODS) >= {"bot", "capr"}
    with pytest.raises(ValueError, match="bot"):
        get_method("nope")


def test_bot_learns_on_a_tiny_site(tiny_site):
    trainer = SiteTrainer(cfg_for("bot", "train.lr=1e-3"), tiny_site)
    first = trainer.train_epochs(1, seed=0)
    for e in range(4):
        last = trainer.train_epochs(1, seed=e + 1)
    assert first["batches"] > 0
    assert last["loss_id"] < first["loss_id"]
    assert set(trainer.method.private_state()) >= {"head.weight", "center.centers"}
    # private modules never appear in what is shared
    assert not any(k.startswith(("head", "center", "private")) for k in shared_state_dict(trainer.model))
    trainer.cfg.eval.kwf = True
    res = trainer.evaluate(rerank=True)
    assert 0 <= res["mAP"] <= 1 and 0 <= res["rr_mAP"] <= 1 and 0 <= res["kwf_mAP"] <= 1


def test_capr_clusters_and_trains(tiny_site):
    trainer = SiteTrainer(cfg_for("capr"), tiny_site)
    before = {k: v.clone() for k, v in shared_state_dict(trainer.model).items()}
    stats = trainer.train_epochs(1, seed=0)
    assert stats["prep_clusters"] > 0
    assert stats["batches"] > 0 and stats["loss_cap"] > 0
    after = shared_state_dict(trainer.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_kl_regulariser_and_masks_are_applied(tiny_site):
    from fedreid.prune import init_masks, magnitude_prune

    trainer = SiteTrainer(cfg_for("bot"), tiny_site)
    masks = magnitude_prune(shared_state_dict(trainer.model), init_masks(shared_state_dict(trainer.model)),
                            step=0.5, target=0.5)
    ref = trainer.snapshot()
    stats = trainer.train_epochs(1, seed=0, reference=ref, kl_weight=1.0, masks=masks)
    assert stats["loss_reg"] >= 0
    state = shared_state_dict(trainer.model)
    for name, m in masks.items():
        assert torch.all(state[name][~m] == 0), name
