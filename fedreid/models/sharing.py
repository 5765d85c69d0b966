"""Which part of a model a federation shares, and moving that part in and out of a model.

A client method answers "what do I share?" once, as a list of state-dict keys
(:meth:`fedreid.methods.ReidMethod.shared_keys`); the codec, the masks, pruning, the KL
regulariser's reference and the server all use that list. The named rules below are what
most methods need; a method with adapters (LoRA experts, transfer nets) adds its own.
Everything of a model outside its shared keys stays on the site and is saved in the site's
state between rounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

# rule name -> key prefixes of a ReidNet that the rule shares
SHARE_RULES: dict[str, tuple[str, ...]] = {
    "backbone+neck": ("backbone.", "neck."),
    "backbone": ("backbone.",),
}


def keys_with_prefixes(model: nn.Module, prefixes: Iterable[str]) -> list[str]:
    """State-dict keys (parameters and buffers, in order) that start with one of ``prefixes``."""
    prefixes = tuple(prefixes)
    return [k for k in model.state_dict() if k.startswith(prefixes)]


def shared_keys_by_rule(model: nn.Module, rule: str) -> list[str]:
    """The keys a named rule of :data:`SHARE_RULES` shares; unknown rules list the known ones."""
    if rule not in SHARE_RULES:
        raise ValueError(f"share={rule!r}: choose one of {sorted(SHARE_RULES)}")
    keys = keys_with_prefixes(model, SHARE_RULES[rule])
    if not keys:
        raise ValueError(f"share={rule!r} selects no key of {type(model).__name__}")
    return keys


def state_subset(model: nn.Module, keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Detached copies of ``keys`` of the model's state (copies: later training cannot change
    a snapshot kept as "the global model")."""
    state = model.state_dict()
    return {k: state[k].detach().clone() for k in keys}


def local_subset(model: nn.Module, shared: Iterable[str]) -> dict[str, torch.Tensor]:
    """Everything of the model's state that is not shared: what the site keeps between rounds."""
    shared = set(shared)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in shared}


def load_subset(model: nn.Module, state: Mapping[str, torch.Tensor], keys: Iterable[str],
                *, strict: bool = True) -> tuple[list[str], list[str]]:
    """Load ``state`` into the ``keys`` of ``model``, leaving the rest of the model untouched.

    ``strict``: every key must be given and nothing else. Otherwise the overlap is loaded and
    (missing, unexpected) lists are returned. A shape mismatch is always an error.
    """
    own = model.state_dict()
    allowed = set(keys)
    missing = sorted(allowed - state.keys())
    unexpected = sorted(state.keys() - allowed)
    if strict and (missing or unexpected):
        raise ValueError(
            f"state does not fit the shared part of {type(model).__name__}: missing "
            f"{len(missing)} keys {missing[:5]}, unexpected {len(unexpected)} keys "
            f"{unexpected[:5]} (another model.arch, neck or method share rule?)"
        )
    common = sorted(allowed & state.keys())
    bad = [f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
           for k in common if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"state has {len(bad)} shape mismatches with the model, e.g. {bad[:3]}")
    model.load_state_dict({k: state[k] for k in common}, strict=False)
    return missing, unexpected
