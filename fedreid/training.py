"""One site's training and evaluation loop, shared by `fedreid train` and the federated client.

The loop is method-agnostic: a :class:`~fedreid.methods.ReidMethod` supplies the model, the
batches and the loss of one step; this module adds what every site needs — augmentation
(the data layer builds the batch the method asked for), mixed precision on CUDA, the
federated regulariser against a frozen reference model, gradient masking for pruned
weights, and evaluation with the method's protocols.
"""

from __future__ import annotations

import copy
import time
import zlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedreid.config.schema import FedReIDConfig
from fedreid.data.batch import make_batch
from fedreid.data.split_images import SplitImages
from fedreid.data.store import ImageStore
from fedreid.eval.protocols import EvalContext, RerankOptions, run_protocols
from fedreid.methods import MethodSetup, ReidMethod, get_method
from fedreid.models import autocast_context, make_grad_scaler, resolve_device, to_channels_last
from fedreid.models.init_file import load_init_state
from fedreid.optim import build_optimizer
from fedreid.prune import MaskedParameters
from fedreid.regularisers import RegulariserOptions, regulariser

ProgressFn = Callable[[int, int], None]


def stream_seed(seed: int, site: str, *parts: int) -> int:
    """A seed of its own for every (run seed, site, round/epoch): sites never share a
    random stream, and a site's stream does not depend on which process builds it."""
    return int(np.random.SeedSequence([seed, zlib.crc32(site.encode()), *parts]).generate_state(1)[0])


def lr_factor(epoch: int, warmup_epochs: int, steps: list[int]) -> float:
    """BoT's warm-up (linear from 1%) and step decay, per epoch."""
    factor = 0.1 ** sum(epoch >= s for s in steps)
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        factor *= 0.01 * (1 - alpha) + alpha
    return factor


