"""Which binary attribute values a MoSAIC model has experts for, and each image's values.

An expert is named by one binary attribute value, written as the attribute annotations
name it (``Sample.meta["attributes"]``, {name: value}):

- ``name``: the attribute is 0/1 and the expert fires on 1 (synthetic-8's 41 names, e.g.
  ``upper:red``, ``bag:backpack``);
- ``name=value``: the expert fires when the attribute equals ``value`` (the Market/Duke
  annotations code no/yes as 1/2, so ``hat=2`` is "wears a hat"; ``age=3`` one age class).

The number of experts must be known before any data is read (the server builds the model
too), so a set is named in the config: a vocabulary below, or an explicit list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedreid.data.records import DataError, Sample

# Lin et al.'s identity-level annotations (vana77/Market-1501_Attribute, DukeMTMC-attribute),
# attribute names as in the .mat files; 1 = no / first class, 2 = yes / second class.
_MARKET_BINARY = (
    "gender", "hair", "up", "down", "clothes", "hat", "backpack", "bag", "handbag",
    "upblack", "upwhite", "upred", "uppurple", "upyellow", "upgray", "upblue", "upgreen",
    "downblack", "downwhite", "downpink", "downpurple", "downyellow", "downgray", "downblue",
    "downgreen", "downbrown",
)
_DUKE_BINARY = (
    "gender", "top", "boots", "hat", "backpack", "bag", "handbag", "shoes",
    "upblack", "upwhite", "upred", "uppurple", "upgray", "upblue", "upgreen", "upbrown",
    "downblack", "downwhite", "downred", "downgray", "downblue", "downgreen", "downbrown",
)
ATTRIBUTE_SETS = ("synthetic", "market", "duke", "custom")


def expert_names(attribute_set: str, custom: Sequence[str] = ()) -> tuple[str, ...]:
    """The expert names of a vocabulary (``custom``: the given list, in order)."""
    if attribute_set == "synthetic":
        from fedreid.data.synth.attributes_truth import (
            ATTRIBUTE_NAMES,  # the generator's vocabulary
        )

        return tuple(ATTRIBUTE_NAMES)
    if attribute_set == "market":
        return (*(f"{a}=2" for a in _MARKET_BINARY), *(f"age={v}" for v in range(1, 5)))
    if attribute_set == "duke":
        return tuple(f"{a}=2" for a in _DUKE_BINARY)
    if attribute_set == "custom":
        names = tuple(str(n).strip() for n in custom)
        if not names or any(not n for n in names):
            raise ValueError(
                f"method.mosaic.attributes={list(custom)}: attribute_set=custom needs a non-empty "
                "list of names, e.g. attributes=[hat=2,backpack=2]"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"method.mosaic.attributes lists a name twice: {list(names)}")
        return names
    raise ValueError(f"method.mosaic.attribute_set={attribute_set!r}: choose one of {', '.join(ATTRIBUTE_SETS)}")


def _parse(name: str) -> tuple[str, float]:
    attribute, sep, value = name.partition("=")
    if not sep:
        return attribute, 1.0
    try:
        return attribute, float(value)
    except ValueError:
        raise ValueError(f"expert name {name!r}: the value after '=' must be a number") from None


def attribute_bits(samples: Sequence[Sample], names: Sequence[str]) -> np.ndarray:
    """N×E float32: 1 where the image's person has expert ``e``'s value, 0 where not, NaN where
    the annotation lacks that attribute. A split with no known value at all is a DataError."""
    parsed = [_parse(n) for n in names]
    out = np.full((len(samples), len(names)), np.nan, dtype=np.float32)
    for i, sample in enumerate(samples):
        attrs = sample.meta.get("attributes") if sample.meta else None
        if not attrs:
            continue
        for j, (attribute, value) in enumerate(parsed):
            if attribute in attrs:
                out[i, j] = float(float(attrs[attribute]) == value)
    if len(samples) and np.isnan(out).all():
        seen = sorted({k for s in samples if s.meta for k in (s.meta.get("attributes") or {})})
        raise DataError(
            f"{samples[0].path}: none of this split's images has a value for the experts' attributes "
            f"({', '.join(list(names)[:4])}, ...); the annotations name {seen[:6] or 'nothing'}; fix: "
            "choose the matching method.mosaic.attribute_set (synthetic, market, duke) or list names"
        )
    return out
