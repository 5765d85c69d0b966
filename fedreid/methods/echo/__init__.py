"""``echo``: the ECHO-BID protocol as far as it runs here — EVA-02 fine-tuned for clothes change.

Metz, Hill & O'Toole, "The Early Bird Identifies the Worm: You Can't Beat a Head Start in
Long-Term Body Re-ID (ECHO-BID)" (research/methods.md §5). ECHO-BID adds no architecture: it
transfers an object-pretrained, masked-image-modelling EVA-02 to clothes-change re-ID. Here:

- the backbone is EVA-02 from timm (:mod:`fedreid.models.eva`) at a size 2 cores can train
  (``model.arch=auto`` builds ``method.echo.eva``, by default ``eva02_tiny_p8``, with
  ``model.vit_depth`` blocks), from a local timm
  EVA-02 file (``model.weights=/path``) or from scratch; EVA-02 Large and its hub weights are
  out of reach offline;
- the head start without weights: ``mim_epochs`` of masked-image modelling on the site's own
  training images before fine-tuning (:mod:`fedreid.methods.echo.mim`; pixel targets, since
  EVA-02's CLIP targets need CLIP weights). It runs once per site (remembered in the site's
  local state);
- fine-tuning: the BoT head (label-smoothed CE on the BNNeck feature, batch-hard triplet);
- evaluation: the clothes-change protocol (general / clothes-changing / same-clothes) and
  the occlusion test, plus single-query; decision-score fusion of several backbones
  (z-normalised per query) is :mod:`fedreid.methods.echo.fusion`, for evaluators and the
  claim check.

Other backbones of the registry (``model.arch=resnet18``, ``vit_tiny_p8``...) fine-tune with
the same head, so fusion can combine architecturally different models; MIM needs EVA-02.
The "small hard" against "large easy" transfer sets are subsets of a site's training data
(``sims/bench/echo_claim.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from torch import nn

from fedreid.data.batch import Batch, BatchSpec
from fedreid.methods.base import MethodOptions, MethodSetup, ReidMethod, StepOutput
from fedreid.methods.echo.mim import MaskedImageModelling, mim_pretrain
from fedreid.methods.supervised import IdTriplet
from fedreid.models import ReidNet
from fedreid.models.eva import EVA_ARCHS, EvaBackbone, load_eva_file


@dataclass
class EchoOptions(MethodOptions):
    eva: str = "eva02_tiny_p8"  # the EVA-02 built when model.arch=auto: eva02_{tiny,small}_p{8,16}
    mim_epochs: int = 0  # masked-image-modelling epochs on the site's images before fine-tuning (0 = none)
    mim_ratio: float = 0.4  # share of patch tokens masked
    mim_lr: float = 1e-3  # AdamW learning rate of the MIM pre-pass
    mim_batch_size: int = 64  # images per MIM batch
    label_smoothing: float = 0.1  # ε of the cross-entropy
    triplet_margin: float = 0.3  # <= 0 means soft margin


class EchoMethod(IdTriplet, ReidMethod):
    name = "echo"
    supervised = True
    Options = EchoOptions
    batch_spec = BatchSpec(views=1, labels=True)
    default_arch = "eva02_tiny_p8"  # what model.arch=auto builds by default (method.echo.eva)
    evaluators = ("single_query", "clothes_change", "occlusion")

    @classmethod
    def build_model(cls, options: EchoOptions, model_cfg, image_size: tuple[int, int]) -> nn.Module:
        if options.eva not in EVA_ARCHS:
            raise ValueError(f"method.echo.eva={options.eva!r}: choose one of {', '.join(EVA_ARCHS)}")
        if model_cfg.arch != "auto":
            return super().build_model(options, model_cfg, image_size)
        arch = options.eva
        backbone = EvaBackbone(arch, image_size, depth=model_cfg.vit_depth)
        if model_cfg.weights in ("imagenet", "deepsort"):
            raise ValueError(
                f"model.weights={model_cfg.weights!r} has no EVA-02 file; pass a local timm EVA-02 state "
                "dict (model.weights=/path/eva02.pth) or model.weights=none (then set "
                "method.echo.mim_epochs for the masked-image-modelling head start)")
        if model_cfg.weights != "none":
            load_eva_file(backbone, model_cfg.weights)
        return ReidNet(backbone)

    def __init__(self, options: EchoOptions, model, setup: MethodSetup):
        super().__init__(options, model, setup)
        backbone = model.backbone
        if options.mim_epochs > 0:
            if not isinstance(backbone, EvaBackbone):
                raise ValueError(
                    f"method.echo.mim_epochs={options.mim_epochs} needs an EVA-02 backbone "
                    f"(model.arch=auto and method.echo.eva one of {sorted(EVA_ARCHS)}), not "
                    f"{type(backbone).__name__}")
            self.heads["mim"] = MaskedImageModelling(backbone.embed_dim, backbone.patch).to(self.device)
        self.mim_done = options.mim_epochs == 0
        self.init_id_triplet(model.feat_dim, options.label_smoothing, options.triplet_margin)

    def param_groups(self) -> list[dict]:
        # The MIM parts are trained by the pre-pass only.
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]},
                {"params": list(self.heads["classifier"].parameters())}]

    def prepare_epoch(self, epoch: int) -> dict[str, float]:
        """The MIM pre-pass, before the first fine-tuning epoch (once per site)."""
        if self.mim_done:
            return {}
        o = self.options
        losses = mim_pretrain(self.model.backbone, self.heads["mim"], self.train_store, epochs=o.mim_epochs,
                              batch_size=o.mim_batch_size, lr=o.mim_lr, ratio=o.mim_ratio,
                              device=self.device, seed=epoch)
        self.mim_done = True
        return {"mim_loss_first": losses[0], "mim_loss_last": losses[-1]}

    def training_step(self, batch: Batch) -> StepOutput:
        parts = self.id_triplet(batch)
        return StepOutput(parts.l_id + parts.l_tri, parts.logs(), embedding=parts.bn_feat)

    def local_state(self) -> dict[str, np.ndarray]:
        return {**super().local_state(), "mim_done": np.array([int(self.mim_done)])}

    def load_local_state(self, state: Mapping[str, np.ndarray]) -> None:
        super().load_local_state(state)
        if "mim_done" in state:
            self.mim_done = bool(np.asarray(state["mim_done"]).item())
