"""Per-image fields a method can ask the data layer for, read once from each Sample.

A method's :class:`~fedreid.data.batch.BatchSpec` names fields; an :class:`ImageStore`
builds each asked-for field as one array over its samples (``ImageStore.field``). Readers
and the synthetic generator put the facts into ``Sample.meta`` under these names:
``geometry`` {"altitude", "distance", "pitch", "platform"}, ``modality`` ("visible" |
"infrared"), ``clothes_id``, ``attributes`` {name: value}; tracklets use ``Sample.tracklet``.
Adding a field is one function and one entry in :data:`FIELDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedreid.data.prompt_tokens import prompt_content, prompt_style
from fedreid.data.records import Sample

MODALITIES = ("visible", "infrared")
_MODALITY_ALIASES = {"rgb": "visible", "visible": "visible", "ir": "infrared", "infrared": "infrared"}
GEOMETRY_KEYS = ("altitude", "distance", "pitch")
# camera-level fallbacks the synthetic generator writes for every camera
_CAMERA_GEOMETRY = {"altitude": "height_m", "distance": "distance_m", "pitch": "pitch_deg"}


def _tracklet(samples: Sequence[Sample]) -> np.ndarray:
    return np.array([s.tracklet for s in samples], dtype=np.int64)


def _modality(samples: Sequence[Sample]) -> np.ndarray:
    """0 = visible, 1 = infrared; images without a modality are visible."""
    out = np.zeros(len(samples), dtype=np.int64)
    for i, s in enumerate(samples):
        raw = s.meta.get("modality") or (s.meta.get("camera") or {}).get("modality") or "visible"
        name = _MODALITY_ALIASES.get(str(raw).lower())
        if name is None:
            raise ValueError(
                f"{s.path}: modality {raw!r} is not one of {sorted(_MODALITY_ALIASES)}; fix the "
                "reader or meta.json"
            )
        out[i] = MODALITIES.index(name)
    return out


def _clothes(samples: Sequence[Sample]) -> np.ndarray:
    """The image's clothes id (``clothes_id``, else the generator's ``outfit``), -1 if unknown."""
    return np.array([int(s.meta.get("clothes_id", s.meta.get("outfit", -1))) for s in samples],
                    dtype=np.int64)


def _geometry(samples: Sequence[Sample]) -> np.ndarray:
    """N×3 float32 (altitude m, horizontal distance m, pitch degrees); NaN where unknown."""
    out = np.full((len(samples), len(GEOMETRY_KEYS)), np.nan, dtype=np.float32)
    for i, s in enumerate(samples):
        geo = s.meta.get("geometry") or {}
        cam = s.meta.get("camera") or {}
        for j, key in enumerate(GEOMETRY_KEYS):
            value = geo.get(key, cam.get(_CAMERA_GEOMETRY[key]))
            if value is not None:
                out[i, j] = float(value)
    return out


def _attributes(samples: Sequence[Sample]) -> np.ndarray:
    """N×A float32 of ``meta["attributes"]`` values, columns in sorted attribute order."""
    names = sorted({k for s in samples for k in (s.meta.get("attributes") or {})})
    if not names:
        raise ValueError(
            f"no image of this split has meta['attributes'] (first: {samples[0].path}); the "
            "reader must supply attribute annotations for a method that asks for them"
        )
    out = np.full((len(samples), len(names)), np.nan, dtype=np.float32)
    for i, s in enumerate(samples):
        attrs = s.meta.get("attributes") or {}
        for j, name in enumerate(names):
            if name in attrs:
                out[i, j] = float(attrs[name])
    return out


FIELDS: dict[str, Callable[[Sequence[Sample]], np.ndarray]] = {
    "tracklet": _tracklet,
    "modality": _modality,
    "clothes": _clothes,
    "geometry": _geometry,
    "attributes": _attributes,
    "prompt_content": prompt_content,  # generated sites: the prompt's content words
    "prompt_style": prompt_style,  # generated sites: the picture's style words
}


def read_field(name: str, samples: Sequence[Sample]) -> np.ndarray:
    """The array of field ``name`` over ``samples``; unknown names list the known ones."""
    if name not in FIELDS:
        raise ValueError(f"batch field {name!r}: choose among {sorted(FIELDS)}")
    return FIELDS[name](samples)
