"""``mosaic``: MoSAIC-ReID — one LoRA expert per binary attribute value, gated per image.

Psalta, Tsironis & Karantzalos, "What really matters for person re-identification? A
Mixture-of-Experts Framework for Semantic Attribute Importance" (research/methods.md §3):
a residual mixture of LoRA experts in the last blocks of a ViT (:mod:`fedreid.models.lora`),
one expert per attribute value, trained with the BoT head (label-smoothed CE on the BNNeck
feature, batch-hard triplet on the pooled feature). Routers:

- ``oracle``: the gates are the identity's attribute labels, for training *and* retrieval
  (the paper's router; it needs labels for query and gallery, so it is an analysis tool);
- ``learned``: an attribute head on the CLS token entering the first expert block, trained
  with BCE on the labels; its probabilities gate the experts, so retrieval needs no labels.

``expert_blocks=0`` builds the same ViT and head without experts (the comparison's
baseline). What a federation shares is a share rule: ``experts`` (experts and router only;
the ViT stays on the site, frozen with ``freeze_backbone``, and so does the neck),
``backbone+experts`` (everything) or ``backbone-only`` (ViT and neck; experts stay local).
Attribute importance (knock-out, GLM, forest, SHAP, tests) is :mod:`fedreid.analysis`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedreid.data.augment import normalize
from fedreid.data.batch import Batch, BatchSpec
from fedreid.data.samplers import pk_batches
from fedreid.data.store import ImageStore
from fedreid.losses import CrossEntropyLabelSmooth, TripletLoss
from fedreid.methods.attribute_sets import ATTRIBUTE_SETS, attribute_bits, expert_names
from fedreid.methods.base import MethodOptions, MethodSetup, ReidMethod, StepOutput
from fedreid.models import IdentityHead
from fedreid.models.lora import ExpertReidNet, with_experts

ROUTERS = ("oracle", "learned")


@dataclass
class MosaicOptions(MethodOptions):
    share: str = "backbone+experts"  # experts | backbone+experts | backbone-only (or a fedreid.models.SHARE_RULES name)
    attribute_set: str = "synthetic"  # experts' attribute values: synthetic | market | duke | custom
    attributes: list[str] = field(default_factory=list)  # attribute_set=custom: names, 'name' (0/1) or 'name=value'
    rank: int = 4  # rank r of every LoRA expert
    expert_blocks: int = 2  # the ViT's last N blocks get experts (0 = the plain ViT, the baseline)
    lora_scale: float = 1.0  # s, multiplies every expert's B·A (LoRA's alpha/r)
    router: str = "oracle"  # oracle (gates = attribute labels) | learned (an attribute head's probabilities)
    router_weight: float = 1.0  # weight of the learned router's BCE on the attribute labels
    freeze_backbone: bool = False  # train experts, router and neck only (the ViT as loaded)
    label_smoothing: float = 0.1  # ε of the cross-entropy
    triplet_margin: float = 0.3  # <= 0 means soft margin


class MosaicMethod(ReidMethod):
    name = "mosaic"
    supervised = True
    Options = MosaicOptions
    batch_spec = BatchSpec(views=1, labels=True)
    default_arch = "vit_tiny_p16"
    share_rules = {
        "experts": ("backbone.experts.", "backbone.router."),
        "backbone+experts": ("backbone.", "neck."),
        "backbone-only": ("backbone.vit.", "neck."),
    }

    @classmethod
    def experts(cls, options: MosaicOptions) -> tuple[str, ...]:
        """The attribute value of each expert, in expert order."""
        return expert_names(options.attribute_set, options.attributes)

    @classmethod
    def build_model(cls, options: MosaicOptions, model_cfg, image_size: tuple[int, int]) -> nn.Module:
        _check(options)
        model = super().build_model(options, model_cfg, image_size)
        if options.expert_blocks == 0:
            return model
        model = with_experts(model, len(cls.experts(options)), options.rank, options.expert_blocks,
                             scale=options.lora_scale, router=options.router == "learned")
        if options.freeze_backbone:
            model.backbone.vit.requires_grad_(False)
        return model

    def __init__(self, options: MosaicOptions, model, setup: MethodSetup):
        super().__init__(options, model, setup)
        self.names = self.experts(options)
        self.has_experts = isinstance(model, ExpertReidNet)
        self.train_bits = attribute_bits(self.train_store.samples, self.names) if self.has_experts else None
        pids = np.unique(self.train_store.pids)
        self.labels = np.searchsorted(pids, self.train_store.pids)
        self.heads["classifier"] = IdentityHead(model.feat_dim, len(pids)).to(self.device)
        self.id_loss = CrossEntropyLabelSmooth(len(pids), epsilon=options.label_smoothing)
        self.triplet = TripletLoss(margin=options.triplet_margin if options.triplet_margin > 0 else None)

    @property
    def oracle(self) -> bool:
        return self.has_experts and self.options.router == "oracle"

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return pk_batches(self.labels, self.setup.batch_size, self.setup.num_instances, rng)

    def _oracle_gates(self, bits: np.ndarray, device: torch.device) -> torch.Tensor:
        return torch.as_tensor(np.nan_to_num(bits, nan=0.0), device=device)

    def training_step(self, batch: Batch) -> StepOutput:
        targets = torch.as_tensor(self.labels[batch.indices], device=batch.images.device)
        logs: dict[str, float] = {}
        logits_attr = None
        if self.has_experts:
            bits = self.train_bits[batch.indices]
            gates = self._oracle_gates(bits, batch.images.device) if self.oracle else None
            (global_feat, bn_feat), logits_attr = self.model.forward_train(batch.images, gates)
        else:
            global_feat, bn_feat = self.model(batch.images)
        global_feat, bn_feat = global_feat.float(), bn_feat.float()
        logits = self.heads["classifier"](bn_feat)
        l_id = self.id_loss(logits, targets)
        l_tri = self.triplet(global_feat, targets)
        total = l_id + l_tri
        logs.update(loss_id=float(l_id.detach()), loss_triplet=float(l_tri.detach()),
                    train_acc=float((logits.argmax(1) == targets).float().mean()))
        if logits_attr is not None:
            l_bce, acc = router_loss(logits_attr.float(), torch.as_tensor(bits, device=logits_attr.device))
            total = total + self.options.router_weight * l_bce
            logs.update(loss_router=float(l_bce.detach()), router_acc=acc)
        return StepOutput(total, logs, embedding=bn_feat)

    def reference_embedding(self, reference: nn.Module, batch: Batch) -> torch.Tensor:
        if not self.oracle:
            return reference(batch.images).float()
        gates = self._oracle_gates(self.train_bits[batch.indices], batch.images.device)
        return reference(batch.images, gates).float()

    def gates_of(self, store: ImageStore) -> np.ndarray | None:
        """The oracle's gates (N×E, unknown values 0) for a split; None for other routers."""
        if not self.oracle:
            return None
        return np.nan_to_num(attribute_bits(store.samples, self.names), nan=0.0)

    @torch.no_grad()
    def embed(self, store: ImageStore, *, flip: bool, limit: int | None = None,
              model: nn.Module | None = None) -> torch.Tensor:
        return self.embed_knocked_out(store, flip=flip, limit=limit, model=model)

    @torch.no_grad()
    def embed_knocked_out(self, store: ImageStore, *, flip: bool, off: Sequence[int] = (),
                          limit: int | None = None, model: nn.Module | None = None) -> torch.Tensor:
        """Retrieval embeddings (N×D, normalised, CPU) with the experts in ``off`` knocked out
        (gate 0 for every image): the attribute analysis's conditions."""
        model = model or self.model
        if not self.has_experts:
            if off:
                raise ValueError("this mosaic model has no experts (expert_blocks=0) to knock out")
            return super().embed(store, flip=flip, limit=limit, model=model)
        n = len(store) if limit is None else min(limit, len(store))
        keep = torch.ones(len(self.names), device=self.device)
        bad = [i for i in off if not 0 <= i < len(self.names)]
        if bad:
            raise ValueError(f"experts {bad} do not exist; this model has {len(self.names)} (0..{len(self.names) - 1})")
        keep[list(off)] = 0.0
        gates = self.gates_of(store)
        was_training = model.training
        model.eval()
        out = []
        try:
            for start in range(0, n, self.setup.eval_batch_size):
                stop = min(start + self.setup.eval_batch_size, n)
                x = normalize(store.images[start:stop].to(self.device))
                g = None if gates is None else torch.as_tensor(gates[start:stop], device=self.device)
                emb = model(x, g, keep)
                if flip:
                    emb = emb + model(torch.flip(x, dims=[3]), g, keep)
                out.append(F.normalize(emb.float(), dim=1).cpu())
        finally:
            model.train(was_training)
        return torch.cat(out)


