"""``iqaga``: a labelled site trains on its real images and their camera-style copies, each
sample's loss weighted by the quality its feature norm suggests (IQAGA, SOICT 2023).

The published recipe (research/uda.md §1) trains one StarGAN on the labelled source *and* the
target cameras, then trains the ReID model on real + generated source images with a
label-smoothed ID loss and a softmax triplet, every sample's loss weighted by AdaFace's
feature-norm quality proxy. In a federation the GAN cannot see another site's images, so:

- the copies come from the site's own camera-style GAN (``fedreid site augment``), read from
  ``generated`` (relative to the site folder; default ``augmented/`` beside ``pytorch/``);
- optionally (``styles``, off by default) the site also renders its images in the camera
  styles that unlabelled sites shared as low-frequency amplitude aggregates
  (:mod:`fedreid.augment.style`), the training-free stand-in for target-camera translation;
- mixing is per image, not by dataset concatenation: each image of a P×K batch is swapped
  for one of its copies (same identity) with probability ``fake_ratio``. The swap happens
  in the batch the trainer holds, so the federation's regulariser compares the images the
  step really trained on. Copies get BoT's augmentation (flip, pad-crop, erasing p 0.5).
- ``drop_worst`` leaves out that fraction of the GAN copies with the worst pixel score that
  ``fedreid site augment`` recorded (:mod:`fedreid.augment.quality`).

Loss per sample: ``id_weight · CE_ε(logits(f_bn)) + triplet_weight · softmax-triplet(f)``
(target margin 0.3), times ``w_i`` from :class:`~fedreid.losses.FeatureNormQualityWeight`
(``quality_weight=false``: w = 1); the step's loss is the mean. The classifier and the norm
statistics are site-only heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedreid.augment import CopyPool, GeneratedImages, generated_folder, keep_best, load_generated
from fedreid.augment.style import apply_style, load_style_banks
from fedreid.data.augment import train_augment
from fedreid.data.batch import Batch, BatchSpec
from fedreid.data.samplers import pk_batches
from fedreid.losses import FeatureNormQualityWeight, soft_cross_entropy, softmax_triplet_losses
from fedreid.methods.base import MethodOptions, MethodSetup, ReidMethod, StepOutput
from fedreid.models import IdentityHead

COPY_ERASING = 0.5  # random erasing of swapped-in copies (BoT's default)


@dataclass
class IqagaOptions(MethodOptions):
    generated: str = "augmented"  # camera-style copies: folder relative to the site folder, or absolute ({site} = its name); "" = none
    fake_ratio: float = 0.5  # probability that a sampled image is swapped for one of its copies (0 = real images only)
    drop_worst: float = 0.0  # pixel pre-filter: fraction of GAN copies with the worst recorded score left out
    styles: str = ""  # opt-in: .npz files (comma-separated) of camera styles shared by unlabelled sites; renders join the copies
    style_strength: float = 1.0  # FDA amplitude swap strength of the style renders (1 = full swap)
    quality_weight: bool = True  # weight each sample's loss by its feature-norm quality (IQAGA)
    quality_bound: float = 0.4  # weights lie in [1 - bound, 1 + bound] (IQAGA's bc)
    quality_h: float = 0.333  # scale of the standardised norm before clipping to [-1, 1]
    quality_momentum: float = 0.99  # weight of the new batch in the running norm statistics
    label_smoothing: float = 0.1  # ε of the cross-entropy
    triplet_margin: float = 0.3  # softmax-triplet target of the positive distance (0 = soft-margin triplet)
    id_weight: float = 1.0  # weight of the ID loss
    triplet_weight: float = 1.0  # weight of the softmax triplet


class IQAGAMethod(ReidMethod):
    name = "iqaga"
    supervised = True
    Options = IqagaOptions
    batch_spec = BatchSpec(views=1, labels=True)

    def __init__(self, options: IqagaOptions, model, setup: MethodSetup):
        super().__init__(options, model, setup)
        if not 0.0 <= options.fake_ratio <= 1.0:
            raise ValueError(f"method.iqaga.fake_ratio={options.fake_ratio} must lie in [0, 1]")
        if options.id_weight < 0 or options.triplet_weight < 0:
            raise ValueError(f"method.iqaga.id_weight={options.id_weight} and triplet_weight="
                             f"{options.triplet_weight} must be >= 0")
        pids = np.unique(self.train_store.pids)
        self.labels = np.searchsorted(pids, self.train_store.pids)
        self.num_classes = len(pids)
        self.heads["classifier"] = IdentityHead(model.feat_dim, self.num_classes).to(self.device)
        self.heads["quality"] = FeatureNormQualityWeight(
            options.quality_bound, options.quality_h, options.quality_momentum).to(self.device)
        self.pool = CopyPool(self._copies(), len(self.train_store)) if options.fake_ratio > 0 else None
        self._rng = np.random.default_rng(0)
        self._gen = torch.Generator().manual_seed(0)

    def _copies(self) -> GeneratedImages:
        """The GAN copies (pre-filtered) and the style renders this site swaps images for."""
        o = self.options
        parts: list[GeneratedImages] = []
        if o.generated:
            folder = generated_folder(o.generated, self.train_store)
            gan = load_generated(folder, self.train_store, option="method.iqaga.generated")
            parts.append(gan.subset(keep_best(gan.quality, o.drop_worst)))
        if o.styles:
            parts.append(self._style_renders(o.styles, o.style_strength))
        if not parts:
            raise ValueError("method.iqaga.fake_ratio > 0 but neither method.iqaga.generated nor "
                             "method.iqaga.styles gives copies; set one, or fake_ratio=0")
        return GeneratedImages(
            torch.cat([p.images for p in parts]), np.concatenate([p.source_row for p in parts]),
            np.concatenate([p.camids for p in parts]), np.concatenate([p.quality for p in parts]))

    def _style_renders(self, path: str, strength: float) -> GeneratedImages:
        """Every training image rendered in one received style (round-robin over the styles
        of every file in ``path``, comma-separated)."""
        bank = load_style_banks(path)
        if not bank:
            raise ValueError(f"method.iqaga.styles={path}: the file holds no style")
        store = self.train_store
        out = torch.empty_like(store.images)
        for s, style in enumerate(bank):
            rows = torch.arange(s, len(store), len(bank))
            out[rows] = apply_style(store.images[rows], style, strength)
        n = len(store)
        return GeneratedImages(out, np.arange(n), store.camids.copy(), np.zeros(n))

    def param_groups(self) -> list[dict]:
        shared = [p for p in self.model.parameters() if p.requires_grad]
        return [{"params": shared}, {"params": list(self.heads["classifier"].parameters())}]

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        # the copies' own random stream, drawn from the epoch's: runs stay reproducible
        self._rng = np.random.default_rng(rng.integers(2**62))
        self._gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return pk_batches(self.labels, self.setup.batch_size, self.setup.num_instances, rng)

    def swap_in_copies(self, batch: Batch) -> int:
        """Replace images of ``batch`` by one of their copies with probability ``fake_ratio``
        (in place: the trainer's regulariser then sees the same images); returns how many."""
        if self.pool is None:
            return 0
        chosen = self._rng.random(len(batch.indices)) < self.options.fake_ratio
        picks = self.pool.draw(batch.indices, self._rng)
        slots = np.flatnonzero(chosen & (picks >= 0))
        if slots.size == 0:
            return 0
        copies = train_augment(self.pool.images(picks[slots]), self._gen, erasing_p=COPY_ERASING)
        at = torch.as_tensor(slots, device=batch.images.device)
        view = batch.views[0].clone()
        view[at] = copies.to(view.device, view.dtype)
        batch.views[0] = view
        camids = batch.camids.clone()
        camids[at] = torch.as_tensor(self.pool.generated.camids[picks[slots]], device=camids.device)
        batch.camids = camids
        return int(slots.size)

    def training_step(self, batch: Batch) -> StepOutput:
        o = self.options
        swapped = self.swap_in_copies(batch)
        targets = torch.as_tensor(self.labels[batch.indices], device=batch.images.device)
        global_feat, bn_feat = self.model(batch.images)
        global_feat, bn_feat = global_feat.float(), bn_feat.float()
        logits = self.heads["classifier"](bn_feat)
        smooth = (1 - o.label_smoothing) * F.one_hot(targets, self.num_classes).float() \
            + o.label_smoothing / self.num_classes
        l_id = soft_cross_entropy(logits, smooth)
        l_tri, valid = softmax_triplet_losses(global_feat, targets, o.triplet_margin)
        tri_scale = len(valid) / valid.sum().clamp(min=1)  # mean over valid anchors, as the triplet
        if o.quality_weight:
            weights = self.heads["quality"](global_feat)
        else:
            weights = torch.ones_like(l_id)
        per_sample = o.id_weight * l_id + o.triplet_weight * tri_scale * l_tri
        total = (weights * per_sample).mean()
        return StepOutput(total, {
            "loss_id": float(l_id.detach().mean()),
            "loss_triplet": float((tri_scale * l_tri).detach().mean()),
            "quality_weight_min": float(weights.min()),
            "quality_weight_max": float(weights.max()),
            "copies_fraction": swapped / len(batch.indices),
            "train_acc": float((logits.argmax(1) == targets).float().mean()),
        }, embedding=bn_feat)
