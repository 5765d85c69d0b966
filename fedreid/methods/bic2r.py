"""``bic2r``: Bi-C2R — compatible representations, so a site's stored gallery survives updates.

Cui, Zhou & Peng, "Bi-C2R: Bidirectional Continual Compatible Representation for
Re-indexing Free Lifelong Person Re-identification" (research/methods.md §2). In a
federation every round is a task and "old" is the model the site downloaded: it is kept
frozen while the site trains a new model with the BoT head (label-smoothed CE, batch-hard
triplet) plus the compatibility losses of :mod:`fedreid.losses.compat` (names and default
weights as the reference logs them):

- ``loss_ca`` (100): MSE(norm T_on(f_old), f_new) + MSE(norm T_no(f_new), f_old);
- ``loss_cr`` (1): negative-pair relations of f_old kept by T_on(f_old), of f_new by T_no(f_new);
- ``loss_ad`` (0.007): transferred features stay classifiable — T_on(f_old) by the site's
  classifier as it was at the download (KD to the old logits), T_no(f_new) by the current
  one (KD to the new logits). Features here are normalised BNNeck outputs (the retrieval
  feature), so "un-normalising" multiplies by the source's BN-feature norm and the neck is
  not applied again (the reference un-normalises a GeM feature with its channel statistics);
- ``loss_dc`` (0.0005): each transfer moves a feature the way the models drifted;
- ``loss_af`` (1, τ 0.1): LSTKC's anti-forgetting affinity distillation.

T_on (old → new) and T_no (new → old) are :class:`~fedreid.models.transfer_net.TransferNet`
heads: trained jointly with the model at the same learning rate, kept on the site, never
shared. In the site's first round (its first download) and alone (``fedreid train``) there
is no old model yet: only CE and triplet run.

The gallery update. The model a site deploys after round r is the aggregate, not its own
local model, so T_on — trained to map the download into the *local* model — is calibrated
when the next model arrives: the site keeps, per downloaded model, the features ("anchors")
of its first ``anchor_images`` training images; at a download it fits a copy of T_on for
``calibrate_steps`` full-batch Adam steps from the previous model's anchors to the new
model's (feature MSE), keeping a quarter of the anchors out of the fit. Of the fitted
transfer, T_on as trained and the identity (leaving the gallery as it is), the one with the
lowest MSE on the held-out anchors becomes the upgrade transfer — from the previous
download's space into this one's — so an upgrade is never chosen that the site's own data
says is worse than no upgrade (with a few hundred anchors a 2-path transfer net overfits
easily). A site applies it to its stored gallery with ``fedreid site index upgrade
--transfer <file> --alpha <fusion_alpha>`` (no image is read; :meth:`Bic2rMethod.site_files`
writes the file). ``calibrate_steps=0`` skips the fit (T_on or the identity). LSTKC's
affinity α between the two models' anchors and the held-out MSEs are recorded beside it.

Left out of the lightweight version: GeM pooling (the registry's backbones pool by average),
classifier expansion and parameter fusion across tasks (the server aggregates; a site keeps
its own classifier across rounds).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedreid.data.batch import Batch, BatchSpec
from fedreid.losses.compat import (
    affinity_alpha,
    anti_forgetting,
    directional_consistency,
    feature_alignment,
    logit_distillation,
    relation_distillation,
)
from fedreid.losses.weighted import weighted_sum
from fedreid.methods.base import MethodOptions, MethodSetup, ReidMethod, StepOutput
from fedreid.methods.supervised import IdTriplet
from fedreid.models.transfer_net import TransferNet

UPGRADE_PREFIX = "upgrade."


@dataclass
class Bic2rOptions(MethodOptions):
    label_smoothing: float = 0.1  # ε of the cross-entropy
    triplet_margin: float = 0.3  # <= 0 means soft margin
    align_weight: float = 100.0  # loss_ca, old<->new feature alignment (reference weight_trans)
    relation_weight: float = 1.0  # loss_cr, relation distillation (weight_anti)
    relation_temperature: float = 1.0  # softmax temperature of loss_cr (the reference has none: 1)
    discriminative_weight: float = 0.007  # loss_ad, transferred features stay classifiable (weight_discri)
    direction_weight: float = 0.0005  # loss_dc, directional consistency (weight_transx)
    forgetting_weight: float = 1.0  # loss_af, LSTKC anti-forgetting (AF_weight)
    forgetting_temperature: float = 0.1  # τ of loss_af's affinities
    transfer_blocks: int = 1  # residual blocks of T_on and T_no (the reference: 2)
    transfer_paths: int = 2  # forward-mapping paths per block (the reference: 4)
    transfer_hidden: int = 32  # width of a path's bottleneck
    prototypes: int = 8  # knowledge-capture prototypes per block (the reference: 16)
    anchor_images: int = 1024  # first N training images whose features the site keeps per downloaded model
    calibrate_steps: int = 200  # Adam steps fitting the upgrade transfer at a download (0 = T_on as trained)
    calibrate_lr: float = 0.001  # learning rate of that fit
    fusion_alpha: float = 1.0  # α written with the upgrade transfer: G = norm(α·T(G) + (1−α)·G)


class Bic2rMethod(IdTriplet, ReidMethod):
    name = "bic2r"
    supervised = True
    Options = Bic2rOptions
    batch_spec = BatchSpec(views=1, labels=True)
    default_arch = "resnet18"

    def __init__(self, options: Bic2rOptions, model, setup: MethodSetup):
        super().__init__(options, model, setup)
        _check(options)
        self.dim = model.feat_dim
        self.init_id_triplet(self.dim, options.label_smoothing, options.triplet_margin)
        self.heads["transfer_on"] = self._transfer().to(self.device)
        self.heads["transfer_no"] = self._transfer().to(self.device)
        self.old: nn.Module | None = None  # the frozen download (this round's "old" model)
        self.old_classifier: nn.Module | None = None
        self.anchors: np.ndarray | None = None  # anchor features of the last downloaded model
        self.upgrade: TransferNet | None = None  # previous download's space → the last one's
        self.upgrade_info: dict[str, float] = {}

    def _transfer(self) -> TransferNet:
        o = self.options
        return TransferNet(self.dim, o.transfer_blocks, o.transfer_paths, o.transfer_hidden, o.prototypes)

    def param_groups(self) -> list[dict]:
        model = [p for p in self.model.parameters() if p.requires_grad]
        return [{"params": model}, {"params": list(self.heads.parameters())}]

    # ---- training -------------------------------------------------------------------------
    def training_step(self, batch: Batch) -> StepOutput:
        step = self.id_triplet(batch)
        targets, bn_feat, logits = step.targets, step.bn_feat, step.logits
        total = step.l_id + step.l_tri
        logs = step.logs()
        if self.old is not None:
            compat, parts = self._compatibility(batch.images, bn_feat, logits, targets)
            total = total + compat
            logs.update(parts)
        return StepOutput(total, logs, embedding=bn_feat)

    def _compatibility(self, images: torch.Tensor, bn_new: torch.Tensor, logits_new: torch.Tensor,
                       pids: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        o = self.options
        with torch.no_grad():
            bn_old = self.old.neck(self.old.backbone(images)).float()
        f_old, f_new = F.normalize(bn_old, dim=1), F.normalize(bn_new, dim=1)
        t_on = F.normalize(self.heads["transfer_on"](f_old), dim=1)
        t_no = F.normalize(self.heads["transfer_no"](f_new), dim=1)
        terms = {
            "ca": (o.align_weight, lambda: feature_alignment(t_on, f_new) + feature_alignment(t_no, f_old)),
            "cr": (o.relation_weight, lambda: relation_distillation(f_old, t_on, pids, o.relation_temperature)
                   + relation_distillation(f_new, t_no, pids, o.relation_temperature)),
            "ad": (o.discriminative_weight, lambda: self._discriminative(t_on, t_no, bn_old, bn_new, logits_new)),
            "dc": (o.direction_weight, lambda: directional_consistency(f_new, f_old, t_on, t_no)),
            "af": (o.forgetting_weight, lambda: anti_forgetting(f_new, f_old, pids, o.forgetting_temperature)),
        }
        return weighted_sum(terms, bn_new)

    def _discriminative(self, t_on: torch.Tensor, t_no: torch.Tensor, bn_old: torch.Tensor,
                        bn_new: torch.Tensor, logits_new: torch.Tensor) -> torch.Tensor:
        old_logits = self.old_classifier(bn_old)
        on = self.old_classifier(t_on * bn_old.norm(dim=1, keepdim=True))
        no = self.heads["classifier"](t_no * bn_new.detach().norm(dim=1, keepdim=True))
        return logit_distillation(on, old_logits) + logit_distillation(no, logits_new)

    # ---- a new model arrived ----------------------------------------------------------------
    def on_download(self, global_state: Mapping[str, torch.Tensor]) -> None:
        """Fit the upgrade transfer (previous download → this one) on the anchors, keep this
        model's anchors, and freeze it as the round's old model — from the site's second
        download on: before it, the site has indexed nothing to stay compatible with."""
        o = self.options
        started = time.perf_counter()
        anchors = self.embed(self.train_store, flip=True, limit=o.anchor_images)
        if self.anchors is not None and self.anchors.shape == tuple(anchors.shape):
            previous = torch.from_numpy(self.anchors)
            self.upgrade, heldout = calibrate_upgrade(
                self.heads["transfer_on"], self._transfer(), previous, anchors,
                steps=o.calibrate_steps, lr=o.calibrate_lr)
            self.upgrade_info = {"affinity_alpha": affinity_alpha(anchors, previous),
                                 "fit_seconds": time.perf_counter() - started,
                                 "anchors": float(len(anchors)), **heldout}
        first = self.anchors is None
        self.anchors = anchors.numpy().astype(np.float32)
        if not first:
            self.old = _frozen(self.model)
            self.old_classifier = _frozen(self.heads["classifier"])

    def site_files(self, folder: str | Path, server_round: int) -> list[Path]:
        """Write the upgrade transfer of this round's download (the model after round
        ``server_round − 1``) as ``transfer-r<k-1>-to-r<k>.pt2`` plus a JSON of its α, for
        ``fedreid site index upgrade``; nothing when there is none yet."""
        if self.upgrade is None:
            return []
        from fedreid.index.transfer import (
            save_transfer,  # torch.export: only sites that write files
        )

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"transfer-r{server_round - 2}-to-r{server_round - 1}"
        path = save_transfer(copy.deepcopy(self.upgrade), self.dim, folder / f"{stem}.pt2")
        info = {"alpha": self.options.fusion_alpha, **self.upgrade_info,
                "usage": f"fedreid site index upgrade --transfer {path.name} --alpha {self.options.fusion_alpha}"}
        (folder / f"{stem}.json").write_text(json.dumps(info, indent=1))
        return [path, folder / f"{stem}.json"]

    # ---- what the site keeps between rounds ---------------------------------------------------
    def local_state(self) -> dict[str, np.ndarray]:
        state = super().local_state()
        if self.anchors is not None:
            state["anchors"] = self.anchors.copy()
        if self.upgrade is not None:
            state.update({UPGRADE_PREFIX + k: v.detach().cpu().numpy()
                          for k, v in self.upgrade.state_dict().items()})
            state.update({f"upgrade_info.{k}": np.array([v]) for k, v in self.upgrade_info.items()})
        return state

    def load_local_state(self, state: Mapping[str, np.ndarray]) -> None:
        super().load_local_state(state)
        if "anchors" in state:
            self.anchors = np.asarray(state["anchors"], dtype=np.float32)
        self.upgrade = upgrade_transfer(state, self.options)
        self.upgrade_info = {k[len("upgrade_info."):]: float(np.asarray(v).ravel()[0])
                             for k, v in state.items() if k.startswith("upgrade_info.")}


def upgrade_transfer(state: Mapping[str, np.ndarray], options: Bic2rOptions) -> TransferNet | None:
    """The upgrade transfer kept in a bic2r site's state (``ClientState.method``), or None."""
    weights = {k[len(UPGRADE_PREFIX):]: torch.from_numpy(np.array(v)) for k, v in state.items()
               if k.startswith(UPGRADE_PREFIX)}
    if not weights:
        return None
    dim = int(weights["0.prototypes"].shape[1])
    o = options
    net = TransferNet(dim, o.transfer_blocks, o.transfer_paths, o.transfer_hidden, o.prototypes)
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(
            f"the site's upgrade transfer does not fit method.bic2r's transfer options "
            f"(blocks {o.transfer_blocks}, paths {o.transfer_paths}, hidden {o.transfer_hidden}, "
            f"prototypes {o.prototypes}): {str(err).splitlines()[0]}; use the options it was trained with"
        ) from err
    return net.eval()


