"""Re-ID networks: a registry of backbones (CNNs and ViTs) + BNNeck, their initial weights,
and the split of a model's state into what a federation shares and what stays on a site.

``build_model`` is the one entry point; a new backbone is one entry in ``BACKBONES``.
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
    BackboneOptions,
    BackboneSpec,
    ReidNet,
    ReidOutput,
    backbone_spec,
)
from fedreid.models.sharing import (
    SHARE_RULES,
    keys_with_prefixes,
    load_subset,
    local_subset,
    shared_keys_by_rule,
    state_subset,
)
from fedreid.models.weights import WEIGHTS_CHOICES, load_weights


def build_model(
    arch: str = "resnet18",
    weights: str = "none",
    options: BackboneOptions | None = None,
    *,
    neck: str = "bnneck",
    feat_norm: bool = True,
) -> ReidNet:
    """Build ``arch`` (a ``BACKBONES`` key) + neck and initialise it from ``weights``.

    ``weights``: ``"none"`` (random init), ``"imagenet"`` (torchvision CNNs; hub cache or
    download), ``"deepsort"`` (mobilenet_v2 only; needs the ``pretrained`` extra) or a file
    path (torchvision or timm state dict, or a fedreid checkpoint).
    """
    backbone = backbone_spec(arch).factory(options or BackboneOptions())
    model = ReidNet(backbone, neck=neck, feat_norm=feat_norm)
    load_weights(model, arch, weights)
    return model


__all__ = [
    "BACKBONES",
    "NECKS",
    "SHARE_RULES",
    "WEIGHTS_CHOICES",
    "BNNeck",
    "BackboneOptions",
    "BackboneSpec",
    "IdentityHead",
    "ReidNet",
    "ReidOutput",
    "amp_dtype",
    "autocast_context",
    "backbone_spec",
    "build_model",
    "keys_with_prefixes",
    "load_subset",
    "load_weights",
    "local_subset",
    "make_grad_scaler",
    "resolve_device",
    "shared_keys_by_rule",
    "state_subset",
    "to_channels_last",
]
