"""GIQT: the rectifier and prompts start inert (the plain ViT exactly), compute the low-rank
geometry-scaled metric, the geometry code and regressor loss on hand-made values, the share
rules, and a short training run + aerial-ground evaluation on a hand-made site."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedreid.config import load_config
from fedreid.data.records import ReidSplits, Sample
from fedreid.data.split_images import SplitImages
from fedreid.data.store import ImageStore
from fedreid.methods.giqt import GIQTMethod
from fedreid.models import BackboneOptions, build_model
from fedreid.models.giqt import (
    GEOMETRY_SCALE,
    GIQTReidNet,
    QKRectifier,
    geometry_code,
    geometry_loss,
    with_giqt,
)
from fedreid.training import LocalTrainer

SIZE = (32, 16)


def small_vit(depth: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("vit_tiny_p8", "none", BackboneOptions(image_size=SIZE, depth=depth)).eval()


def randomise(model: GIQTReidNet) -> None:
    backbone = model.backbone
    for rect in backbone.rectifiers or []:
        torch.nn.init.normal_(rect.v, std=0.5)
    if backbone.prompt_gates is not None:
        torch.nn.init.normal_(backbone.prompt_gates, std=1.0)


def geometries(n: int) -> torch.Tensor:
    g = torch.stack([torch.rand(n) * 45, torch.rand(n) * 40, torch.rand(n) * 90], dim=1)
    g[0, 1] = float("nan")
    return g


def test_new_giqt_model_is_exactly_the_plain_vit():
    model = small_vit()
    x = torch.randn(4, 3, *SIZE)
    with torch.no_grad():
        plain = model(x)
        for regressor in (False, True):
            giqt = with_giqt(model, blocks=2, rank=3, prompts=2, regressor=regressor,
                             scale=10.0 if regressor else 1.0).eval()
            assert torch.equal(giqt(x, geometries(4)), plain)
            assert torch.equal(giqt(x), plain)
    assert set(model.state_dict()) <= set(giqt.state_dict())  # timm keys kept: weights files load


def test_trained_giqt_depends_on_geometry_and_only_in_its_blocks():
    giqt = with_giqt(small_vit(), blocks=1, rank=2, prompts=2).eval()
    randomise(giqt)
    x = torch.randn(3, 3, *SIZE)
    low = torch.tensor([[15.0, 20.0, 37.0]]).repeat(3, 1)
    high = torch.tensor([[45.0, 10.0, 77.0]]).repeat(3, 1)
    with torch.no_grad():
        assert not torch.allclose(giqt(x, low), giqt(x, high))
        # prompts only (rectify off) also condition on geometry
        prompts_only = with_giqt(small_vit(), blocks=1, rank=2, prompts=1, rectify=False).eval()
        randomise(prompts_only)
        torch.nn.init.normal_(prompts_only.backbone.prompts.mlp[2].weight)
        assert not torch.allclose(prompts_only(x, low), prompts_only(x, high))


def test_rectifier_is_the_low_rank_geometry_scaled_metric():
    rect = QKRectifier(num_heads=1, head_dim=2, rank=1, code_dim=6)
    with torch.no_grad():
        rect.u.copy_(torch.tensor([[[1.0], [0.0]]]))
        rect.v.copy_(torch.tensor([[[0.0], [2.0]]]))
    code = torch.zeros(1, 6)
    phi = float(rect.phi(code).detach().squeeze())
    q = torch.tensor([[[[3.0, 1.0]]]])
    k = torch.tensor([[[[0.5, -1.0]]]])
    q_t = rect(q, code)
    metric = torch.eye(2) + torch.tensor([[1.0], [0.0]]) * phi @ torch.tensor([[0.0, 2.0]])
    expected = q[0, 0] @ metric @ k[0, 0].T  # qᵀ (I + U diag(φ) Vᵀ) k
    torch.testing.assert_close(q_t[0, 0] @ k[0, 0].T, expected)
    torch.testing.assert_close(q_t[0, 0, 0], torch.tensor([3.0, 1.0 + 6.0 * phi]))


def test_geometry_code_scales_flags_and_fills_from_the_regressor():
    raw = torch.tensor([[30.0, float("nan"), 45.0], [float("nan")] * 3])
    code = geometry_code(raw)
    torch.testing.assert_close(code[0], torch.tensor([30 / 50, 0.0, 45 / 90, 1.0, 0.0, 1.0]))
    assert torch.equal(code[1], torch.zeros(6))
    predicted = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    filled = geometry_code(raw, predicted)
    torch.testing.assert_close(filled[0, :3], torch.tensor([0.6, 0.2, 0.5]))
    torch.testing.assert_close(filled[1], torch.tensor([0.4, 0.5, 0.6, 1.0, 1.0, 1.0]))
    assert torch.equal(geometry_code(raw, predicted, source="regressor")[:, :3], predicted)
    with pytest.raises(ValueError, match="needs the regressor"):
        geometry_code(raw, source="regressor")
    with pytest.raises(ValueError, match="B×3"):
        geometry_code(torch.zeros(2, 2))


def test_geometry_loss_uses_the_known_values_only():
    predicted = torch.tensor([[0.5, 0.0, 1.0], [0.2, 0.2, 0.2]], requires_grad=True)
    raw = torch.tensor([[50.0, float("nan"), 45.0], [float("nan")] * 3])
    loss = geometry_loss(predicted, raw)
    torch.testing.assert_close(loss, torch.tensor(((0.5 - 1.0) ** 2 + (1.0 - 0.5) ** 2) / 2))
    loss.backward()
    assert predicted.grad[1].abs().sum() == 0 and predicted.grad[0, 1] == 0
    none = geometry_loss(predicted, torch.full((2, 3), float("nan")))
    assert float(none.detach()) == 0.0 and none.requires_grad
    assert GEOMETRY_SCALE == (50.0, 100.0, 90.0)


def test_giqt_needs_a_vit_blocks_within_depth_and_a_regressor_for_its_source():
    with pytest.raises(ValueError, match="set model.arch to a ViT"):
        with_giqt(build_model("resnet18"), blocks=1, rank=2, prompts=0)
    with pytest.raises(ValueError, match="must lie in 1..3"):
        with_giqt(small_vit(), blocks=4, rank=2, prompts=0)
    with pytest.raises(ValueError, match="needs regressor=true"):
        with_giqt(small_vit(), blocks=1, rank=2, prompts=0, source="regressor")
    with pytest.raises(ValueError, match="changes nothing"):
        with_giqt(small_vit(), blocks=1, rank=2, prompts=0, rectify=False)


def cfg_for(*extra):
    torch.set_num_threads(1)
    return load_config(["method.name=giqt", "device=cpu", "train.batch_size=16", "train.num_instances=4",
                        "data.height=32", "data.width=16", "model.arch=vit_tiny_p8", "model.vit_depth=2",
                        "method.giqt.blocks=1", "eval.batch_size=64", "train.warmup_epochs=0",
                        "data.min_epoch_images=0", *extra])


def test_share_rules_keep_geometry_modules_local_or_share_them():
    cfg = cfg_for("method.giqt.regressor=true")
    options = cfg.method_options("giqt")
    model = GIQTMethod.build_model(options, cfg.model, SIZE)
    shared = GIQTMethod.shared_keys(options, model)
    assert any(".rectifiers." in k for k in shared) and any(".regressor." in k for k in shared)
    options.share = "geometry-local"
    local = GIQTMethod.shared_keys(options, model)
    plain = build_model("vit_tiny_p8", "none", BackboneOptions(image_size=SIZE, depth=2))
    assert local == list(plain.state_dict())  # same keys as a plain ViT site: they federate
    options.share = "regressor-shared"
    keys = GIQTMethod.shared_keys(options, model)
    assert any(".regressor." in k for k in keys) and not any(".rectifiers." in k for k in keys)


def hand_made_site(ids: int = 6, per_cam: int = 2) -> SplitImages:
    """Identities coded by colour; cameras 0-1 ground (3 m), 2-3 aerial (15 / 45 m)."""
    rng = np.random.default_rng(0)
    colours = rng.integers(30, 226, size=(ids, 3))

    def split(pids, cams) -> ImageStore:
        samples, images = [], []
        for pid in pids:
            for cam in cams:
                for k in range(per_cam):
                    aerial = cam >= 2
                    altitude = (15.0 if cam == 2 else 45.0) if aerial else 3.0
                    distance = 20.0 if aerial else 9.0
                    geo = {"altitude": altitude, "distance": distance,
                           "pitch": math.degrees(math.atan2(altitude, distance)),
                           "platform": "aerial" if aerial else "ground",
                           "altitude_level": (0 if cam == 2 else 2) if aerial else None}
                    samples.append(Sample(f"p{pid}c{cam}k{k}.jpg", pid, cam, meta={"geometry": geo}))
                    img = np.empty((3, *SIZE), dtype=np.uint8)
                    img[:] = colours[pid - 1][:, None, None]
                    img += rng.integers(0, 30, size=img.shape, dtype=np.uint8)
                    if aerial:  # seen from above: the upper half brighter
                        img[:, : SIZE[0] // 2] = np.minimum(img[:, : SIZE[0] // 2].astype(int) + 25, 255)
                    images.append(img)
        return ImageStore.from_tensor(torch.from_numpy(np.stack(images)), np.array([s.pid for s in samples]),
                                      np.array([s.camid for s in samples]), samples=samples)

    train = split(range(1, ids + 1), range(4))
    test_ids = range(1, ids + 1)
    query, gallery = split(test_ids, (0, 2)), split(test_ids, (1, 3))
    splits = ReidSplits("aerial", "/nowhere", train.samples, query.samples, gallery.samples, num_cameras=4)
    return SplitImages("aerial", splits, train, query, gallery)


def test_a_short_training_run_moves_the_rectifier_and_reports_aerial_ground_figures():
    site = hand_made_site()
    trainer = LocalTrainer(cfg_for("method.giqt.regressor=true", "train.max_batches=3"), site, "giqt")
    v0 = trainer.model.backbone.rectifiers[0].v.detach().clone()
    logs = trainer.train_epochs(1, seed=0)
    assert logs["batches"] == 3 and np.isfinite(logs["loss"]) and logs["loss_geometry"] > 0
    assert not torch.equal(trainer.model.backbone.rectifiers[0].v, v0)  # V learns from zero
    metrics = trainer.evaluate()
    for key in ("mAP", "a2g_mAP", "g2a_mAP", "a2g_mAP_alt0", "g2a_mAP_alt2"):
        assert 0.0 <= metrics[key] <= 1.0, key
    feats = trainer.features(site.query, flip=False)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(len(site.query)))


def test_plain_baseline_and_regressor_source_build_and_step():
    site = hand_made_site(ids=4, per_cam=2)
    plain = LocalTrainer(cfg_for("method.giqt.blocks=0", "train.max_batches=1"), site, "giqt")
    assert not isinstance(plain.model, GIQTReidNet)
    assert np.isfinite(plain.train_epochs(1, seed=0)["loss"])
    reg = LocalTrainer(cfg_for("method.giqt.regressor=true", "method.giqt.source=regressor",
                               "train.max_batches=1"), site, "giqt")
    assert np.isfinite(reg.train_epochs(1, seed=0)["loss"])
    with pytest.raises(ValueError, match="method.giqt.source"):
        LocalTrainer(cfg_for("method.giqt.source=drone"), site, "giqt")
