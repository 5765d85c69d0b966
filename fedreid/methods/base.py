"""What a client method is: the interface every ReID method of a site implements.

A method declares, next to its code:

- its options (a dataclass subclassing :class:`MethodOptions`, ``Options``), which
  ``fedreid config`` lists under ``method.<name>``;
- ``build_model``: the network it trains, from the model registry (CNNs and ViTs);
- ``batch_spec`` and ``batches``: what its sampler asks the data layer for (views, labels,
  per-image fields) and which images go together;
- ``training_step``: its loss on one typed :class:`~fedreid.data.batch.Batch`;
- ``shared_keys``: which keys of its model the federation aggregates — the one answer the
  codec, the masks, pruning, the KL reference and the server all use;
- hooks: ``on_download`` (a new global model arrived), ``crr_labels`` (what cross-round
  recovery scores with), ``evaluators`` (protocol names; default single-query CMC/mAP/mINP)
  and ``embed`` (the retrieval embedding of a split).

Training-only modules (classifiers, centres, proxy memories) live in ``self.heads`` and are
never part of the model, so they can never be shared. Adding a method is one module in this
package and one entry in :data:`fedreid.methods.METHODS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from fedreid.data.batch import Batch, BatchSpec
from fedreid.data.store import ImageStore
from fedreid.eval.features import extract_features
from fedreid.methods.batches import eval_batches
from fedreid.models import SHARE_RULES, BackboneOptions, build_model, keys_with_prefixes

if TYPE_CHECKING:
    from fedreid.config.schema import ModelConfig


@dataclass
class MethodOptions:
    """Options every method has; a method's own options subclass this dataclass."""

    share: str = "backbone+neck"  # which keys the federation aggregates (fedreid.models.SHARE_RULES)


@dataclass
class StepOutput:
    """A training step's result: the loss to minimise, figures to log, and the embedding of
    ``batch.images`` (B×D, not normalised) that the federation's regulariser compares with
    the frozen reference model's."""

    loss: torch.Tensor
    logs: dict[str, float]
    embedding: torch.Tensor


@dataclass(frozen=True)
class MethodSetup:
    """Where a method trains: the site's training split, the device and the sampler sizes."""

    train: ImageStore
    device: torch.device
    batch_size: int = 32
    num_instances: int = 4
    eval_batch_size: int = 128


class ReidMethod(ABC):
    """One site's local training recipe (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    supervised: ClassVar[bool] = True
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    batch_spec: ClassVar[BatchSpec] = BatchSpec()
    default_arch: ClassVar[str] = "resnet18"  # what model.arch=auto builds
    # share rules of this method beyond fedreid.models.SHARE_RULES (name -> key prefixes)
    share_rules: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    evaluators: ClassVar[tuple[str, ...]] = ("single_query",)

    def __init__(self, options: MethodOptions, model: nn.Module, setup: MethodSetup):
        self.options = options
        self.model = model
        self.setup = setup
        self.train_store = setup.train
        self.device = setup.device
        self.heads = nn.ModuleDict()  # training-only modules: never part of the shared model

    # ---- the model and what is shared (callable without data: the server uses them) ---
    @classmethod
    def arch(cls, model_cfg: ModelConfig) -> str:
        """The backbone to build: ``model.arch``, or this method's own for ``auto``."""
        return cls.default_arch if model_cfg.arch == "auto" else model_cfg.arch

    @classmethod
    def build_model(cls, options: MethodOptions, model_cfg: ModelConfig,
                    image_size: tuple[int, int]) -> nn.Module:
        """The network this method trains (default: registry backbone + BNNeck)."""
        backbone = BackboneOptions(image_size=image_size, last_stride=model_cfg.last_stride,
                                   parts=model_cfg.parts, depth=model_cfg.vit_depth)
        return build_model(cls.arch(model_cfg), model_cfg.weights, backbone)

    @classmethod
    def share_choices(cls) -> dict[str, tuple[str, ...]]:
        return {**SHARE_RULES, **cls.share_rules}

    @classmethod
    def shared_keys(cls, options: MethodOptions, model: nn.Module) -> list[str]:
        """The model's state-dict keys the federation aggregates, in state-dict order."""
        rules = cls.share_choices()
        if options.share not in rules:
            raise ValueError(f"method.{cls.name}.share={options.share!r}: choose one of {sorted(rules)}")
        keys = keys_with_prefixes(model, rules[options.share])
        if not keys:
            raise ValueError(f"method.{cls.name}.share={options.share!r} selects no key of the model")
        return keys

    # ---- one epoch ----------------------------------------------------------------------
    def prepare_epoch(self, epoch: int) -> dict[str, float]:
        """Work before an epoch (e.g. re-clustering); returns figures to log."""
        return {}

    @abstractmethod
    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Rows of the training store, one array per batch, for one epoch."""

    @abstractmethod
    def training_step(self, batch: Batch) -> StepOutput:
        """The loss on one batch (forward included); the engine does backward and the step."""

    def after_step(self, batch: Batch, out: StepOutput) -> None:  # noqa: B027 - optional hook
        """After the optimiser step (memory updates, a centre-loss step); default: nothing."""

    def param_groups(self) -> list[dict]:
        """What the main optimiser trains: the model, then the heads."""
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        heads = [p for p in self.heads.parameters() if p.requires_grad]
        if heads:
            groups.append({"params": heads})
        return groups

    # ---- federation hooks -----------------------------------------------------------------
    def on_download(self, global_state: Mapping[str, torch.Tensor]) -> None:  # noqa: B027
        """A new global model was loaded into ``self.model`` (before local training)."""

    def site_files(self, folder: str | Path, server_round: int) -> list[Path]:
        """Files the method writes for the site's operator after a round's training (e.g.
        bic2r's gallery-upgrade transfer); the site's runtime passes ``<state>/files``.
        Default: none."""
        return []

    def crr_labels(self) -> np.ndarray | None:
        """Labels of the training images that cross-round recovery scores retrieval with
        (-1 = leave out), or None when there are none yet. Default: identities where the
        method is supervised."""
        return self.train_store.pids if self.supervised else None

    def reference_embedding(self, reference: nn.Module, batch: Batch) -> torch.Tensor:
        """The frozen reference model's normalised embedding of ``batch.images`` (KL target)."""
        return reference(batch.images).float()

    @torch.no_grad()
    def embed(self, store: ImageStore, *, flip: bool, limit: int | None = None,
              model: nn.Module | None = None) -> torch.Tensor:
        """L2-normalised retrieval embeddings (N×D, CPU) of a split, in order."""
        return extract_features(
            model or self.model,
            eval_batches(store, self.setup.eval_batch_size, self.device, limit=limit),
            device=self.device, flip=flip,
        ).float().cpu()

    # ---- what the site keeps between rounds ------------------------------------------------
    def local_state(self) -> dict[str, np.ndarray]:
        """Everything of the method a site must remember between rounds (never sent): the
        heads' state under ``heads.``; methods add their own arrays (e.g. cluster labels)."""
        return {f"heads.{k}": v.detach().cpu().numpy() for k, v in self.heads.state_dict().items()}

    def load_local_state(self, state: Mapping[str, np.ndarray]) -> None:
        heads = {k[len("heads."):]: torch.from_numpy(np.array(v)) for k, v in state.items()
                 if k.startswith("heads.")}
        if heads:
            self.heads.load_state_dict(heads)
