"""``giqt``: GeoReID's GIQT — a ViT whose attention is rectified by the camera geometry.

Hambarde & Proença, "Rectifying Geometry-Induced Similarity Distortions for Real-World
Aerial-Ground Person Re-Identification" (research/methods.md §1). The model
(:mod:`fedreid.models.giqt`): the last ``blocks`` blocks of a ViT transform attention's
query-key similarity with a rank-``rank`` geometry-conditioned term and attend to
``prompts`` geometry-generated prompt tokens; both start at zero, so a new GIQT model is
exactly the plain ViT. Geometry (altitude, distance, pitch per image) comes from the
metadata (``BatchSpec`` field ``geometry``) or from a small regressor trained here on the
images that have it (``regressor=true``; ``source=regressor`` uses only its prediction).
Trained with the BoT head (label-smoothed CE on the BNNeck feature, batch-hard triplet on
the pooled feature) plus ``geometry_weight`` × the regressor's MSE.

``blocks=0`` builds the same ViT and head without GIQT (the claim check's baseline). What a
federation shares is a share rule: ``backbone+neck`` (everything, geometry modules included),
``geometry-local`` (the ViT and neck only: the same keys as a plain ViT site, so GIQT sites
federate with ``bot``/``vitc`` sites on that ViT; rectifiers, prompts and regressor stay on
the site) or ``regressor-shared`` (ViT, neck and regressor: sites without metadata get a
regressor trained where there is some).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedreid.data.augment import normalize
from fedreid.data.batch import Batch, BatchSpec
from fedreid.data.samplers import pk_batches
from fedreid.data.store import ImageStore
from fedreid.losses import CrossEntropyLabelSmooth, TripletLoss
from fedreid.methods.base import MethodOptions, MethodSetup, ReidMethod, StepOutput
from fedreid.models import IdentityHead
from fedreid.models.giqt import SOURCES, GIQTReidNet, geometry_loss, with_giqt


@dataclass
class GiqtOptions(MethodOptions):
    share: str = "backbone+neck"  # backbone+neck (all) | geometry-local | regressor-shared
    blocks: int = 2  # the ViT's last N blocks are rectified and see the prompts (0 = plain ViT)
    rank: int = 4  # rank r of each head's geometry-conditioned query-key term
    scale: float = 1.0  # multiplies the rectifier's V term and the prompt gates (how fast they move from 0)
    rectify: bool = True  # false: prompts only (an ablation)
    prompts: int = 2  # geometry-generated prompt tokens (0 = none)
    regressor: bool = False  # train a small CNN that predicts the geometry from the image
    source: str = "metadata"  # metadata (regressor fills unknown values) | regressor (prediction only)
    geometry_weight: float = 1.0  # weight of the regressor's MSE on the known geometry
    label_smoothing: float = 0.1  # ε of the cross-entropy
    triplet_margin: float = 0.3  # <= 0 means soft margin


class GIQTMethod(ReidMethod):
    name = "giqt"
    supervised = True
    Options = GiqtOptions
    batch_spec = BatchSpec(views=1, labels=True, fields=("geometry",))
    default_arch = "vit_tiny_p16"
    evaluators = ("single_query", "aerial_ground")
    share_rules = {
        "geometry-local": ("backbone.vit.", "neck."),
        "regressor-shared": ("backbone.vit.", "backbone.regressor.", "neck."),
    }

    @classmethod
    def build_model(cls, options: GiqtOptions, model_cfg, image_size: tuple[int, int]) -> nn.Module:
        if options.source not in SOURCES:
            raise ValueError(f"method.giqt.source={options.source!r}: choose one of {', '.join(SOURCES)}")
        if options.blocks < 0:
            raise ValueError(f"method.giqt.blocks={options.blocks}: must be >= 0 (0 = the plain ViT)")
        model = super().build_model(options, model_cfg, image_size)
        if options.blocks == 0:
            return model
        return with_giqt(model, blocks=options.blocks, rank=options.rank, prompts=options.prompts,
                         rectify=options.rectify, regressor=options.regressor, source=options.source,
                         scale=options.scale)

    def __init__(self, options: GiqtOptions, model, setup: MethodSetup):
        super().__init__(options, model, setup)
        self.geometric = isinstance(model, GIQTReidNet)
        pids = np.unique(self.train_store.pids)
        self.labels = np.searchsorted(pids, self.train_store.pids)
        self.heads["classifier"] = IdentityHead(model.feat_dim, len(pids)).to(self.device)
        self.id_loss = CrossEntropyLabelSmooth(len(pids), epsilon=options.label_smoothing)
        self.triplet = TripletLoss(margin=options.triplet_margin if options.triplet_margin > 0 else None)

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return pk_batches(self.labels, self.setup.batch_size, self.setup.num_instances, rng)

    def _forward(self, model: nn.Module, images: torch.Tensor, geometry: torch.Tensor):
        if self.geometric:
            return model.forward_train(images, geometry)
        return model(images), None

    def training_step(self, batch: Batch) -> StepOutput:
        targets = torch.as_tensor(self.labels[batch.indices], device=batch.images.device)
        (global_feat, bn_feat), predicted = self._forward(self.model, batch.images, batch.fields["geometry"])
        global_feat, bn_feat = global_feat.float(), bn_feat.float()
        logits = self.heads["classifier"](bn_feat)
        l_id = self.id_loss(logits, targets)
        l_tri = self.triplet(global_feat, targets)
        total = l_id + l_tri
        logs = {"loss_id": float(l_id.detach()), "loss_triplet": float(l_tri.detach()),
                "train_acc": float((logits.argmax(1) == targets).float().mean())}
        if predicted is not None:
            l_geo = geometry_loss(predicted.float(), batch.fields["geometry"].float())
            total = total + self.options.geometry_weight * l_geo
            logs["loss_geometry"] = float(l_geo.detach())
        return StepOutput(total, logs, embedding=bn_feat)

    def reference_embedding(self, reference: nn.Module, batch: Batch) -> torch.Tensor:
        if not self.geometric:
            return reference(batch.images).float()
        return reference(batch.images, batch.fields["geometry"]).float()

    @torch.no_grad()
    def embed(self, store: ImageStore, *, flip: bool, limit: int | None = None,
              model: nn.Module | None = None) -> torch.Tensor:
        """Retrieval embeddings with each image's own geometry (flipping keeps it)."""
        model = model or self.model
        if not self.geometric:
            return super().embed(store, flip=flip, limit=limit, model=model)
        n = len(store) if limit is None else min(limit, len(store))
        geometry = torch.as_tensor(store.field("geometry"))
        was_training = model.training
        model.eval()
        out = []
        try:
            for start in range(0, n, self.setup.eval_batch_size):
                stop = min(start + self.setup.eval_batch_size, n)
                x = normalize(store.images[start:stop].to(self.device))
                g = geometry[start:stop].to(self.device)
                emb = model(x, g)
                if flip:
                    emb = emb + model(torch.flip(x, dims=[3]), g)
                out.append(F.normalize(emb.float(), dim=1).cpu())
        finally:
            model.train(was_training)
        return torch.cat(out)
