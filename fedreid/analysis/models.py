"""The models an attribute analysis examines: a site's ``mosaic`` model from a run folder or a
checkpoint, with its data, and its knock-out evaluation.

A federated run folder (``config.yaml``, ``checkpoints/latest.pt``, ``site-state/``) gives
each site the model it runs: the global shared part, its own unshared part (experts or ViT,
by the share rule) and its pruning mask. A checkpoint (``fedreid train``'s ``checkpoint.pt``:
``{"model", "method", "arch"}``) gives one model, examined on the sites named.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fedreid.analysis.knockout import Knockout, run_knockout
from fedreid.client_state import ClientState
from fedreid.config import FedReIDConfig, load_config
from fedreid.data.sources import ensure_data_root
from fedreid.data.split_images import SplitImages, load_split_images
from fedreid.methods.attribute_sets import attribute_bits
from fedreid.methods.mosaic import MosaicMethod
from fedreid.models import load_subset
from fedreid.prune import apply_masks
from fedreid.training import LocalTrainer

CONFIG_FILE = "config.yaml"
GLOBAL_CHECKPOINT = Path("checkpoints") / "latest.pt"
SITE_STATE = "site-state"


@dataclass(frozen=True)
class SiteModel:
    """One site's mosaic method (model loaded) and its decoded splits."""

    site: str
    method: MosaicMethod
    images: SplitImages
    data_dir: Path


def run_config(folder: Path, overrides: list[str]) -> FedReIDConfig:
    """The config a run was made with (its ``config.yaml``) plus ``overrides``."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{path}: no run config here; pass a run folder written by fedreid (it holds config.yaml)")
    return load_config(overrides, file=path)


def _site_images(cfg: FedReIDConfig, site: str) -> tuple[SplitImages, Path]:
    root = ensure_data_root(cfg.data.root, sites=[site], synth_scale=cfg.data.synth_scale,
                            synth_seed=cfg.data.synth_seed)
    folder = root / site
    return load_split_images(folder, cfg.data.dataset, (cfg.data.height, cfg.data.width), seed=cfg.seed), folder


def _mosaic(cfg: FedReIDConfig, site: str, images: SplitImages) -> MosaicMethod:
    name = cfg.method_of(site)
    if name != MosaicMethod.name:
        raise ValueError(
            f"site {site} ran method {name!r}; the attribute analysis needs mosaic models (attribute experts)"
        )
    method = LocalTrainer(replace(cfg, device="cpu"), images, name).method
    if not method.has_experts:
        raise ValueError(f"site {site}'s mosaic model has no experts (method.mosaic.expert_blocks=0)")
    return method


def federated_site_models(run_dir: Path, sites: list[str], overrides: list[str]) -> list[SiteModel]:
    """Each site's personalised model of a federated run: global shared part, the site's own
    unshared part and mask (``site-state/<site>.pt``, when the run kept state files)."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides)
    checkpoint = run_dir / GLOBAL_CHECKPOINT
    if not checkpoint.is_file():
        raise ValueError(f"{checkpoint}: no global model; the run has not finished a round (or pass --checkpoint)")
    global_state = torch.load(checkpoint, map_location="cpu", weights_only=False)["global_state"]
    out = []
    for site in sites or cfg.data.sites:
        images, folder = _site_images(cfg, site)
        method = _mosaic(cfg, site, images)
        model = method.model
        keys = method.shared_keys(method.options, model)
        load_subset(model, {k: torch.from_numpy(np.array(v)) for k, v in global_state.items()}, keys, strict=False)
        state_file = run_dir / SITE_STATE / f"{site}.pt"
        if state_file.is_file():
            state = ClientState.load(state_file)
            if state.local_model:
                local = {k: torch.from_numpy(np.array(v)) for k, v in state.local_model.items()}
                load_subset(model, local, local.keys())
            if state.masks:
                apply_masks(model, {k: torch.from_numpy(v) for k, v in state.masks.items()})
        out.append(SiteModel(site, method, images, folder))
    return out


def checkpoint_site_models(checkpoint: Path, sites: list[str], overrides: list[str]) -> list[SiteModel]:
    """One checkpoint's model examined on each of ``sites`` (config from the checkpoint's folder)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ValueError(f"--checkpoint {checkpoint}: no such file")
    if not sites:
        raise ValueError("--checkpoint needs the site(s) to examine it on: --site NAME")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not isinstance(saved, dict) or "model" not in saved:
        raise ValueError(f"--checkpoint {checkpoint}: not a fedreid checkpoint (a dict with 'model')")
    cfg = run_config(checkpoint.parent, [f"method.name={MosaicMethod.name}", *overrides])
    out = []
    for site in sites:
        images, folder = _site_images(cfg, site)
        method = _mosaic(cfg, site, images)
        method.model.load_state_dict(saved["model"])
        out.append(SiteModel(site, method, images, folder))
    return out


def site_knockout(site: SiteModel, *, flip: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> Knockout:
    """The knock-out evaluation of one site's model on its query and gallery."""
    method, q, g = site.method, site.images.query, site.images.gallery

    def embed(off) -> tuple[np.ndarray, np.ndarray]:
        return (method.embed_knocked_out(q, flip=flip, off=off).numpy(),
                method.embed_knocked_out(g, flip=flip, off=off).numpy())

    return run_knockout(embed, method.names, q.pids, g.pids, q.camids, g.camids,
                        attribute_bits(q.samples, method.names), group=site.site, progress=progress)
