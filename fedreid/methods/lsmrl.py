"""``lsmrl``: LSMRL-lite — tracklet-level visible-infrared re-ID with modality-invariant learning.

Yang et al., "Language-driven Sequence-level Modal-invariant Representation Learning for
Video Visible-Infrared Person Re-Identification" (2026; research/methods.md §4). The network
(:mod:`fedreid.models.sequence_vit`): one ViT for both modalities with a modality embedding,
a spatial-temporal module (grouped-frame attention, temporal patch shift), learnable shared
"semantic" tokens both modalities attend to, temporal mean pooling, and a training-time
cross-modal interaction (bidirectional cross-attention between the batch's visible and
infrared sequences). LSMRL's shared prompts come from CLIP's text encoder; no CLIP weights
can be downloaded here, so the shared tokens are learned from scratch and LSMRL's language
side is absent.

Losses: label-smoothed ID cross-entropy (on the BNNeck feature; also on the interacted
feature with ``interaction``), a cross-modal batch-hard triplet, and the two modality-level
terms (``modality_losses``): identity centre alignment across modalities and an MMD
discrepancy between the modalities' feature sets (:mod:`fedreid.losses.modality`).

Batches: ``identities`` people × ``tracklets`` tracklets each (alternating visible and
infrared) × ``seq_len`` consecutive frames; the data layer's rows are frames, grouped back
into sequences in ``training_step``. Retrieval: each tracklet's ``seq_len`` evenly spaced
frames give one feature, written to every frame row of it (so the tracklet-level protocols'
frame averaging returns it unchanged). Ablation switches: ``temporal``,
``semantic_tokens=0``, ``interaction``, ``modality_losses``. Share rules: ``backbone+neck``
(everything) or ``frame-encoder`` (the ViT and neck: a plain ViT site's keys).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedreid.data.augment import normalize
from fedreid.data.batch import Batch, BatchSpec
from fedreid.data.store import ImageStore
from fedreid.losses import CrossEntropyLabelSmooth
from fedreid.losses.modality import cross_modal_triplet, modality_centre_loss, modality_discrepancy
from fedreid.methods.base import MethodOptions, MethodSetup, ReidMethod, StepOutput
from fedreid.models import IdentityHead
from fedreid.models.sequence_vit import SequenceReidNet, as_sequence_model


@dataclass
class LsmrlOptions(MethodOptions):
    seq_len: int = 4  # frames per sequence in training and retrieval
    identities: int = 4  # P: people per batch
    tracklets: int = 2  # K: tracklets per person and batch, alternating visible / infrared
    temporal: bool = True  # spatial-temporal module (grouped block + patch shift); false: per frame
    group: int = 2  # frames attended jointly in the grouped block (divides seq_len)
    semantic_tokens: int = 4  # learnable tokens shared by both modalities (0 = none)
    interaction: bool = True  # cross-modal interaction and its ID loss in training
    interaction_weight: float = 1.0  # weight of the ID loss on the interacted features
    modality_losses: bool = True  # centre alignment + discrepancy
    centre_weight: float = 1.0  # weight of the modality-centre alignment
    discrepancy_weight: float = 1.0  # weight of the MMD discrepancy
    label_smoothing: float = 0.1  # ε of the cross-entropy
    triplet_margin: float = 0.3  # cross-modal triplet margin (<= 0: soft margin)


def tracklet_rows(store: ImageStore) -> list[np.ndarray]:
    """Each tracklet's rows (same pid, camera, tracklet), frames in order; tracklets in order
    of first appearance. Image data sets have no tracklets: a clear error."""
    keys: dict[tuple[int, int, int], list[int]] = {}
    for row, s in enumerate(store.samples):
        if s.tracklet < 0:
            raise ValueError(
                f"{s.path}: no tracklet id; method lsmrl trains on video data (tracklets of frames), "
                "e.g. a HITSZ-VCM / BUPTCampus reader or the generated ir-video site"
            )
        keys.setdefault((s.pid, s.camid, s.tracklet), []).append(row)
    frames = np.array([s.frame for s in store.samples])
    return [np.array(sorted(rows, key=lambda r: frames[r]), dtype=np.int64) for rows in keys.values()]


def sample_window(rows: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` consecutive frames at a random start (motion kept); short tracklets repeat
    frames, in order."""
    if len(rows) >= length:
        start = int(rng.integers(0, len(rows) - length + 1))
        return rows[start:start + length]
    return rows[np.sort(rng.choice(len(rows), size=length, replace=True))]


def even_frames(rows: np.ndarray, length: int) -> np.ndarray:
    """``length`` evenly spaced frames of a tracklet (repeats when it is shorter)."""
    return rows[np.linspace(0, len(rows) - 1, length).round().astype(np.int64)]


