"""One site's training and evaluation loop, shared by `fedreid train` and the federated client.

The loop is method-agnostic: a :class:`~fedreid.methods.ReidMethod` supplies batches and the
loss; this module adds what every site needs — augmentation, mixed precision on CUDA, the
KL regulariser against a frozen reference model, gradient masking for pruned weights, and
Market-protocol evaluation with flip TTA.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedreid.config.schema import FedReIDConfig
from fedreid.data.augment import train_augment
from fedreid.data.readers import load_dataset
from fedreid.data.records import ReidSplits
from fedreid.data.store import ImageStore
from fedreid.eval import evaluate
from fedreid.eval.features import extract_features, pairwise_distance, tracklet_features
from fedreid.eval.rerank import k_reciprocal, kwf
from fedreid.losses import kl_feature_loss
from fedreid.methods import BatchOutput, ReidMethod, get_method
from fedreid.methods.batches import eval_batches
from fedreid.models import (
    autocast_context,
    build_model,
    make_grad_scaler,
    resolve_device,
    to_channels_last,
)
from fedreid.prune import mask_gradients, reapply_masks

ProgressFn = Callable[[int, int], None]


@dataclass
class SiteData:
    """A site's splits decoded into memory."""

    name: str
    splits: ReidSplits
    train: ImageStore
    query: ImageStore
    gallery: ImageStore

    @property
    def video(self) -> bool:
        return self.splits.video


def load_site(root: str | Path, dataset: str, size: tuple[int, int], seed: int = 0) -> SiteData:
    splits = load_dataset(root, dataset, seed=seed)
    return SiteData(
        name=Path(root).name,
        splits=splits,
        train=ImageStore(splits.train, size),
        query=ImageStore(splits.query, size),
        gallery=ImageStore(splits.gallery, size),
    )


def lr_factor(epoch: int, warmup_epochs: int, steps: list[int]) -> float:
    """BoT's warm-up (linear from 1%) and step decay, per epoch."""
    factor = 0.1 ** sum(epoch >= s for s in steps)
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        factor *= 0.01 * (1 - alpha) + alpha
    return factor


def build_optimizer(cfg: FedReIDConfig, method: ReidMethod, lr: float) -> torch.optim.Optimizer:
    t = cfg.train
    groups = method.param_groups()
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay)


