"""MoSAIC-ReID: LoRA experts (inert at zero init, removed exactly by a zero gate), attribute
values from the annotations, the oracle and learned routers, share rules and a federated
round that shares the experts only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clients.app import make_client_app
from fedreid.analysis.models import federated_site_models
from fedreid.config import load_config
from fedreid.config.presets import strategy_overrides
from fedreid.data.records import DataError, Sample
from fedreid.data.split_images import load_split_images
from fedreid.data.synth import generate_synthetic8
from fedreid.methods.attribute_sets import attribute_bits, expert_names
from fedreid.methods.mosaic import MosaicMethod, router_loss
from fedreid.models import BackboneOptions, build_model
from fedreid.models.lora import ExpertReidNet, LoRAExperts, with_experts
from fedreid.report import load_records
from fedreid.training import LocalTrainer, initial_shared_state
from server.app import run_server
from sims.inprocess_grid import InProcessGrid

SITES = ["market", "ilids"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate_synthetic8(root, scale=0.05, seed=2, size=(32, 16), sites=SITES, min_test_ids=6, workers=1)
    return root


@pytest.fixture(scope="module")
def tiny_site(tiny_root):
    return load_split_images(tiny_root / "market", "fedreid", (32, 16))


def cfg_for(*extra):
    torch.set_num_threads(1)
    return load_config(["method.name=mosaic", "device=cpu", "train.batch_size=16", "data.height=32",
                        "data.width=16", "model.arch=vit_tiny_p8", "model.vit_depth=2",
                        "method.mosaic.expert_blocks=1", "eval.batch_size=64", *extra])


def small_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("vit_tiny_p8", "none", BackboneOptions(image_size=(32, 16), depth=3)).eval()


def randomise(model: ExpertReidNet) -> None:
    for experts in model.backbone.experts:
        torch.nn.init.normal_(experts.up, std=0.5)


def test_zero_initialised_experts_leave_the_model_unchanged():
    model = small_vit()
    x = torch.randn(4, 3, 32, 16)
    with torch.no_grad():
        plain = model(x)
        for router in (False, True):
            experts = with_experts(model, 5, rank=2, blocks=2, router=router).eval()
            gates = torch.rand(4, 5)
            assert torch.equal(experts(x, gates), plain)
            assert torch.equal(experts(x), plain)  # no gates: router probabilities, or all off
    assert set(model.state_dict()) <= set(experts.state_dict())  # timm keys kept: weights files load


def test_a_zero_gate_removes_an_expert_exactly():
    model = with_experts(small_vit(), 4, rank=3, blocks=2).eval()
    randomise(model)
    x = torch.randn(3, 3, 32, 16)
    gates = torch.ones(3, 4)
    gates[:, 2] = 0.0
    with torch.no_grad():
        off = model(x, gates)
        for experts in model.backbone.experts:  # expert 2's weights no longer matter at all
            experts.up.data[2].normal_()
            experts.down.data[2].normal_()
        assert torch.equal(model(x, gates), off)
        keep = torch.tensor([1.0, 1.0, 0.0, 1.0])
        assert torch.equal(model(x, torch.ones(3, 4), keep), off)  # the knock-out mask is the same gate
        assert not torch.equal(model(x, torch.ones(3, 4)), off)


def test_lora_experts_compute_the_gated_low_rank_sum():
    experts = LoRAExperts(dim=3, num_experts=2, rank=1, scale=0.5)
    with torch.no_grad():
        experts.down.copy_(torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]]))
        experts.up.copy_(torch.tensor([[[1.0], [0.0], [0.0]], [[0.0], [0.0], [2.0]]]))
    tokens = torch.tensor([[[1.0, 2.0, 3.0]]])
    normed = torch.nn.functional.layer_norm(tokens, (3,))[0, 0]
    out = experts(tokens, torch.tensor([[1.0, 0.25]]))
    expected = 0.5 * torch.stack([normed[0], torch.tensor(0.0), 0.25 * 2.0 * normed[1]])
    torch.testing.assert_close(out[0, 0], expected)
    with pytest.raises(ValueError, match="one per expert"):
        experts(tokens, torch.ones(1, 3))


def test_experts_need_a_vit_and_blocks_within_its_depth():
    with pytest.raises(ValueError, match="set model.arch to a ViT"):
        with_experts(build_model("resnet18"), 3, rank=2, blocks=1)
    with pytest.raises(ValueError, match="must lie in 1..3"):
        with_experts(small_vit(), 3, rank=2, blocks=4)
    with pytest.raises(ValueError, match="use fewer expert blocks"):
        with_experts(small_vit(), 3, rank=2, blocks=3, router=True)


def test_attribute_values_from_synthetic_and_market_coded_annotations():
    samples = [Sample("a.jpg", 1, 0, meta={"attributes": {"hat": 2, "age": 3, "upper:red": 1}}),
               Sample("b.jpg", 2, 0, meta={"attributes": {"hat": 1, "age": 1, "upper:red": 0}}),
               Sample("c.jpg", 3, 0)]
    bits = attribute_bits(samples, ["hat=2", "age=3", "upper:red", "bag=2"])
    np.testing.assert_array_equal(bits[:2, :3], [[1, 1, 1], [0, 0, 0]])
    assert np.isnan(bits[:, 3]).all() and np.isnan(bits[2]).all()
    with pytest.raises(DataError, match="attribute_set"):
        attribute_bits(samples[2:] + samples[:1], ["shoes=2"])
    assert len(expert_names("synthetic")) == 41 and expert_names("market")[-1] == "age=4"
    with pytest.raises(ValueError, match="custom needs"):
        expert_names("custom", [])


def test_router_bce_leaves_unknown_values_out():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    bits = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    loss, acc = router_loss(logits, bits)
    known = torch.tensor([2.0, 0.5, 3.0]), torch.tensor([1.0, 0.0, 1.0])
    torch.testing.assert_close(loss, torch.nn.functional.binary_cross_entropy_with_logits(*known))
    assert acc == pytest.approx(2 / 3)


@pytest.mark.parametrize("router", ["oracle", "learned"])
def test_mosaic_trains_and_its_experts_change_what_it_retrieves(tiny_site, router):
    trainer = LocalTrainer(cfg_for(f"method.mosaic.router={router}", "train.max_batches=2"), tiny_site)
    method = trainer.method
    assert isinstance(trainer.model, ExpertReidNet) and len(method.names) == 41
    randomise(trainer.model)  # experts that do something, as after training
    stats = trainer.train_epochs(1, seed=0)
    assert stats["batches"] > 0 and np.isfinite(stats["loss"])
    assert ("loss_router" in stats) == (router == "learned")
    assert trainer.evaluate()["mAP"] >= 0
    gallery = tiny_site.gallery
    on = method.embed_knocked_out(gallery, flip=False)
    common = int(np.nanargmax(np.nanmean(attribute_bits(gallery.samples, method.names), axis=0)))
    off = method.embed_knocked_out(gallery, flip=False, off=[common])
    assert not torch.allclose(on, off)
    with pytest.raises(ValueError, match="do not exist"):
        method.embed_knocked_out(gallery, flip=False, off=[99])


def test_no_experts_is_the_plain_vit_baseline(tiny_site):
    trainer = LocalTrainer(cfg_for("method.mosaic.expert_blocks=0", "train.max_batches=1"), tiny_site)
    assert not isinstance(trainer.model, ExpertReidNet)
    assert np.isfinite(trainer.train_epochs(1, seed=0)["loss"])


def test_share_rules_select_experts_backbone_or_both():
    counts = {}
    for rule in ("experts", "backbone+experts", "backbone-only"):
        state = initial_shared_state(cfg_for(f"method.mosaic.share={rule}", "method.mosaic.router=learned"), "mosaic")
        counts[rule] = sum(v.size for v in state.values())
        experts = {k for k in state if k.startswith(("backbone.experts.", "backbone.router."))}
        assert bool(experts) == (rule != "backbone-only")
        assert (experts == set(state)) == (rule == "experts")
    assert counts["experts"] + counts["backbone-only"] == counts["backbone+experts"]
    assert counts["experts"] < counts["backbone-only"] / 5
    with pytest.raises(ValueError, match="no experts to share"):
        MosaicMethod.build_model(MosaicMethod.Options(share="experts", expert_blocks=0),
                                 cfg_for().model, (32, 16))


def test_a_federated_round_sharing_only_the_experts(tiny_root, tmp_path, task_identity):
    cfg = load_config([
        *strategy_overrides("fedklpr"), f"data.root={tiny_root}", f"data.sites=[{','.join(SITES)}]",
        "data.height=32", "data.width=16", "fl.rounds=1", "train.batch_size=16", "train.max_batches=1",
        "eval.batch_size=64", "crr.delta=1.0", "device=cpu", "fl.round_timeout=60", "method.name=mosaic",
        "model.arch=vit_tiny_p8", "model.vit_depth=2", "method.mosaic.expert_blocks=1",
        "method.mosaic.share=experts",
    ])
    run = tmp_path / "run"
    grid = InProcessGrid(make_client_app(cfg, state_dir=run / "site-state"), {100 + i: {"partition-id": i} for i in range(2)})
    strategy = run_server(grid, cfg, run, node_wait_s=1)
    train = [r for r in load_records(run) if r["kind"] == "train"][0]
    assert sorted(train["sites"]) == sorted(SITES) and not train["failures"]
    global_state = strategy.state.global_state
    assert all(k.startswith("backbone.experts.") for k in global_state)
    expert_floats = sum(v.size for v in global_state.values())
    assert train["bytes_down"] < 2 * 8 * expert_floats  # each site received the experts only

    # what `fedreid analyse attributes RUN_DIR` examines: global experts + each site's own ViT
    models = federated_site_models(run, [], [])
    assert [m.site for m in models] == SITES
    vits = []
    for m in models:
        state = m.method.model.state_dict()
        assert all(np.array_equal(state[k].numpy(), v) for k, v in global_state.items())
        vits.append(state["backbone.vit.blocks.0.attn.qkv.weight"])
    assert not torch.equal(*vits)  # the ViT is local: each site trained its own