def router_loss(logits: torch.Tensor, bits: torch.Tensor) -> tuple[torch.Tensor, float]:
    """BCE of the router's logits on the known attribute values (NaN = unknown, left out),
    and the share of known values it gets right."""
    known = ~torch.isnan(bits)
    if not known.any():
        return logits.sum() * 0.0, float("nan")
    target = torch.nan_to_num(bits, nan=0.0)
    loss = F.binary_cross_entropy_with_logits(logits[known], target[known])
    acc = float(((logits[known] > 0).float() == target[known]).float().mean())
    return loss, acc


def _check(options: MosaicOptions) -> None:
    if options.attribute_set not in ATTRIBUTE_SETS:
        raise ValueError(f"method.mosaic.attribute_set={options.attribute_set!r}: choose one of {', '.join(ATTRIBUTE_SETS)}")
    if options.router not in ROUTERS:
        raise ValueError(f"method.mosaic.router={options.router!r}: choose one of {', '.join(ROUTERS)}")
    if options.rank < 1:
        raise ValueError(f"method.mosaic.rank={options.rank}: must be at least 1")
    if options.expert_blocks < 0:
        raise ValueError(f"method.mosaic.expert_blocks={options.expert_blocks}: must be >= 0 (0 = no experts)")
    if options.router_weight < 0:
        raise ValueError(f"method.mosaic.router_weight={options.router_weight}: must be >= 0")
    if options.expert_blocks == 0 and options.share in ("experts",):
        raise ValueError("method.mosaic.share=experts with expert_blocks=0: there are no experts to share")
