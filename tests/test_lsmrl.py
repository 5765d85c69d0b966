"""LSMRL-lite: the modality losses on hand-made features, the temporal patch shift, the
sequence encoder (per-frame mode = the plain ViT averaged over frames), the tracklet sampler,
and a short training run + tracklet-level cross-modality evaluation on a hand-made site."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedreid.config import load_config
from fedreid.data.records import ReidSplits, Sample
from fedreid.data.split_images import SplitImages
from fedreid.data.store import ImageStore
from fedreid.losses.modality import cross_modal_triplet, modality_centre_loss, modality_discrepancy
from fedreid.methods.lsmrl import LSMRLMethod, even_frames, sample_window, tracklet_rows
from fedreid.models import BackboneOptions, build_model
from fedreid.models.sequence_vit import as_sequence_model, patch_shift
from fedreid.training import LocalTrainer

SIZE = (32, 16)


def test_cross_modal_triplet_mines_across_modalities_only():
    feats = torch.tensor([[0.0, 0.0], [0.1, 0.0], [3.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 0, 1])
    modality = torch.tensor([0, 0, 1, 1])
    # anchor 0: positive (other modality) = item 2 at 3.0, negative = item 3 at 1.0
    # anchor 1: positive 2 at 2.9, negative 3 at sqrt(1.01); anchor 2: no other-modality negative
    # anchor 3: negatives 0, 1 (nearest 1.0) but no other-modality positive -> both left out
    loss = cross_modal_triplet(feats, labels, modality, margin=0.3)
    expected = ((3.0 - 1.0 + 0.3) + (2.9 - 1.01 ** 0.5 + 0.3)) / 2
    torch.testing.assert_close(loss, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    same = cross_modal_triplet(feats, labels, torch.zeros(4, dtype=torch.long))
    assert float(same) == 0.0  # one modality: no anchor has a cross-modal pair


def test_modality_centre_loss_compares_each_identitys_two_centres():
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 0, 1, 2])
    modality = torch.tensor([0, 0, 1, 1, 0])
    # identity 0: visible centre (1, 0), infrared centre (0, 1) -> 2; identities 1, 2 have one modality
    torch.testing.assert_close(modality_centre_loss(feats, labels, modality), torch.tensor(2.0))
    assert float(modality_centre_loss(feats[3:], labels[3:], modality[3:])) == 0.0


def test_modality_discrepancy_grows_with_the_gap():
    torch.manual_seed(0)
    base = torch.randn(16, 8)
    near = modality_discrepancy(base[:8], base[8:])
    apart = modality_discrepancy(base[:8] + torch.tensor([6.0] + [0.0] * 7), base[8:] - torch.tensor([6.0] + [0.0] * 7))
    assert float(apart) > float(near) + 0.1
    assert float(modality_discrepancy(base[:1], base[1:])) == 0.0


def test_patch_shift_moves_a_quarter_each_way_and_back():
    tokens = torch.arange(2 * 3 * 8 * 1, dtype=torch.float32).reshape(2, 3, 8, 1)
    shifted = patch_shift(tokens)
    assert torch.equal(shifted[:, 1, 0], tokens[:, 0, 0])  # position 0 from frame t-1
    assert torch.equal(shifted[:, 1, 1], tokens[:, 2, 1])  # position 1 from frame t+1
    assert torch.equal(shifted[:, :, 2:4], tokens[:, :, 2:4])
    assert torch.equal(patch_shift(shifted, back=True), tokens)


def vit(depth: int = 3):
    torch.manual_seed(0)
    return build_model("vit_tiny_p8", "none", BackboneOptions(image_size=SIZE, depth=depth))


def test_per_frame_mode_is_the_shared_vit_averaged_over_frames():
    plain = vit().eval()
    model = as_sequence_model(plain, temporal=False, semantic_tokens=0, interaction=False).eval()
    x = torch.randn(2, 4, 3, *SIZE)
    modality = torch.tensor([0, 1])
    with torch.no_grad():
        frames = plain.backbone(x.flatten(0, 1)).reshape(2, 4, -1).mean(1)
        torch.testing.assert_close(model.backbone(x, modality), frames)
        # frame order does not matter per frame, but does with the spatial-temporal module
        perm = x[:, [2, 0, 3, 1]]
        torch.testing.assert_close(model.backbone(perm, modality), model.backbone(x, modality))
        temporal = as_sequence_model(vit(), temporal=True, group=2).eval()
        assert not torch.allclose(temporal.backbone(perm, modality), temporal.backbone(x, modality))


def test_interaction_needs_both_modalities():
    model = as_sequence_model(vit(), temporal=False).backbone
    feats = torch.randn(4, model.feat_dim)
    assert model.interact(feats, torch.zeros(4, dtype=torch.long)) is None
    mixed = model.interact(feats, torch.tensor([0, 1, 0, 1]))
    assert mixed.shape == feats.shape and not torch.allclose(mixed, feats)


def test_sequence_encoder_rejects_shallow_vits_and_cnns():
    with pytest.raises(ValueError, match="at least 3 blocks"):
        as_sequence_model(vit(depth=2), temporal=True)
    with pytest.raises(ValueError, match="set model.arch to a ViT"):
        as_sequence_model(build_model("resnet18"))


def hand_made_video_site(ids: int = 6, frames: int = 5) -> SplitImages:
    """Cameras 0, 2 visible and 1, 3 infrared; one tracklet per camera and identity. The
    infrared frames are a brightness remap of one channel, so appearance cues change."""
    rng = np.random.default_rng(0)
    colours = rng.integers(30, 226, size=(ids, 3))

    def split(cams) -> ImageStore:
        samples, images = [], []
        for pid in range(1, ids + 1):
            for cam in cams:
                infrared = cam % 2 == 1
                for f in range(frames):
                    samples.append(Sample(f"p{pid}c{cam}f{f}.jpg", pid, cam, tracklet=0, frame=f,
                                          meta={"modality": "infrared" if infrared else "visible"}))
                    img = np.empty((3, *SIZE), dtype=np.uint8)
                    img[:] = colours[pid - 1][:, None, None]
                    if infrared:
                        img[:] = 255 - img[1:2]
                    img[:, f * 4:f * 4 + 8] //= 2  # a dark band walking down the frames
                    images.append(img + rng.integers(0, 20, size=img.shape, dtype=np.uint8))
        return ImageStore.from_tensor(torch.from_numpy(np.stack(images)), np.array([s.pid for s in samples]),
                                      np.array([s.camid for s in samples]), samples=samples)

    train, query, gallery = split(range(4)), split((0, 1)), split((2, 3))
    splits = ReidSplits("ir-video", "/nowhere", train.samples, query.samples, gallery.samples,
                        num_cameras=4, video=True)
    return SplitImages("ir-video", splits, train, query, gallery)


def test_tracklet_rows_and_frame_windows():
    site = hand_made_video_site(ids=2, frames=5)
    groups = tracklet_rows(site.train)
    assert len(groups) == 8 and all(len(g) == 5 for g in groups)
    rng = np.random.default_rng(0)
    window = sample_window(groups[0], 3, rng)
    assert np.all(np.diff(window) == 1)  # consecutive frames
    short = sample_window(groups[0][:2], 4, rng)  # shorter than the window: repeats, in order
    assert len(short) == 4 and set(short) <= set(groups[0][:2]) and np.all(np.diff(short) >= 0)
    np.testing.assert_array_equal(even_frames(np.arange(10, 15), 3), [10, 12, 14])
    image_store = ImageStore.from_tensor(torch.zeros(2, 3, *SIZE, dtype=torch.uint8), np.array([1, 2]),
                                         np.array([0, 0]))
    with pytest.raises(ValueError, match="video data"):
        tracklet_rows(image_store)


def cfg_for(*extra):
    torch.set_num_threads(1)
    return load_config(["method.name=lsmrl", "device=cpu", "data.height=32", "data.width=16",
                        "model.arch=vit_tiny_p8", "model.vit_depth=3", "eval.batch_size=64",
                        "train.warmup_epochs=0", "method.lsmrl.identities=3", *extra])


def test_batches_are_sequences_of_one_tracklet_alternating_modalities():
    site = hand_made_video_site()
    trainer = LocalTrainer(cfg_for(), site, "lsmrl")
    method = trainer.method
    batches = method.batches(np.random.default_rng(0))
    assert len(batches) == 2 and all(len(b) == 3 * 2 * 4 for b in batches)
    seqs = batches[0].reshape(-1, 4)
    modality = site.train.field("modality")
    for seq in seqs:
        assert len({(site.train.samples[r].pid, site.train.samples[r].camid) for r in seq}) == 1
    np.testing.assert_array_equal(modality[seqs[:, 0]], [0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize("switches", [[], ["method.lsmrl.temporal=false", "method.lsmrl.semantic_tokens=0",
                                           "method.lsmrl.interaction=false", "method.lsmrl.modality_losses=false"]])
def test_a_short_training_run_and_tracklet_level_cross_modality_figures(switches):
    site = hand_made_video_site()
    trainer = LocalTrainer(cfg_for(*switches), site, "lsmrl")
    logs = trainer.train_epochs(1, seed=0)
    assert logs["batches"] == 2 and np.isfinite(logs["loss"])
    assert ("loss_interaction" in logs) == (not switches) and ("loss_centre" in logs) == (not switches)
    metrics = trainer.evaluate()
    for key in ("mAP", "ir2v_mAP", "v2ir_mAP", "ir2v_rank20"):
        assert 0.0 <= metrics[key] <= 1.0, key
    feats = trainer.features(site.query, flip=True)
    assert torch.equal(feats[0], feats[4])  # every frame row carries its tracklet's feature
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(len(site.query)))
    assert trainer.features(site.train, limit=7).shape[0] == 7


def test_frame_encoder_rule_shares_a_plain_vit_sites_keys():
    cfg = cfg_for()
    options = cfg.method_options("lsmrl")
    model = LSMRLMethod.build_model(options, cfg.model, SIZE)
    assert any(".semantic" in k for k in LSMRLMethod.shared_keys(options, model))
    options.share = "frame-encoder"
    assert LSMRLMethod.shared_keys(options, model) == list(vit().state_dict())