class SiteTrainer:
    """A site's model, method and optimiser; trains epochs and evaluates."""

    def __init__(self, cfg: FedReIDConfig, site: SiteData, method_name: str | None = None):
        self.cfg = cfg
        self.site = site
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)  # heads and initial weights are reproducible per run
        self.model = build_model(cfg.model.arch, cfg.model.weights, last_stride=cfg.model.last_stride)
        self.model = to_channels_last(self.model.to(self.device), self.device)
        method_cls = get_method(method_name or cfg.method.name)
        self.method = method_cls(cfg, self.model, site.train, self.device)
        self.use_amp = cfg.train.amp and self.device.type == "cuda"
        # fp16 autocast needs loss scaling; bf16 and CPU get a disabled (pass-through) scaler.
        self.scaler = make_grad_scaler(self.device, self.use_amp)

    # ---- training -------------------------------------------------------------------
    def train_epochs(
        self,
        epochs: int,
        *,
        seed: int,
        lr_scale: float = 1.0,
        epoch_offset: int = 0,
        reference: nn.Module | None = None,
        kl_weight: float = 0.0,
        masks: dict[str, torch.Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        progress: ProgressFn | None = None,
    ) -> dict[str, float]:
        """Train ``epochs`` epochs; returns the mean of every logged quantity."""
        cfg = self.cfg
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        opt = optimizer or build_optimizer(cfg, self.method, cfg.train.lr * lr_scale)
        base_lrs = [g["lr"] for g in opt.param_groups]
        if reference is not None:
            reference.eval()
        totals: dict[str, float] = {}  # summed per batch, averaged at the end
        prep: dict[str, float] = {}  # method's pre-epoch figures, last epoch's value
        count = 0
        images_seen = 0
        started = time.perf_counter()
        for e in range(epochs):
            epoch = epoch_offset + e
            factor = lr_factor(epoch, cfg.train.warmup_epochs, cfg.train.lr_steps)
            for g, base in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = base * factor
            for k, v in self.method.prepare_epoch(epoch).items():
                prep[f"prep_{k}"] = v
            batches = self.method.batches(rng)
            # FedCAPR's IDE: small sites replay their data up to min_epoch_images per epoch.
            passes = -(-cfg.data.min_epoch_images // max(1, len(self.site.train)))
            for _ in range(1, passes):
                batches += self.method.batches(rng)
            if cfg.train.max_batches > 0:
                batches = batches[: cfg.train.max_batches]
            self.model.train()
            for i, idx in enumerate(batches):
                parts = self._step(idx, gen, opt, reference, kl_weight, masks)
                for k, v in parts.items():
                    totals[k] = totals.get(k, 0.0) + v
                count += 1
                images_seen += len(idx)
                if progress is not None:
                    progress(i + 1, len(batches))
        out = {**prep, **{k: v / count for k, v in totals.items()}}
        seconds = time.perf_counter() - started
        out.update({"batches": float(count), "images": float(images_seen), "train_seconds": seconds})
        return out

    def _step(self, idx, gen, opt, reference, kl_weight, masks) -> dict[str, float]:
        x = train_augment(
            self.site.train.batch(idx), gen, erasing_p=self.cfg.train.random_erasing
        ).to(self.device, non_blocking=True)
        with autocast_context(self.device, self.use_amp):
            global_feat, bn_feat = self.model(x)[:2]
            out = BatchOutput(global_feat=global_feat.float(), bn_feat=bn_feat.float(), indices=idx)
            loss, parts = self.method.loss(out)
            if reference is not None and kl_weight > 0:
                with torch.no_grad():
                    ref_feat = reference(x).float()
                local = F.normalize(out.bn_feat, dim=1)
                if self.cfg.kl.loss == "cosine":  # FedCAPR's regulariser
                    reg = (1 - F.cosine_similarity(local, ref_feat, dim=1)).mean()
                else:
                    reg = kl_feature_loss(local, ref_feat, tau=self.cfg.kl.tau,
                                          direction=self.cfg.kl.direction)
                loss = loss + kl_weight * reg
                parts["loss_reg"] = float(reg.detach())
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(opt)
        if masks:
            mask_gradients(self.model, masks)
        self.scaler.step(opt)
        self.scaler.update()
        if masks:
            reapply_masks(self.model, masks)
        self.method.after_step(out)
        parts["loss"] = float(loss.detach())
        return parts

    # ---- evaluation -----------------------------------------------------------------
    @torch.no_grad()
    def features(self, store: ImageStore, model: nn.Module | None = None, flip: bool | None = None,
                 limit: int | None = None) -> torch.Tensor:
        model = model or self.model
        was_training = model.training
        model.eval()
        feats = extract_features(
            model,
            eval_batches(store, self.cfg.eval.batch_size, self.device, limit=limit),
            device=self.device,
            flip=self.cfg.eval.flip if flip is None else flip,
        )
        model.train(was_training)
        return feats.float().cpu()

    def evaluate(self, model: nn.Module | None = None, rerank: bool | None = None) -> dict[str, float]:
        """Rank-1/5/10, mAP and mINP on the site's own query/gallery (and re-ranked)."""
        qf = self.features(self.site.query, model)
        gf = self.features(self.site.gallery, model)
        q_pids, q_cams = self.site.query.pids, self.site.query.camids
        g_pids, g_cams = self.site.gallery.pids, self.site.gallery.camids
        if self.site.video:
            qf, q_pids, q_cams = tracklet_features(qf, self.site.query.samples)
            gf, g_pids, g_cams = tracklet_features(gf, self.site.gallery.samples)
        dist = pairwise_distance(qf, gf, metric="cosine")
        dist = dist.numpy() if isinstance(dist, torch.Tensor) else dist
        res = _summarise(evaluate(dist, q_pids, g_pids, q_cams, g_cams))
        if self.cfg.eval.rerank if rerank is None else rerank:
            qq = pairwise_distance(qf, qf, metric="cosine")
            gg = pairwise_distance(gf, gf, metric="cosine")
            rr = k_reciprocal(dist, np.asarray(qq), np.asarray(gg))
            res.update({f"rr_{k}": v for k, v in _summarise(evaluate(rr, q_pids, g_pids, q_cams, g_cams)).items()})
        if self.cfg.eval.kwf:
            fused = kwf(qf, gf, g_cams, q_cams)
            res.update({f"kwf_{k}": v for k, v in _summarise(evaluate(fused, q_pids, g_pids, q_cams, g_cams)).items()})
        return res

    @torch.no_grad()
    def probe_features(self, model: nn.Module, size: int = 32) -> torch.Tensor:
        """Features of the site's fixed probe batch: its first ``size`` training images."""
        return self.features(self.site.train, model, flip=False, limit=size)

    def snapshot(self) -> nn.Module:
        """A frozen copy of the current model (the KL reference, CRR backups)."""
        ref = copy.deepcopy(self.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref


def _summarise(result: dict) -> dict[str, float]:
    cmc = np.asarray(result["cmc"])
    return {
        "mAP": float(result["mAP"]),
        "mINP": float(result["mINP"]),
        "rank1": float(cmc[0]),
        "rank5": float(cmc[min(4, len(cmc) - 1)]),
        "rank10": float(cmc[min(9, len(cmc) - 1)]),
    }
