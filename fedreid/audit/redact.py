"""Policy ``redact``: a redacted copy of the site, the originals untouched.

Every text line the OCR read is blurred, not only the lines where an entity was recognised:
a name the deny list does not hold is still a name. Images without text are copied byte for
byte. In ``meta.json`` every string that holds a found entity gets ``<TYPE>`` in its place.
File names are kept (the layouts parse them); entities in file names stay in the report for
the operator to rename by hand.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image, ImageFilter

from fedreid.audit.entities import Entity
from fedreid.audit.ocr import TextLine


def blur_boxes(image: Image.Image, boxes: Iterable[tuple[int, int, int, int]]) -> Image.Image:
    """A copy of ``image`` with each box (padded by a third of its height) Gaussian-blurred with
    a radius of half its height (at least 4 px): strong enough that no OCR reads it back."""
    out = image.convert("RGB")
    for x0, y0, x1, y1 in boxes:
        pad = max(2, (y1 - y0) // 3)
        area = (max(0, x0 - pad), max(0, y0 - pad), min(out.width, x1 + pad),
                min(out.height, y1 + pad))
        if area[2] <= area[0] or area[3] <= area[1]:
            continue
        radius = max(4.0, (y1 - y0) / 2)
        patch = out.crop(area).filter(ImageFilter.GaussianBlur(radius))
        out.paste(patch, area[:2])
    return out


def _mask_strings(value: Any, entities: list[Entity]) -> Any:
    if isinstance(value, str):
        for entity in entities:
            value = value.replace(entity.text, f"<{entity.type}>")
        return value
    if isinstance(value, dict):
        return {key: _mask_strings(item, entities) for key, item in value.items()}
    if isinstance(value, list):
        return [_mask_strings(item, entities) for item in value]
    return value


def write_redacted_image(source: Path, target: Path, lines: list[TextLine], *,
                         strip_metadata: bool = False) -> None:
    """``source`` with its text lines blurred, saved at ``target`` in the same format;
    re-encoding drops EXIF and PNG text (``strip_metadata`` forces it for a text-free image
    whose metadata held an entity)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not lines and not strip_metadata:
        shutil.copy2(source, target)
        return
    with Image.open(source) as im:
        redacted = blur_boxes(im, [line.box for line in lines])
    if target.suffix.lower() in (".jpg", ".jpeg"):
        redacted.save(target, "JPEG", quality=95)
    else:
        redacted.save(target)


def write_redacted_meta(source: Path, target: Path, entities: list[Entity]) -> None:
    """``meta.json`` with every found entity's text replaced by ``<TYPE>``."""
    meta = json.loads(source.read_text(encoding="utf-8"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(_mask_strings(meta, entities), separators=(",", ":")),
                      encoding="utf-8")
