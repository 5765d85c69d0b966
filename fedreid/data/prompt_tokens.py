"""The prompt generator's words as token ids: what a text encoder trained from scratch reads.

Images rendered by ``fedreid data generate`` carry, in ``meta.json``, the prompt of their
identity (``"prompt"``) and the style drawn for the picture (``"style"``: light level, colour
cast, viewpoint, background). Two batch fields turn them into fixed-vocabulary token ids:

- ``prompt_content``: N×L int64, the prompt's content words (clothing, bag, hat, hair, skin,
  build) in prompt order, 0-padded — the same for every picture of an identity;
- ``prompt_style``: N×4 int64, the rendered style words (light, cast, viewpoint, background).

The vocabulary is :func:`fedreid.data.synth.vocabulary` (every word a prompt may use) after a
few words of the prompt templates; it is fixed by the generator, so a model built on it
has the same shape at every site.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import numpy as np

from fedreid.data.records import DataError, Sample

PAD, UNK = "<pad>", "<unk>"
STYLE_SLOT, CONTENT_SLOT = "<style*>", "<content*>"  # where pseudo-words go in a template
TEMPLATE_WORDS = ("photo", "style")
STYLE_KEYS = ("light", "cast", "viewpoint", "background")
# vocabulary() groups holding style words and the nouns of style phrases; "ignored" are fillers
_STYLE_GROUPS = ("light", "views", "backgrounds")
_SPLIT = re.compile(r"[\s,;.]+")


@functools.cache
def _groups() -> dict[str, tuple[str, ...]]:
    from fedreid.data.synth import vocabulary

    out = {}
    for part in vocabulary().split("; "):
        name, words = part.split(": ", 1)
        out[name] = tuple(words.split(", "))
    return out


@functools.cache
def vocabulary_words() -> tuple[str, ...]:
    """Token id -> word: pad, unknown, the two pseudo-word slots, template words, then every
    generator word in sorted order."""
    words = sorted({w for ws in _groups().values() for w in ws} - set(TEMPLATE_WORDS))
    return (PAD, UNK, STYLE_SLOT, CONTENT_SLOT, *TEMPLATE_WORDS, *words)


@functools.cache
def _index() -> dict[str, int]:
    return {w: i for i, w in enumerate(vocabulary_words())}


@functools.cache
def _not_content() -> frozenset[str]:
    g = _groups()
    return frozenset(w for name in (*_STYLE_GROUPS, "ignored") for w in g[name])


def token_ids(words: Sequence[str]) -> list[int]:
    """Ids of ``words``; a word outside the vocabulary becomes ``<unk>``."""
    index = _index()
    return [index.get(w, index[UNK]) for w in words]


def content_words(prompt: str) -> list[str]:
    """A prompt's content words in order: fillers and the style phrases removed."""
    drop = _not_content()
    return [w for w in _SPLIT.split(prompt.lower().strip()) if w and w not in drop]


def _entry(sample: Sample, key: str):
    value = sample.meta.get(key)
    if value is None:
        raise DataError(
            f"{sample.path}: meta.json has no {key!r} for this image; methods that read prompts "
            "(dppp) need sites written by `fedreid data generate --prompts FILE|--random N`"
        )
    return value


def prompt_content(samples: Sequence[Sample]) -> np.ndarray:
    """N×L token ids of each image's prompt content words, 0-padded to the longest."""
    rows = [token_ids(content_words(str(_entry(s, "prompt")))) for s in samples]
    width = max(1, max(len(r) for r in rows))
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def prompt_style(samples: Sequence[Sample]) -> np.ndarray:
    """N×4 token ids of each image's rendered style (light, cast, viewpoint, background)."""
    out = np.zeros((len(samples), len(STYLE_KEYS)), dtype=np.int64)
    for i, s in enumerate(samples):
        style = _entry(s, "style")
        missing = [k for k in STYLE_KEYS if k not in style]
        if missing:
            raise DataError(f"{s.path}: meta.json style {style!r} lacks {missing}; regenerate the site "
                            "with `fedreid data generate`")
        out[i] = token_ids([str(style[k]) for k in STYLE_KEYS])
    return out