def build_method(cfg: FedReIDConfig, method_name: str, train: ImageStore, device: torch.device) -> ReidMethod:
    """Method ``method_name`` with its model, initialised from ``cfg.seed`` alone.

    The model's initial weights are the same at every site and at the server (the global
    round-0 model); the global torch RNG is left as it was.
    """
    cls = get_method(method_name)
    options = cfg.method_options(method_name)
    setup = MethodSetup(train=train, device=device, batch_size=cfg.train.batch_size,
                        num_instances=cfg.train.num_instances, eval_batch_size=cfg.eval.batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = cls.build_model(options, cfg.model, (cfg.data.height, cfg.data.width))
        model = to_channels_last(model.to(device), device)
        return cls(options, model, setup)


def initial_shared_state(cfg: FedReIDConfig, method_name: str) -> dict[str, np.ndarray]:
    """The shared part of method ``method_name``'s freshly built model (no data needed): the
    global model a federation starts from, and what a site's admission signature describes.
    With ``model.init`` the values come from that file (a `fedreid pretrain` model)."""
    cls = get_method(method_name)
    options = cfg.method_options(method_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = cls.build_model(options, cfg.model, (cfg.data.height, cfg.data.width))
    keys = cls.shared_keys(options, model)
    state = model.state_dict()
    fresh = {k: state[k].detach().cpu().numpy().copy() for k in keys}
    if not cfg.model.init:
        return fresh
    run = (f"method {method_name}, model.arch={cls.arch(cfg.model)}, model.vit_depth={cfg.model.vit_depth}, "
           f"size {cfg.data.height}x{cfg.data.width}")
    return load_init_state(cfg.model.init, fresh, run)


class LocalTrainer:
    """A site's method, model and training settings: trains epochs and evaluates."""

    def __init__(self, cfg: FedReIDConfig, images: SplitImages, method_name: str | None = None):
        self.cfg = cfg
        self.images = images
        self.device = resolve_device(cfg.device)
        self.method = build_method(cfg, method_name or cfg.method_of(images.name), images.train, self.device)
        self.model = self.method.model
        self.use_amp = cfg.train.amp and self.device.type == "cuda"
        # fp16 autocast needs loss scaling; bf16 and CPU get a disabled (pass-through) scaler.
        self.scaler = make_grad_scaler(self.device, self.use_amp)
        r = cfg.reg
        self.reg_options = RegulariserOptions(tau=r.tau, direction=r.direction)

    def optimizer(self, lr_scale: float = 1.0) -> torch.optim.Optimizer:
        t = self.cfg.train
        return build_optimizer(t.optimizer, self.method.param_groups(), t.lr * lr_scale, t.weight_decay)

    # ---- training -------------------------------------------------------------------
    def train_epochs(
        self,
        epochs: int,
        *,
        seed: int,
        epoch_offset: int = 0,
        reference: nn.Module | None = None,
        reg_weight: float = 0.0,
        masks: dict[str, torch.Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        progress: ProgressFn | None = None,
    ) -> dict[str, float]:
        """Train ``epochs`` epochs; returns the mean of every logged quantity."""
        cfg = self.cfg
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        opt = optimizer or self.optimizer()
        base_lrs = [g["lr"] for g in opt.param_groups]
        if reference is not None:
            reference.eval()
        masked = MaskedParameters(self.model, masks) if masks else None
        totals: dict[str, float] = {}  # summed per batch, averaged at the end
        prep: dict[str, float] = {}  # method's pre-epoch figures, last epoch's value
        count = images_seen = 0
        started = time.perf_counter()
        for e in range(epochs):
            epoch = epoch_offset + e
            factor = lr_factor(epoch, cfg.train.warmup_epochs, cfg.train.lr_steps)
            for g, base in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = base * factor
            prep.update({f"prep_{k}": v for k, v in self.method.prepare_epoch(epoch).items()})
            batches = self._epoch_batches(rng)
            self.model.train()
            for i, idx in enumerate(batches):
                parts = self._step(idx, gen, opt, reference, reg_weight, masked)
                for k, v in parts.items():
                    totals[k] = totals.get(k, 0.0) + v
                count += 1
                images_seen += len(idx)
                if progress is not None:
                    progress(i + 1, len(batches))
        out = {**prep, **{k: v / max(count, 1) for k, v in totals.items()}}
        out.update({"batches": float(count), "images": float(images_seen),
                    "train_seconds": time.perf_counter() - started})
        return out

    def _epoch_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        cfg = self.cfg
        batches = self.method.batches(rng)
        # FedCAPR's IDE: small sites replay their data up to min_epoch_images per epoch.
        passes = -(-cfg.data.min_epoch_images // max(1, len(self.images.train)))
        for _ in range(1, passes):
            batches += self.method.batches(rng)
        if cfg.train.max_batches > 0:
            batches = batches[: cfg.train.max_batches]
        return batches

    def _step(self, idx: np.ndarray, gen: torch.Generator, opt: torch.optim.Optimizer,
              reference: nn.Module | None, reg_weight: float,
              masked: MaskedParameters | None) -> dict[str, float]:
        method = self.method
        batch = make_batch(self.images.train, idx, method.batch_spec, gen, self.device,
                           erasing_p=self.cfg.train.random_erasing)
        with autocast_context(self.device, self.use_amp):
            out = method.training_step(batch)
            loss = out.loss
            parts = dict(out.logs)
            if reference is not None and reg_weight > 0:
                with torch.no_grad():
                    ref = method.reference_embedding(reference, batch)
                local = F.normalize(out.embedding.float(), dim=1)
                reg = regulariser(self.cfg.reg.kind, local, ref, self.reg_options)
                loss = loss + reg_weight * reg
                parts["loss_reg"] = float(reg.detach())
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()
        if masked is not None:
            masked.reapply()
        method.after_step(batch, out)
        parts["loss"] = float(loss.detach())
        return parts

    # ---- evaluation -----------------------------------------------------------------
    def features(self, store: ImageStore, model: nn.Module | None = None, flip: bool | None = None,
                 limit: int | None = None) -> torch.Tensor:
        """L2-normalised embeddings of ``store`` (N×D, CPU) by the method's ``embed``."""
        return self.method.embed(store, flip=self.cfg.eval.flip if flip is None else flip,
                                 limit=limit, model=model)

    def evaluate(self, model: nn.Module | None = None) -> dict[str, float]:
        """The method's protocols (``eval.protocols`` overrides) on the site's query/gallery."""
        e = self.cfg.eval
        ctx = EvalContext(
            query=self.images.query, gallery=self.images.gallery,
            query_features=self.features(self.images.query, model),
            gallery_features=self.features(self.images.gallery, model),
            video=self.images.video,
            embed=lambda store: self.features(store, model),
            rerank=RerankOptions(method=e.rerank, kwf_weighting=e.kwf_weighting,
                                 kwf_top_m=e.kwf_top_m, kwf_k=e.kwf_k),
        )
        return run_protocols(e.protocols or self.method.evaluators, ctx)

    def probe_features(self, model: nn.Module, size: int = 32) -> torch.Tensor:
        """Features of the site's fixed probe batch: its first ``size`` training images."""
        return self.features(self.images.train, model, flip=False, limit=size)

    def snapshot(self) -> nn.Module:
        """A frozen copy of the current model (the regulariser's reference)."""
        ref = copy.deepcopy(self.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref
