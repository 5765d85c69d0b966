"""ECHO-BID protocol: the EVA-02 backbone (and its weights file), the MIM pre-pass's parts,
z-normalised score fusion on hand-made scores, and a short MIM + fine-tuning run with the
clothes-change and occlusion protocols on a hand-made site."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedreid.config import load_config
from fedreid.data.records import ReidSplits, Sample
from fedreid.data.split_images import SplitImages
from fedreid.data.store import ImageStore
from fedreid.eval.clothes_change import evaluate_clothes_change
from fedreid.methods.echo import EchoMethod
from fedreid.methods.echo.fusion import fuse_scores, fused_clothes_change, zscore_rows
from fedreid.methods.echo.mim import (
    MaskedImageModelling,
    mim_loss,
    mim_pretrain,
    patchify,
    random_mask,
)
from fedreid.models.eva import EvaBackbone, load_eva_file
from fedreid.training import LocalTrainer

SIZE = (32, 16)


def test_patchify_follows_the_patch_grid_row_major():
    img = torch.arange(3 * 4 * 4, dtype=torch.float32).reshape(1, 3, 4, 4)
    patches = patchify(img, 2)
    assert patches.shape == (1, 4, 12)
    # patch 1 = grid row 0, column 1: pixels (y 0-1, x 2-3), channel-major
    torch.testing.assert_close(patches[0, 1, :4], torch.tensor([2.0, 3.0, 6.0, 7.0]))
    torch.testing.assert_close(patches[0, 2, 4:8], torch.tensor([24.0, 25.0, 28.0, 29.0]))


def test_random_mask_masks_exactly_the_ratio_per_image():
    mask = random_mask(5, 32, 0.4, torch.Generator().manual_seed(0))
    assert mask.shape == (5, 32) and (mask.sum(1) == 13).all()
    assert not torch.equal(mask[0], mask[1])
    with pytest.raises(ValueError, match="strictly between"):
        random_mask(1, 4, 1.0, torch.Generator())


def test_mim_loss_trains_the_mask_token_and_the_pixel_head():
    torch.manual_seed(0)
    backbone = EvaBackbone("eva02_tiny_p8", SIZE, depth=1)
    mim = MaskedImageModelling(backbone.embed_dim, backbone.patch)
    images = torch.randn(2, 3, *SIZE)
    mask = random_mask(2, 8, 0.5, torch.Generator().manual_seed(1))
    loss = mim_loss(backbone, mim, images, mask)
    loss.backward()
    assert torch.isfinite(loss) and mim.mask_token.grad.abs().sum() > 0 and mim.head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mask must be"):
        backbone.forward_tokens(images, mask[:, :4], mim.mask_token)


def test_eva_weights_file_round_trip_and_clear_errors(tmp_path):
    torch.manual_seed(0)
    a = EvaBackbone("eva02_tiny_p8", SIZE, depth=2).eval()
    torch.save({"model": {f"eva.{k}": v for k, v in a.eva.state_dict().items()}}, tmp_path / "eva.pth")
    b = EvaBackbone("eva02_tiny_p8", SIZE, depth=2).eval()
    load_eva_file(b, tmp_path / "eva.pth")
    x = torch.randn(2, 3, *SIZE)
    torch.testing.assert_close(a(x), b(x))
    with pytest.raises(ValueError, match="model.vit_depth"):
        load_eva_file(EvaBackbone("eva02_tiny_p8", SIZE, depth=3), tmp_path / "eva.pth")
    with pytest.raises(ValueError, match="no such file"):
        load_eva_file(b, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="multiple of the EVA-02 patch"):
        EvaBackbone("eva02_tiny_p16", (40, 16))


def test_zscore_fusion_is_per_query_and_scale_free():
    a = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    z = zscore_rows(a)
    np.testing.assert_allclose(z[0], np.array([-1.0, 0.0, 1.0]) * np.sqrt(1.5))  # population std sqrt(2/3)
    assert np.all(z[1] == 0)
    np.testing.assert_allclose(fuse_scores([a, 10 * a + 3]), z)  # a rescaled model adds nothing new
    b = np.array([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    fused = fuse_scores([a, b], weights=[3, 1])
    np.testing.assert_allclose(fused, (3 * zscore_rows(a) + zscore_rows(b)) / 4)
    with pytest.raises(ValueError, match="same queries"):
        fuse_scores([a, a[:1]])


def clothes_samples(split: str, rows) -> list[Sample]:
    return [Sample(f"{split}{i}.jpg", pid, cam, meta={"clothes_id": clothes}) for i, (pid, cam, clothes) in enumerate(rows)]


def test_fusion_of_one_model_equals_its_own_clothes_change_figures_and_fusion_can_fix_a_model():
    query = clothes_samples("q", [(1, 0, 10), (2, 0, 20)])
    gallery = clothes_samples("g", [(1, 1, 10), (1, 1, 11), (2, 1, 21), (2, 1, 20)])
    qf = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gf = torch.tensor([[1.0, 0.1], [0.6, 0.8], [0.1, 1.0], [0.9, 0.3]])
    single = evaluate_clothes_change(qf, gf, query, gallery)
    fused = fused_clothes_change([(qf, gf)], query, gallery)
    assert fused.keys() == single.keys()
    for key in fused:
        assert fused[key] == pytest.approx(single[key]), key
    # query 1's changed-clothes view (g1) is behind another person (g3) under model A; a second
    # model that prefers g1 lifts the fused clothes-changing Rank-1 without losing query 2
    gf2 = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    both = fused_clothes_change([(qf, gf), (qf, gf2)], query, gallery)
    assert single["cc_rank1"] == 0.5 and both["cc_rank1"] == 1.0


def hand_made_clothes_site(ids: int = 6) -> SplitImages:
    """Identities coded by the lower half's colour (kept), outfits by the upper half's colour;
    three outfits per identity, one camera each."""
    rng = np.random.default_rng(0)
    body = rng.integers(30, 226, size=(ids, 3))

    def split(name: str, shots) -> ImageStore:
        samples, images = [], []
        for pid in range(1, ids + 1):
            for cam, outfit in shots:
                for k in range(2):
                    samples.append(Sample(f"{name}p{pid}c{cam}k{k}.jpg", pid, cam,
                                          meta={"clothes_id": (pid - 1) * 3 + outfit}))
                    img = np.empty((3, *SIZE), dtype=np.uint8)
                    img[:, SIZE[0] // 2:] = body[pid - 1][:, None, None]
                    img[:, : SIZE[0] // 2] = rng.integers(0, 255, size=(3, 1, 1))
                    images.append(img + rng.integers(0, 20, size=img.shape, dtype=np.uint8))
        return ImageStore.from_tensor(torch.from_numpy(np.stack(images)), np.array([s.pid for s in samples]),
                                      np.array([s.camid for s in samples]), samples=samples)

    train = split("t", [(0, 0), (1, 1), (2, 2)])
    query, gallery = split("q", [(1, 0), (2, 1)]), split("g", [(0, 0), (3, 2)])
    splits = ReidSplits("clothes", "/nowhere", train.samples, query.samples, gallery.samples, num_cameras=4)
    return SplitImages("clothes", splits, train, query, gallery)


def cfg_for(*extra):
    torch.set_num_threads(1)
    return load_config(["method.name=echo", "device=cpu", "train.batch_size=16", "data.height=32",
                        "data.width=16", "model.vit_depth=2", "eval.batch_size=64", "train.warmup_epochs=0",
                        "method.echo.mim_batch_size=16", *extra])


def test_mim_head_start_then_fine_tuning_with_clothes_change_and_occlusion_figures():
    site = hand_made_clothes_site()
    trainer = LocalTrainer(cfg_for("method.echo.mim_epochs=2", "train.max_batches=2"), site, "echo")
    assert isinstance(trainer.model.backbone, EvaBackbone)
    logs = trainer.train_epochs(1, seed=0)
    assert np.isfinite(logs["prep_mim_loss_first"]) and logs["batches"] == 2
    assert trainer.method.local_state()["mim_done"].item() == 1
    assert "prep_mim_loss_first" not in trainer.train_epochs(1, seed=1, epoch_offset=1)  # once per site
    metrics = trainer.evaluate()
    for key in ("mAP", "general_mAP", "cc_mAP", "sc_mAP", "occ_mAP"):
        assert 0.0 <= metrics[key] <= 1.0, key


def test_mim_pretrain_lowers_its_loss_on_the_sites_images():
    site = hand_made_clothes_site(ids=4)
    torch.manual_seed(0)
    backbone = EvaBackbone("eva02_tiny_p8", SIZE, depth=1)
    mim = MaskedImageModelling(backbone.embed_dim, backbone.patch)
    losses = mim_pretrain(backbone, mim, site.train, epochs=6, batch_size=24, lr=2e-3, ratio=0.4,
                          device=torch.device("cpu"), seed=0)
    assert losses[-1] < losses[0]


def test_other_backbones_fine_tune_but_mim_needs_eva():
    site = hand_made_clothes_site(ids=4)
    trainer = LocalTrainer(cfg_for("model.arch=resnet18", "train.max_batches=1"), site, "echo")
    assert np.isfinite(trainer.train_epochs(1, seed=0)["loss"])
    with pytest.raises(ValueError, match="needs an EVA-02 backbone"):
        LocalTrainer(cfg_for("model.arch=resnet18", "method.echo.mim_epochs=1"), site, "echo")
    with pytest.raises(ValueError, match="no EVA-02 file"):
        EchoMethod.build_model(EchoMethod.Options(), cfg_for("model.weights=imagenet").model, SIZE)
    with pytest.raises(ValueError, match="method.echo.eva"):
        EchoMethod.build_model(EchoMethod.Options(eva="eva03_tiny"), cfg_for().model, SIZE)
    small = EchoMethod.build_model(EchoMethod.Options(eva="eva02_small_p16"), cfg_for().model, SIZE)
    assert small.feat_dim == 384 and small.backbone.patch == 16