def fit_transfer(net: TransferNet, old: torch.Tensor, new: torch.Tensor, *, steps: int,
                 lr: float) -> TransferNet:
    """Fit ``net`` in place so that norm(net(old)) ≈ new (rows paired), full-batch Adam."""
    if old.shape[0] != new.shape[0] or old.shape[0] < 2:
        raise ValueError(f"a transfer fit needs >= 2 paired rows, got {old.shape[0]} old and {new.shape[0]} new")
    old, new = F.normalize(old.float(), dim=1), F.normalize(new.float(), dim=1)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        loss = feature_alignment(F.normalize(net(old), dim=1), new)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def transfer_error(net: TransferNet, old: torch.Tensor, new: torch.Tensor) -> float:
    """MSE between norm(net(norm(old))) and norm(new), ``net`` in eval mode."""
    net.eval()
    return float(feature_alignment(F.normalize(net(F.normalize(old.float(), dim=1)), dim=1),
                                   F.normalize(new.float(), dim=1)))


def calibrate_upgrade(trained: TransferNet, identity: TransferNet, old: torch.Tensor, new: torch.Tensor, *,
                      steps: int, lr: float, holdout: float = 0.25, seed: int = 0) -> tuple[TransferNet, dict]:
    """The upgrade transfer old → new space: of ``identity`` (an untrained net, exactly the
    identity), ``trained`` (T_on) and a copy of T_on fitted for ``steps`` on the anchors not
    held out, the one with the lowest held-out MSE; and those MSEs. The held-out rows are a
    fixed ``holdout`` share (at least one row, and one left to fit)."""
    n = old.shape[0]
    if n != new.shape[0] or n < 2:
        raise ValueError(f"calibrating an upgrade needs >= 2 paired anchors, got {n} old and {new.shape[0]} new")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = order[: min(n - 1, max(1, round(holdout * n)))]
    fit = order[len(held):]
    candidates = {"identity": identity.cpu(), "trained": copy.deepcopy(trained).cpu()}
    if steps > 0 and len(fit) >= 2:
        candidates["fitted"] = fit_transfer(copy.deepcopy(trained).cpu(), old[fit], new[fit], steps=steps, lr=lr)
    errors = {name: transfer_error(net, old[held], new[held]) for name, net in candidates.items()}
    best = min(errors, key=errors.get)
    info = {f"heldout_mse_{name}": err for name, err in errors.items()}
    info["choice"] = float(list(candidates).index(best))  # 0 identity, 1 T_on as trained, 2 fitted
    return candidates[best].eval(), info


def _frozen(module: nn.Module) -> nn.Module:
    copy_ = copy.deepcopy(module).eval()
    for p in copy_.parameters():
        p.requires_grad_(False)
    return copy_


def _check(options: Bic2rOptions) -> None:
    for key in ("align_weight", "relation_weight", "discriminative_weight", "direction_weight",
                "forgetting_weight", "calibrate_steps"):
        if getattr(options, key) < 0:
            raise ValueError(f"method.bic2r.{key}={getattr(options, key)} must be >= 0 (0 removes it)")
    if not 0.0 <= options.fusion_alpha <= 1.0:
        raise ValueError(f"method.bic2r.fusion_alpha={options.fusion_alpha} must lie in [0, 1]")
    if options.anchor_images < 2:
        raise ValueError(f"method.bic2r.anchor_images={options.anchor_images} must be at least 2")
    for key in ("relation_temperature", "forgetting_temperature", "calibrate_lr"):
        if getattr(options, key) <= 0:
            raise ValueError(f"method.bic2r.{key}={getattr(options, key)} must be > 0")
