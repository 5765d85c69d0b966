"""Re-ID networks: a registry of backbones + BNNeck, their initial weights and the split of a
model's state into what a federation shares and what stays on a site.

``build_model`` is the one entry point; a new backbone is one line in ``BACKBONES``.
"""

from __future__ import annotations

from fedreid.models.bnneck import BNNeck, IdentityHead
from fedreid.models.device import (
    amp_dtype,
    autocast_context,
    make_grad_scaler,
    resolve_device,
    to_channels_last,
)
from fedreid.models.reid_net import (
    BACKBONES,
    NECKS,
    PRIVATE_PREFIX,
    BackboneSpec,
    ReidNet,
    ReidOutput,
    backbone_spec,
    is_shared_key,
    load_shared_state_dict,
    shared_state_dict,
)
from fedreid.models.weights import WEIGHTS_CHOICES, load_weights


def build_model(
    arch: str = "resnet18",
    weights: str = "none",
    *,
    last_stride: int = 1,
    neck: str = "bnneck",
    feat_norm: bool = True,
) -> ReidNet:
    """Build ``arch`` (a ``BACKBONES`` key) + neck and initialise it from ``weights``.

    ``weights``: ``"none"`` (random init), ``"imagenet"`` (torchvision; hub cache or download),
    ``"deepsort"`` (mobilenet_v2 only; needs the ``pretrained`` extra) or a file path.
    """
    backbone = backbone_spec(arch).factory(last_stride=last_stride)
    model = ReidNet(backbone, neck=neck, feat_norm=feat_norm)
    load_weights(model, arch, weights)
    return model


__all__ = [
    "BACKBONES",
    "NECKS",
    "PRIVATE_PREFIX",
    "WEIGHTS_CHOICES",
    "BNNeck",
    "BackboneSpec",
    "IdentityHead",
    "ReidNet",
    "ReidOutput",
    "amp_dtype",
    "autocast_context",
    "backbone_spec",
    "build_model",
    "is_shared_key",
    "load_shared_state_dict",
    "load_weights",
    "make_grad_scaler",
    "resolve_device",
    "shared_state_dict",
    "to_channels_last",
]
