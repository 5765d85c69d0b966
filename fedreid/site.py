"""A federated site's round, without Flower: download → CRR check → train → prune → reply.

:class:`FederatedSite` owns one site's data and method; :class:`SiteState` is everything the
site must remember between rounds (pruning mask, CRR backup, classifier head or proxy
memory, its own BN statistics where the strategy keeps them local). The state is private:
it is saved in Flower's ``Context.state`` and in a local state file, never in a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedreid.config.schema import FedReIDConfig
from fedreid.engine import SiteData, SiteTrainer
from fedreid.eval import evaluate
from fedreid.fl.codec import decode_sparse, encode_sparse
from fedreid.fl.crr import CrossRoundRecovery, restored_weights
from fedreid.fl.dp import clip_to_download
from fedreid.losses import mean_kl_divergence
from fedreid.models import load_shared_state_dict, shared_state_dict
from fedreid.prune import apply_masks, init_masks, magnitude_prune, sparsity

STATE_VERSION = 1


@dataclass
class SiteState:
    """What a site carries from one round to the next (all site-private)."""

    masks: dict[str, np.ndarray] = field(default_factory=dict)
    private: dict[str, np.ndarray] = field(default_factory=dict)
    local_buffers: dict[str, np.ndarray] = field(default_factory=dict)
    crr: dict[str, Any] = field(default_factory=dict)
    pseudo_labels: np.ndarray | None = None
    rounds_trained: int = 0
    last_round: int = 0

    # --- flat form: one dict of arrays + one of scalars (Flower records, state files) ---
    def to_flat(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        arrays.update({f"mask/{k}": v for k, v in self.masks.items()})
        arrays.update({f"private/{k}": v for k, v in self.private.items()})
        arrays.update({f"buffer/{k}": v for k, v in self.local_buffers.items()})
        crr_arrays, crr_scalars = _split_scalars(self.crr)
        arrays.update({f"crr/{k}": v for k, v in crr_arrays.items()})
        if self.pseudo_labels is not None:
            arrays["pseudo_labels"] = self.pseudo_labels
        scalars = {f"crr/{k}": v for k, v in crr_scalars.items()}
        scalars.update({"version": STATE_VERSION, "rounds_trained": self.rounds_trained,
                        "last_round": self.last_round})
        return arrays, scalars

    @classmethod
    def from_flat(cls, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> SiteState:
        if scalars and int(scalars.get("version", STATE_VERSION)) != STATE_VERSION:
            raise ValueError(
                f"site state version {scalars.get('version')} != {STATE_VERSION}; delete the "
                "site's state file to start the site afresh"
            )
        state = cls()
        for key, value in arrays.items():
            kind, _, name = key.partition("/")
            if kind == "mask":
                state.masks[name] = value.astype(bool)
            elif kind == "private":
                state.private[name] = value
            elif kind == "buffer":
                state.local_buffers[name] = value
            elif kind == "crr":
                state.crr[name] = value
            elif key == "pseudo_labels":
                state.pseudo_labels = value
        for key, value in scalars.items():
            if key.startswith("crr/"):
                state.crr[key[4:]] = value
        state.rounds_trained = int(scalars.get("rounds_trained", 0))
        state.last_round = int(scalars.get("last_round", 0))
        return state

    def save(self, path: Path) -> None:
        """Atomically write the state file (a crash mid-write keeps the previous one)."""
        arrays, scalars = self.to_flat()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"arrays": arrays, "scalars": scalars}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> SiteState:
        blob = torch.load(path, map_location="cpu", weights_only=False)
        return cls.from_flat(blob["arrays"], blob["scalars"])


def _split_scalars(d: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays = {k: v for k, v in d.items() if isinstance(v, np.ndarray)}
    return arrays, {k: v for k, v in d.items() if k not in arrays}


def _to_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _to_torch(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v, order="C")) for k, v in state.items()}  # keeps 0-d


class FederatedSite:
    """One site's federated behaviour for every strategy (FedKLPR and the baselines)."""

    def __init__(self, cfg: FedReIDConfig, data: SiteData, state: SiteState | None = None):
        self.cfg = cfg
        self.data = data
        self.trainer = SiteTrainer(cfg, data)
        self.state = state or SiteState()
        if self.state.private:
            self.trainer.method.load_private_state(_to_torch(self.state.private))

    def _device_masks(self) -> dict[str, torch.Tensor]:
        """The site's masks as tensors on the model's device (masks multiply weights/grads)."""
        return {k: torch.from_numpy(v).to(self.trainer.device) for k, v in self.state.masks.items()}

    # ---- download ---------------------------------------------------------------------
    def load_global(self, arrays: dict[str, np.ndarray], *, local_buffers: bool = True,
                    masked: bool = True) -> dict[str, np.ndarray]:
        """Load the downloaded (possibly sparse-encoded) shared model into the site's net, with
        the site's own BN statistics where it keeps them (``local_buffers``) and its mask
        (``masked``); returns the download as decoded, before either."""
        download, _ = decode_sparse(arrays)
        state = download
        if local_buffers and self.state.local_buffers:  # FedPav-style: BN statistics stay local
            state = {**download, **self.state.local_buffers}
        missing, unexpected = load_shared_state_dict(self.trainer.model, _to_torch(state), strict=False)
        if unexpected:
            raise ValueError(
                f"downloaded model has keys this site's model lacks: {unexpected[:5]}; server and "
                f"site must use the same model.arch (site has {self.cfg.model.arch})"
            )
        if masked and self.state.masks:
            apply_masks(self.trainer.model, self._device_masks())
        return download

    # ---- scores for CRR -----------------------------------------------------------------
    def crr_score(self) -> float:
        """Retrieval mAP on the site's probe images (first 256 of train).

        Labelled sites use their identity labels ("map"); unlabelled sites use their latest
        pseudo-labels ("proxy"): a pruned model that no longer separates the clusters it
        found scores lower. Neither uses the test query/gallery.
        """
        n = min(256, len(self.data.train))
        feats = self.trainer.features(self.data.train, flip=False, limit=n).numpy()
        metric = self.cfg.crr.metric
        if metric == "auto":
            metric = "map" if self.trainer.method.supervised else "proxy"
        if metric == "map":
            labels = self.data.train.pids[:n]
        else:
            if self.state.pseudo_labels is None:
                return float("nan")
            labels = self.state.pseudo_labels[:n]
        keep = labels >= 0
        if keep.sum() < 2:
            return float("nan")
        f, lab, cam = feats[keep], labels[keep], self.data.train.camids[:n][keep]
        dist = 1.0 - f @ f.T
        try:
            # Cross-camera retrieval within the probe set; the Market rule drops each image itself.
            return float(evaluate(dist, lab, lab, cam, cam)["mAP"])
        except ValueError:
            return float("nan")

    # ---- one training round ---------------------------------------------------------------
    def train_round(self, arrays: dict[str, np.ndarray], server_round: int,
                    progress=None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        cfg = self.cfg
        model = self.trainer.model
        download = self.load_global(arrays)
        metrics: dict[str, float] = {}

        # CRR compares downloaded models across rounds: the score of this round's download
        # (stage 2) against the download of the round that pruned (stage 1). Comparing a
        # download with the site's own trained model would blame aggregation on pruning.
        crr = (CrossRoundRecovery.from_dict(self.state.crr) if self.state.crr else
               CrossRoundRecovery(delta=cfg.crr.delta, halt=cfg.crr.halt,
                                  pause_rounds=cfg.crr.pause_rounds))
        use_crr = cfg.crr.enabled and cfg.prune.enabled
        score = self.crr_score() if use_crr else float("nan")
        if use_crr:
            metrics["crr_score"] = score
        if crr.pending:
            # A site that cannot score this round (no pseudo-labels) accepts the step.
            decision = crr.check_downloaded(score if np.isfinite(score) else crr.to_dict()["score"])
            metrics["crr_reference"] = decision.reference if decision.reference is not None else float("nan")
            metrics["crr_restored"] = float(decision.action == "restore")
            if decision.action == "restore":
                downloaded = _to_numpy(shared_state_dict(model))
                weights = restored_weights(decision, downloaded, self.state.masks, mode=cfg.crr.restore)
                self.state.masks = {k: v.astype(bool) for k, v in decision.masks.items()}
                load_shared_state_dict(model, _to_torch(weights), strict=False)
                apply_masks(model, self._device_masks())

        reference = self.trainer.snapshot()  # the downloaded model, frozen
        use_ref = cfg.kl.enabled and server_round >= cfg.kl.start_round and cfg.kl.weight > 0
        masks_t = self._device_masks()
        epochs = cfg.train.epochs
        if cfg.fl.last_round_epochs and server_round == cfg.fl.rounds:
            epochs = cfg.fl.last_round_epochs
        stats = self.trainer.train_epochs(
            epochs,
            seed=cfg.seed * 100_003 + server_round,
            lr_scale=1.0,
            reference=reference if use_ref else None,
            kl_weight=cfg.kl.weight if use_ref else 0.0,
            masks=masks_t or None,
            progress=progress,
        )
        metrics.update(stats)
        if hasattr(self.trainer.method, "cluster_labels"):
            # clusters span cameras (proxies do not): CRR's cross-camera score needs clusters
            self.state.pseudo_labels = np.asarray(self.trainer.method.cluster_labels).copy()

        # Pruning step (CRR stage 1 records the backup first).
        shared = _to_numpy(shared_state_dict(model))
        if not masks_t and cfg.prune.enabled:
            masks_t = init_masks(model)
            self.state.masks = _to_numpy(masks_t)
        ratio = sparsity(masks_t)
        may_prune = (
            cfg.prune.enabled
            and server_round >= cfg.prune.start_round
            and (server_round - cfg.prune.start_round) % cfg.prune.every == 0
            and crr.can_prune(ratio, cfg.prune.target)
        )
        metrics["pruned_this_round"] = 0.0
        if may_prune:
            if use_crr and np.isfinite(score):
                crr.record_before_pruning(score, shared, self.state.masks)
            masks_t = magnitude_prune(model, masks_t, step=cfg.prune.step,
                                      target=cfg.prune.target, scope=cfg.prune.scope)
            self.state.masks = _to_numpy(masks_t)
            apply_masks(model, masks_t)
            shared = _to_numpy(shared_state_dict(model))
            metrics["pruned_this_round"] = 1.0
        self.state.crr = crr.to_dict()
        metrics["prune_ratio"] = sparsity(masks_t)
        metrics["crr_halted"] = float(crr.halted)

        # Aggregation-weight signals on the fixed probe batch.
        new_probe = self.trainer.probe_features(model)
        old_probe = self.trainer.probe_features(reference)
        metrics["klaw"] = mean_kl_divergence(new_probe, old_probe, tau=cfg.kl.tau,
                                             direction=cfg.kl.direction)
        # 1 - cos can round to -1e-8 for an unchanged model: clamp to the valid range.
        metrics["cdw"] = max(0.0, float((1 - F.cosine_similarity(new_probe, old_probe, dim=1)).mean()))
        metrics["klaw"] = max(0.0, metrics["klaw"])
        metrics["num-examples"] = float(len(self.data.train))

        # Private state and the reply.
        self.state.private = _to_numpy(self.trainer.method.private_state())
        if not cfg.agg.share_buffers or cfg.dp.enabled:  # DP does not privatise BN statistics
            buffers = {name for name, _ in model.named_buffers()}
            self.state.local_buffers = {k: v for k, v in shared.items() if k in buffers}
        self.state.rounds_trained += 1
        self.state.last_round = server_round
        masks = self.state.masks if (cfg.prune.enabled and self.state.masks) else {}
        if cfg.dp.enabled:
            shared, norm = clip_to_download(shared, download, masks, cfg.dp.clipping_norm)
            metrics["dp_update_norm"] = norm
            metrics["dp_clipped"] = float(norm > cfg.dp.clipping_norm)
        reply = encode_sparse(shared, masks, value_dtype=cfg.codec.value_dtype)
        return reply, metrics

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate_round(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """mAP/Rank-1 of the global model and of the site's personalised (masked) model."""
        # Under DP the global BN statistics are never updated: the site evaluates with its own.
        self.load_global(arrays, local_buffers=self.cfg.dp.enabled, masked=False)
        model = self.trainer.model
        out = {f"global_{k}": v for k, v in self.trainer.evaluate().items()}
        if self.state.masks or self.state.local_buffers:
            if self.state.local_buffers:
                load_shared_state_dict(model, _to_torch(self.state.local_buffers), strict=False)
            if self.state.masks:
                apply_masks(model, self._device_masks())
            out.update({f"personal_{k}": v for k, v in self.trainer.evaluate().items()})
        else:
            out.update({f"personal_{k}": out[f"global_{k}"] for k in ("mAP", "rank1", "rank5", "rank10", "mINP")})
        out["num-examples"] = float(len(self.data.query))
        return out