class LSMRLMethod(ReidMethod):
    name = "lsmrl"
    supervised = True
    Options = LsmrlOptions
    batch_spec = BatchSpec(views=1, labels=True, fields=("modality",))
    default_arch = "vit_tiny_p16"
    evaluators = ("single_query", "cross_modality")
    # the frame encoder and neck only: the keys of a plain ViT site, so LSMRL sites federate
    # with image sites on that ViT (modality, semantic and interaction modules stay local)
    share_rules = {"frame-encoder": ("backbone.vit.", "neck.")}

    @classmethod
    def build_model(cls, options: LsmrlOptions, model_cfg, image_size: tuple[int, int]) -> nn.Module:
        if options.seq_len < 1 or options.seq_len % max(options.group, 1):
            raise ValueError(
                f"method.lsmrl.seq_len={options.seq_len} must be >= 1 and a multiple of group={options.group}")
        model = super().build_model(options, model_cfg, image_size)
        return as_sequence_model(model, temporal=options.temporal, group=options.group,
                                 semantic_tokens=options.semantic_tokens, interaction=options.interaction)

    def __init__(self, options: LsmrlOptions, model: SequenceReidNet, setup: MethodSetup):
        super().__init__(options, model, setup)
        pids = np.unique(self.train_store.pids)
        self.labels = np.searchsorted(pids, self.train_store.pids)
        self.tracklets = tracklet_rows(self.train_store)
        modality = self.train_store.field("modality")
        # per label and modality, the indices of its tracklets in self.tracklets
        self.by_label: dict[int, list[list[int]]] = {}
        for i, rows in enumerate(self.tracklets):
            self.by_label.setdefault(int(self.labels[rows[0]]), [[], []])[int(modality[rows[0]])].append(i)
        self.heads["classifier"] = IdentityHead(model.feat_dim, len(pids)).to(self.device)
        self.id_loss = CrossEntropyLabelSmooth(len(pids), epsilon=options.label_smoothing)

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        """One pass over the identities: P people × K tracklets × T consecutive frames."""
        o = self.options
        labels = rng.permutation(sorted(self.by_label))
        out = []
        for start in range(0, len(labels) - 1, o.identities):  # a lone last identity is left out
            rows = []
            for label in labels[start:start + o.identities]:
                mods = self.by_label[int(label)]
                for k in range(o.tracklets):
                    pool = mods[k % 2] or mods[1 - k % 2]
                    rows.append(sample_window(self.tracklets[pool[rng.integers(len(pool))]], o.seq_len, rng))
            out.append(np.concatenate(rows))
        return out

    def _sequences(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = self.options.seq_len
        x = batch.images.reshape(-1, t, *batch.images.shape[1:])
        first = batch.indices.reshape(-1, t)[:, 0]
        targets = torch.as_tensor(self.labels[first], device=x.device)
        modality = batch.fields["modality"].reshape(-1, t)[:, 0]
        return x, targets, modality

    def training_step(self, batch: Batch) -> StepOutput:
        o = self.options
        x, targets, modality = self._sequences(batch)
        global_feat, bn_feat = self.model(x, modality)
        global_feat, bn_feat = global_feat.float(), bn_feat.float()
        classifier = self.heads["classifier"]
        logits = classifier(bn_feat)
        l_id = self.id_loss(logits, targets)
        l_tri = cross_modal_triplet(global_feat, targets, modality,
                                    o.triplet_margin if o.triplet_margin > 0 else None)
        total = l_id + l_tri
        logs = {"loss_id": float(l_id.detach()), "loss_triplet": float(l_tri.detach()),
                "train_acc": float((logits.argmax(1) == targets).float().mean())}
        refined = self.model.backbone.interact(global_feat, modality) if o.interaction else None
        if refined is not None:
            l_cmi = self.id_loss(classifier(self.model.neck(refined).float()), targets)
            total = total + o.interaction_weight * l_cmi
            logs["loss_interaction"] = float(l_cmi.detach())
        if o.modality_losses:
            l_centre = modality_centre_loss(global_feat, targets, modality)
            l_disc = modality_discrepancy(global_feat[modality == 0], global_feat[modality == 1])
            total = total + o.centre_weight * l_centre + o.discrepancy_weight * l_disc
            logs.update(loss_centre=float(l_centre.detach()), loss_discrepancy=float(l_disc.detach()))
        return StepOutput(total, logs, embedding=bn_feat)

    def reference_embedding(self, reference: nn.Module, batch: Batch) -> torch.Tensor:
        x, _, modality = self._sequences(batch)
        return reference(x, modality).float()

    @torch.no_grad()
    def embed(self, store: ImageStore, *, flip: bool, limit: int | None = None,
              model: nn.Module | None = None) -> torch.Tensor:
        """One feature per tracklet (``seq_len`` evenly spaced frames), on each of its rows."""
        model = model or self.model
        n = len(store) if limit is None else min(limit, len(store))
        groups = [rows for rows in tracklet_rows(store) if rows.min() < n]
        modality = torch.as_tensor(store.field("modality"))
        t = self.options.seq_len
        per_call = max(1, self.setup.eval_batch_size // t)
        out = torch.zeros(len(store), model.feat_dim)
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(groups), per_call):
                chunk = groups[start:start + per_call]
                frames = np.concatenate([even_frames(rows, t) for rows in chunk])
                x = normalize(store.images[frames].to(self.device)).reshape(len(chunk), t, *store.images.shape[1:])
                m = modality[[int(rows[0]) for rows in chunk]].to(self.device)
                emb = model(x, m)
                if flip:
                    emb = emb + model(torch.flip(x, dims=[4]), m)
                emb = F.normalize(emb.float(), dim=1).cpu()
                for rows, e in zip(chunk, emb, strict=True):
                    out[rows] = e
        finally:
            model.train(was_training)
        return out[:n]
