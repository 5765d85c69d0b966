"""A site's federated round, without Flower: download → CRR check → train → prune → reply.

:class:`FederatedClient` is one site for one round (train or evaluate), built from its data
and its :class:`~fedreid.client_state.ClientState`; every strategy (FedKLPR and the
baselines) runs through it. What the federation shares is the method's ``shared_keys``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fedreid.client_state import ClientState
from fedreid.config.schema import FedReIDConfig
from fedreid.data.split_images import SplitImages
from fedreid.eval import evaluate
from fedreid.fl.codec import (
    INITIAL_MISMATCH,
    MaskMismatch,
    decode_sparse,
    encode_sparse,
    initial_digest,
    mask_digests,
    pack_mask,
    rounding_left_out,
    state_digest,
)
from fedreid.fl.crr import CrossRoundRecovery, restored_weights
from fedreid.fl.dp import clip_to_download
from fedreid.fl.view import HELD_KEY, VIEW_KEY, SiteView, initial_token, masks_digest
from fedreid.losses import mean_kl_divergence
from fedreid.models import load_subset, local_subset, state_subset
from fedreid.prune import (
    apply_masks,
    init_masks,
    magnitude_prune,
    prunable_names,
    pruning_due,
    sparsity,
)
from fedreid.training import LocalTrainer, ProgressFn, initial_shared_state, stream_seed

CRR_PROBE = 256  # training images cross-round recovery scores retrieval on
EVAL_KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP")


def _numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _torch(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v, order="C")) for k, v in state.items()}  # keeps 0-d


def cosine_distance(new: torch.Tensor, old: torch.Tensor) -> float:
    """Mean ``1 - cos`` over rows, computed as half the squared distance of the normalised
    rows so that it is never negative (an unchanged model gives exactly 0)."""
    a = torch.nn.functional.normalize(new.double(), dim=1)
    b = torch.nn.functional.normalize(old.double(), dim=1)
    return float(0.5 * ((a - b) ** 2).sum(dim=1).mean())


class FederatedClient:
    """One site's federated behaviour for every strategy."""

    def __init__(self, cfg: FedReIDConfig, images: SplitImages, state: ClientState | None = None,
                 method_name: str | None = None, view: SiteView | None = None):
        self.cfg = cfg
        self.images = images
        self.trainer = LocalTrainer(cfg, images, method_name)
        self.method = self.trainer.method
        self.model = self.trainer.model
        self.shared_keys = self.method.shared_keys(self.method.options, self.model)
        self.state = state or ClientState()
        if self.state.method:
            self.method.load_local_state(self.state.method)
        self._held: dict[str, bytes] = {}  # digests of this site's masks the coordinator holds
        # the last download's own masks: positions outside them arrived as 0, not as the global
        self._download_masks: dict[str, np.ndarray] = {}
        # codec.download=difference-int8: the coordinator's view this site holds (downloads
        # are steps from it)
        if view is None and cfg.codec.download == "difference-int8":
            view = SiteView()
        self.view = view

    @property
    def method_name(self) -> str:
        return self.method.name

    def shared_state(self) -> dict[str, np.ndarray]:
        return _numpy(state_subset(self.model, self.shared_keys))

    def _device_masks(self) -> dict[str, torch.Tensor]:
        """The site's masks as tensors on the model's device (masks multiply weights/grads)."""
        return {k: torch.from_numpy(v).to(self.trainer.device) for k, v in self.state.masks.items()}

    # ---- download ---------------------------------------------------------------------
    def decode_download(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The downloaded shared model, dense. A download without bitmaps is cut with the
        site's own masks (the coordinator sent their digests); a seeded download is the run's
        initial model, rebuilt here and checked against the coordinator's digest; a view step
        (codec.download=difference-int8) moves the site's copy of the coordinator's view.
        Remembers which masks the coordinator holds, so the reply sends only changed bitmaps."""
        digest = initial_digest(arrays)
        if digest is not None:
            try:
                initial = initial_shared_state(self.cfg, self.cfg.method.name)
            except (OSError, ValueError) as exc:  # e.g. model.init names a file this site lacks
                raise ValueError(f"{INITIAL_MISMATCH}: this site cannot build the initial model "
                                 f"({exc}); the coordinator sends the model instead") from exc
            if state_digest(initial) != digest:
                raise ValueError(
                    f"{INITIAL_MISMATCH}: this site builds {state_digest(initial)} from seed "
                    f"{self.cfg.seed}, the coordinator holds {digest} (other weights or settings); "
                    "the coordinator sends the model instead")
            self._held, self._download_masks = {}, {}
            if self.view is not None:
                self.view.reset(initial, initial_token(digest))
            return initial
        if VIEW_KEY in arrays:
            return self._apply_view(arrays)
        try:
            download, self._download_masks = decode_sparse(arrays, known_masks=self.state.masks)
        except MaskMismatch as exc:
            raise MaskMismatch(
                f"site {self.images.name}: the download refers to masks this site does not hold "
                f"({exc}); the coordinator forgets them and sends the next download dense",
                exc.names) from None
        self._held = mask_digests(arrays)
        return download

    def _apply_view(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A download that moves the site's view (codec.download=difference-int8): the whole
        model, which the site cuts with its own masks; the upload sends a digest instead of
        a bitmap where the coordinator holds the site's masks."""
        if self.view is None:
            raise ValueError("the download is a view step (codec.download=difference-int8) but this "
                             "site runs with another codec.download; coordinator and site must "
                             "share the run config")
        download = dict(self.view.apply(arrays))
        self._download_masks = {}
        own = {k: pack_mask(m).digest for k, m in self.state.masks.items()}
        held = HELD_KEY in arrays and bytes(np.asarray(arrays[HELD_KEY], np.uint8)) == masks_digest(own)
        self._held = own if held else {}
        return download

    def load_global(self, arrays: dict[str, np.ndarray], *, local: bool = True,
                    masked: bool = True) -> dict[str, np.ndarray]:
        """Load the downloaded shared model into the site's net, then the site's own local
        part (``local``: unshared keys, local BN statistics) and mask (``masked``); returns
        the download as decoded."""
        download = self.decode_download(arrays)
        unexpected = sorted(set(download) - set(self.shared_keys))
        if unexpected:
            raise ValueError(
                f"the downloaded model has keys this site does not share: {unexpected[:5]}; "
                f"server and site must build the same model (site: method {self.method_name}, "
                f"model.arch {self.cfg.model.arch})"
            )
        load_subset(self.model, _torch(download), self.shared_keys, strict=False)
        if local and self.state.local_model:
            load_subset(self.model, _torch(self.state.local_model), self.state.local_model.keys())
        if masked and self.state.masks:
            apply_masks(self.model, self._device_masks())
        return download

    # ---- cross-round recovery ---------------------------------------------------------
    def crr_score(self, labels: np.ndarray | None) -> float:
        """Cross-camera retrieval mAP on the site's first training images with ``labels``
        (identities or clusters, -1 left out); NaN when it cannot be scored."""
        if labels is None:
            return float("nan")
        n = min(CRR_PROBE, len(self.images.train))
        keep = np.asarray(labels[:n]) >= 0
        if keep.sum() < 2:
            return float("nan")
        feats = self.trainer.features(self.images.train, flip=False, limit=n).numpy()
        f, lab, cam = feats[keep], labels[:n][keep], self.images.train.camids[:n][keep]
        try:
            # Cross-camera retrieval within the probe set; the Market rule drops each image itself.
            return float(evaluate(1.0 - f @ f.T, lab, lab, cam, cam)["mAP"])
        except ValueError:
            return float("nan")

    def _crr_labels(self) -> np.ndarray | None:
        if self.cfg.crr.labels == "identity":
            return self.images.train.pids
        labels = self.method.crr_labels()
        return None if labels is None else np.asarray(labels).copy()

    def _crr_check(self, crr: CrossRoundRecovery, labels: np.ndarray | None,
                   metrics: dict[str, float]) -> float:
        """Stage 2: score the download with the labels stage 1 used; restore on a drop.
        Returns the score when it was taken with ``labels`` (so it can be reused), else NaN."""
        recorded = crr.recorded_labels
        same = recorded is None or (labels is not None and np.array_equal(recorded, labels))
        score = self.crr_score(labels if same else recorded)
        # A site that cannot score this round accepts the step.
        decision = crr.check_downloaded(score if np.isfinite(score) else crr.to_dict()["score"])
        metrics["crr_check_score"] = score
        metrics["crr_reference"] = decision.reference if decision.reference is not None else float("nan")
        metrics["crr_restored"] = float(decision.action == "restore")
        if decision.action == "restore":
            weights = restored_weights(decision, self.shared_state(), self.state.masks,
                                       mode=self.cfg.crr.restore)
            self.state.masks = {k: v.astype(bool) for k, v in decision.masks.items()}
            load_subset(self.model, _torch(weights), self.shared_keys, strict=False)
            apply_masks(self.model, self._device_masks())
            return float("nan")  # the model changed
        return score if same else float("nan")

    # ---- one training round ---------------------------------------------------------------
    def train_round(self, arrays: dict[str, np.ndarray], server_round: int,
                    progress: ProgressFn | None = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        cfg = self.cfg
        download = self.load_global(arrays)
        self.method.on_download(_torch(download))
        metrics: dict[str, float] = {}
        use_crr = cfg.crr.enabled and cfg.prune.enabled
        crr = (CrossRoundRecovery.from_dict(self.state.crr) if self.state.crr else
               CrossRoundRecovery(delta=cfg.crr.delta, halt=cfg.crr.halt, pause_rounds=cfg.crr.pause_rounds))
        crr.begin_round()
        labels = self._crr_labels() if use_crr else None
        score = float("nan")
        if use_crr and crr.pending:
            score = self._crr_check(crr, labels, metrics)
        if use_crr:
            # the download's score with this round's labels: stage 1's reference if the site prunes
            score = score if np.isfinite(score) else self.crr_score(labels)
            metrics["crr_score"] = score

        reference = self.trainer.snapshot()  # the downloaded model, frozen
        metrics.update(self._train(server_round, reference, progress))
        metrics.update(self._divergence_signals(reference))  # before pruning: what training changed
        metrics.update(self._prune_step(server_round, crr, score, labels))
        self.state.crr = crr.to_dict()
        metrics["crr_halted"] = float(crr.halted)
        metrics["num-examples"] = float(len(self.images.train))
        self._keep_local_state(server_round)
        return self._reply(download, metrics), metrics

    def _train(self, server_round: int, reference: torch.nn.Module,
               progress: Callable[[int, int], None] | None) -> dict[str, float]:
        r = self.cfg.reg
        use_ref = r.enabled and server_round >= r.start_round and r.weight > 0
        epochs = self.cfg.train.epochs
        if self.cfg.fl.last_round_epochs and server_round == self.cfg.fl.rounds:
            epochs = self.cfg.fl.last_round_epochs
        return self.trainer.train_epochs(
            epochs,
            seed=stream_seed(self.cfg.seed, self.images.name, server_round),
            reference=reference if use_ref else None,
            reg_weight=r.weight if use_ref else 0.0,
            masks=self._device_masks() or None,
            progress=progress,
        )

    def _divergence_signals(self, reference: torch.nn.Module) -> dict[str, float]:
        """How far training moved the model on the fixed probe batch: the KL divergence
        (KLAW's signal) and the mean cosine distance (FedCAPR's CDW signal)."""
        new = self.trainer.probe_features(self.model)
        old = self.trainer.probe_features(reference)
        r = self.cfg.reg
        return {"kl_divergence": mean_kl_divergence(new, old, tau=r.tau, direction=r.direction),
                "cosine_distance": cosine_distance(new, old)}

    def _prune_step(self, server_round: int, crr: CrossRoundRecovery, score: float,
                    labels: np.ndarray | None) -> dict[str, float]:
        """One pruning step when the schedule and CRR allow it (stage 1 records the backup)."""
        p = self.cfg.prune
        if not p.enabled:
            return {"prune_ratio": 0.0, "pruned_this_round": 0.0}
        if not self.state.masks:
            names = prunable_names(state_subset(self.model, self.shared_keys))
            self.state.masks = _numpy(init_masks(self.model, names))
        masks = self._device_masks()
        ratio = sparsity(masks)
        due = pruning_due(server_round, start_round=p.start_round, every=p.every, masks=masks, target=p.target,
                          allowed=crr.can_prune(ratio, p.target))
        if not due:
            return {"prune_ratio": ratio, "pruned_this_round": 0.0}
        if self.cfg.crr.enabled and np.isfinite(score):
            crr.record_before_pruning(score, self.shared_state(), self.state.masks, labels=labels)
        masks = magnitude_prune(self.model, masks, step=p.step, target=p.target, scope=p.scope)
        self.state.masks = _numpy(masks)
        apply_masks(self.model, masks)
        return {"prune_ratio": sparsity(masks), "pruned_this_round": 1.0}

    def _keep_local_state(self, server_round: int) -> None:
        """What stays on the site: the method's state, the unshared part of the model, and
        BN statistics where the strategy keeps them local (FedPav) or DP does not cover them."""
        self.state.method = self.method.local_state()
        local = _numpy(local_subset(self.model, self.shared_keys))
        if not self.cfg.agg.share_buffers or self.cfg.dp.enabled:
            buffers = {name for name, _ in self.model.named_buffers()}
            shared = self.shared_state()
            local.update({k: v for k, v in shared.items() if k in buffers})
        self.state.local_model = local
        self.state.rounds_trained += 1
        self.state.last_round = server_round

    def _reply(self, download: dict[str, np.ndarray], metrics: dict[str, float]) -> dict[str, np.ndarray]:
        shared = self.shared_state()
        masks = self.state.masks if self.cfg.prune.enabled else {}
        if self.cfg.dp.enabled:
            shared, norm = clip_to_download(shared, download, masks, self.cfg.dp.clipping_norm)
            metrics["dp_update_norm"] = norm
            metrics["dp_clipped"] = float(norm > self.cfg.dp.clipping_norm)
        upload = self.cfg.codec.upload
        int8 = upload == "difference-int8"
        if int8:  # error feedback: what rounding left out last round travels now
            carried = self.state.upload_residual
            shared = {k: v + carried[k] if k in carried else v for k, v in shared.items()}
        encoded = encode_sparse(shared, masks, value_dtype=self.cfg.codec.value_dtype,
                                receiver_digests=self._held,
                                reference=download if upload != "absolute" else None,
                                reference_masks=self._download_masks, int8_differences=int8)
        if int8:
            self.state.upload_residual = rounding_left_out(shared, masks, download, encoded)
        return encoded

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate_round(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """The method's protocols on the global model and on the site's personalised one
        (global ⊙ own mask, with its local part); ``global_*`` and ``personal_*`` keys."""
        # Under DP the global BN statistics are never updated: the site evaluates with its own.
        self.load_global(arrays, local=self.cfg.dp.enabled, masked=False)
        out = {f"global_{k}": v for k, v in self.trainer.evaluate().items()}
        if self.state.masks or self.state.local_model:
            if self.state.local_model:
                load_subset(self.model, _torch(self.state.local_model), self.state.local_model.keys())
            if self.state.masks:
                apply_masks(self.model, self._device_masks())
            out.update({f"personal_{k}": v for k, v in self.trainer.evaluate().items()})
        else:
            out.update({f"personal_{k[len('global_'):]}": v for k, v in list(out.items())})
        out["num-examples"] = float(len(self.images.query))
        return out
