"""``dppp``: DPPP's prompt-driven disentanglement (PDM) on prompt-generated identities.

Li et al., "A Dual-stage Prompt-driven Privacy-preserving Paradigm for Person
Re-Identification" (research/methods.md §6), lightweight version. Stage 1 is
``fedreid data generate``; this is stage 2. An image encoder (a registry ViT + BNNeck, the
only part used at test time and the only part shared) is trained with ID + triplet losses and
with prompts built from two textual-inversion networks: φ_s maps an image's feature to a
*style* pseudo-word S*, φ_c to a *content* pseudo-word C*. Three templates are encoded by a
text encoder, with the pseudo-words in their slots:

- ``a S* style photo of a C* person`` — contrasted with its own image (reconstruction):
  trains φ_s, φ_c and the text side to describe the whole picture;
- ``a photo of a C* person`` — the style-disentangled content prompt — contrasted with the
  images, positives = same identity, so the image encoder is pulled towards what the pictures
  of one person share whatever their light, view and background;
- ``a S* style photo`` and the content prompt are grounded in the generator's words: the
  content prompt against the identity's real prompt words (positives = same identity), the
  style prompt against the picture's rendered style words (positives = same style), and S*
  and C* are kept orthogonal.

CLIP weights cannot be downloaded here, so the text encoder is a small transformer trained
from scratch, jointly, on the generator's vocabulary (:mod:`fedreid.data.prompt_tokens`),
not CLIP's frozen one. The inversion networks see a detached image feature: the image
encoder learns from ID, triplet and the content-prompt contrast, not from helping them
reconstruct style. Needs sites written by ``fedreid data generate`` (per-image prompt and
style); other sites fail with the image and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedreid.data.batch import Batch, BatchSpec
from fedreid.data.prompt_tokens import CONTENT_SLOT, STYLE_SLOT, token_ids, vocabulary_words
from fedreid.data.samplers import pk_batches
from fedreid.losses import CrossEntropyLabelSmooth, TripletLoss
from fedreid.methods.base import MethodOptions, MethodSetup, ReidMethod, StepOutput
from fedreid.models import IdentityHead
from fedreid.models.text_encoder import PromptTextEncoder

FULL_TEMPLATE = ("a", STYLE_SLOT, "style", "photo", "of", "a", CONTENT_SLOT, "person")
CONTENT_TEMPLATE = ("a", "photo", "of", "a", CONTENT_SLOT, "person")
STYLE_TEMPLATE = ("a", STYLE_SLOT, "style", "photo")
CONTENT_PREFIX = ("a", "photo", "of", "a")  # before an identity's real content words
STYLE_SUFFIX = ("style", "photo")  # after a picture's real style words


@dataclass
class DpppOptions(MethodOptions):
    label_smoothing: float = 0.1  # ε of the label-smoothed cross-entropy
    triplet_margin: float = 0.3  # <= 0 means soft margin
    word_dim: int = 128  # width of the text encoder's tokens and of the pseudo-words
    text_depth: int = 2  # transformer blocks of the text encoder (trained from scratch)
    joint_dim: int = 128  # image-text embedding width
    temperature: float = 0.1  # τ of every image-text and text-text contrast
    full_weight: float = 1.0  # image <-> "a S* style photo of a C* person" (reconstruction)
    content_weight: float = 1.0  # image <-> "a photo of a C* person", positives = same identity
    ground_weight: float = 1.0  # pseudo-word prompts <-> the generator's words (content by id, style by style)
    orth_weight: float = 0.1  # squared cosine between S* and C*


def label_contrast(a: torch.Tensor, b: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE between the rows of ``a`` and ``b`` (L2-normalised):
    each row's positives on the other side are those with its label. Rows without a positive
    are left out."""
    logits = a @ b.t() / temperature
    positive = labels_a[:, None] == labels_b[None, :]

    def side(lg: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        keep = pos.any(1)
        log_all = torch.logsumexp(lg[keep], dim=1)
        log_pos = torch.logsumexp(lg[keep].masked_fill(~pos[keep], float("-inf")), dim=1)
        return (log_all - log_pos).mean()

    return 0.5 * (side(logits, positive) + side(logits.t(), positive.t()))


def orthogonality(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between each image's style and content pseudo-words (0 = orthogonal)."""
    return F.cosine_similarity(style, content, dim=1).pow(2).mean()


def inversion_net(feat_dim: int, word_dim: int) -> nn.Module:
    """Textual inversion: an image feature → one pseudo-word embedding (2-layer MLP)."""
    return nn.Sequential(nn.Linear(feat_dim, feat_dim), nn.GELU(), nn.Linear(feat_dim, word_dim))


class DPPPMethod(ReidMethod):
    name = "dppp"
    supervised = True
    Options = DpppOptions
    batch_spec = BatchSpec(views=1, labels=True, fields=("prompt_content", "prompt_style"))
    default_arch = "vit_tiny_p16"

    def __init__(self, options: DpppOptions, model, setup: MethodSetup):
        super().__init__(options, model, setup)
        # fail now, naming the image, when the site has no prompts (read once, cached)
        content = self.train_store.field("prompt_content")
        self.train_store.field("prompt_style")
        pids = np.unique(self.train_store.pids)
        self.labels = np.searchsorted(pids, self.train_store.pids)
        words = vocabulary_words()
        self.slot = {"style": words.index(STYLE_SLOT), "content": words.index(CONTENT_SLOT)}
        feat_dim = model.feat_dim
        o = options
        max_len = len(FULL_TEMPLATE) + len(CONTENT_PREFIX) + content.shape[1]
        self.heads["classifier"] = IdentityHead(feat_dim, len(pids))
        self.heads["text"] = PromptTextEncoder(len(words), word_dim=o.word_dim, depth=o.text_depth,
                                               max_len=max_len, out_dim=o.joint_dim)
        self.heads["style_inversion"] = inversion_net(feat_dim, o.word_dim)
        self.heads["content_inversion"] = inversion_net(feat_dim, o.word_dim)
        self.heads["image_proj"] = nn.Linear(feat_dim, o.joint_dim, bias=False)
        self.heads.to(self.device)
        self.id_loss = CrossEntropyLabelSmooth(len(pids), epsilon=o.label_smoothing)
        self.triplet = TripletLoss(margin=o.triplet_margin if o.triplet_margin > 0 else None)

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return pk_batches(self.labels, self.setup.batch_size, self.setup.num_instances, rng)

    def _template(self, words: tuple[str, ...], rows: int, device: torch.device) -> torch.Tensor:
        return torch.tensor(token_ids(words), device=device).expand(rows, -1)

    def _encode(self, ids: torch.Tensor, **slots: torch.Tensor) -> torch.Tensor:
        text = self.heads["text"](ids, {self.slot[k]: v for k, v in slots.items()})
        return F.normalize(text.float(), dim=1)

    def prompt_losses(self, feat: torch.Tensor, targets: torch.Tensor, content_ids: torch.Tensor,
                      style_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The disentanglement losses of a batch from the image features ``feat`` (B×D)."""
        o = self.options
        b, dev = feat.shape[0], feat.device
        s_word = self.heads["style_inversion"](feat.detach())
        c_word = self.heads["content_inversion"](feat.detach())
        proj = self.heads["image_proj"]
        image = F.normalize(proj(feat).float(), dim=1)
        image_fixed = F.normalize(proj(feat.detach()).float(), dim=1)
        full = self._encode(self._template(FULL_TEMPLATE, b, dev), style=s_word, content=c_word)
        content = self._encode(self._template(CONTENT_TEMPLATE, b, dev), content=c_word)
        style = self._encode(self._template(STYLE_TEMPLATE, b, dev), style=s_word)
        real_content = self._encode(torch.cat([self._template(CONTENT_PREFIX, b, dev), content_ids], 1))
        real_style = self._encode(torch.cat([self._template(("a",), b, dev), style_ids,
                                             self._template(STYLE_SUFFIX, b, dev)], 1))
        style_labels = torch.unique(style_ids, dim=0, return_inverse=True)[1]
        own = torch.arange(b, device=dev)
        t = o.temperature
        return {
            "full": label_contrast(image_fixed, full, own, own, t),
            "content": label_contrast(image, content, targets, targets, t),
            "ground": 0.5 * (label_contrast(content, real_content, targets, targets, t)
                             + label_contrast(style, real_style, style_labels, style_labels, t)),
            "orth": orthogonality(s_word.float(), c_word.float()),
        }

    def training_step(self, batch: Batch) -> StepOutput:
        o = self.options
        targets = torch.as_tensor(self.labels[batch.indices], device=batch.images.device)
        global_feat, bn_feat = self.model(batch.images)
        global_feat, bn_feat = global_feat.float(), bn_feat.float()
        logits = self.heads["classifier"](bn_feat)
        l_id = self.id_loss(logits, targets)
        l_tri = self.triplet(global_feat, targets)
        parts = self.prompt_losses(bn_feat, targets, batch.fields["prompt_content"], batch.fields["prompt_style"])
        total = (l_id + l_tri + o.full_weight * parts["full"] + o.content_weight * parts["content"]
                 + o.ground_weight * parts["ground"] + o.orth_weight * parts["orth"])
        logs = {"loss_id": float(l_id.detach()), "loss_triplet": float(l_tri.detach()),
                **{f"loss_{k}": float(v.detach()) for k, v in parts.items()},
                "train_acc": float((logits.argmax(1) == targets).float().mean())}
        return StepOutput(total, logs, embedding=bn_feat)
