"""What one image of a site carries: its files listed, its text read, its entities found.

Every image file below the site folder is audited (any layout: the FedReID folders, a
Market-1501 folder, loose files), not only those a reader would train on, because a file a
reader skips today may be read tomorrow. Three sources per image:

- ``image``: the OCR lines of its pixels (after :mod:`fedreid.audit.correct`);
- ``file name``: each folder and file name of its path below the site folder, ``_`` read as
  a space (short all-digit phone matches there are layout counters and are dropped);
- ``metadata``: its EXIF/PNG text fields (description, artist, copyright, comments, capture
  time; a GPS position is reported as a LOCATION), and its entry in ``meta.json``.

The rest of ``meta.json`` (identities, cameras) is audited as one more item, ``meta.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fedreid.audit.entities import Entity
from fedreid.audit.ocr import TextLine
from fedreid.audit.risk import grade
from fedreid.data.images import IMAGE_EXTS
from fedreid.data.records import DataError

AUDIT_DIR = ".fedreid-audit"  # inside the site folder: what `--policy block` leaves for join
META_ITEM = "meta.json"
# EXIF tags that hold free text or a time: ImageDescription, Make/Model are not personal.
_EXIF_TEXT = {270: "description", 315: "artist", 33432: "copyright", 306: "date time",
              37510: "user comment", 36867: "date time original", 40091: "title",
              40092: "comment", 40093: "author", 40094: "keywords", 40095: "subject"}
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_EXIF_DATE = re.compile(r"\b(\d{4}):(\d{2}):(\d{2})\b")


@dataclass
class Findings:
    """What the audit found on one item (an image, or ``meta.json``)."""

    relpath: str
    digest: str
    lines: list[TextLine] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)
    matches: list[tuple[str, float]] = field(default_factory=list)  # (exemplar, cosine)

    @property
    def risk(self) -> str:
        return grade(e.type for e in self.entities)

    @property
    def sensitive(self) -> bool:
        return bool(self.matches)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.relpath, "digest": self.digest, "risk": self.risk,
            "sensitive": self.sensitive,
            "entities": [{"type": e.type, "text": e.text, "score": e.score, "source": e.source}
                         for e in self.entities],
            "text": [{"text": line.text, "confidence": line.confidence, "box": list(line.box)}
                     for line in self.lines],
            "matches": [{"exemplar": name, "similarity": round(sim, 4)}
                        for name, sim in self.matches],
        }


def list_images(site: Path) -> list[str]:
    """POSIX paths (below ``site``) of every image file, sorted; hidden folders (such as
    ``.fedreid-audit``) are skipped."""
    if not site.is_dir():
        raise DataError(f"{site}: not a folder; pass the site's data folder (the one holding "
                        "pytorch/ or the data set's own folders)")
    found = []
    for top, dirs, files in os.walk(site):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTS:
                found.append(Path(top, name).relative_to(site).as_posix())
    return sorted(found)


def file_digest(path: Path) -> str:
    """Content digest (BLAKE2b-128, hex) that ties a finding to the exact bytes audited."""
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err}); fix: check permissions") from err


def load_rgb(path: Path) -> np.ndarray:
    """The image as RGB uint8 ``[H, W, 3]``; a file that does not decode is a DataError."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as err:  # PIL signals damage with many exception types
        raise DataError(f"{path}: cannot decode the image ({type(err).__name__}: {err}); fix: "
                        "copy the file again or delete it") from err


def flatten_strings(value: Any, prefix: str = "") -> list[str]:
    """``"key: value"`` lines for every string inside nested dicts/lists (numbers and booleans
    carry no text)."""
    if isinstance(value, str):
        return [f"{prefix}: {value}" if prefix else value]
    if isinstance(value, dict):
        return [line for key, item in value.items() for line in flatten_strings(item, str(key))]
    if isinstance(value, list):
        return [line for item in value for line in flatten_strings(item, prefix)]
    return []


def embedded_metadata(path: Path) -> tuple[list[str], bool]:
    """Text lines from an image's EXIF and PNG text chunks, and whether it holds a GPS position."""
    lines: list[str] = []
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            tags = dict(exif)
            tags.update(exif.get_ifd(_EXIF_IFD))
            has_gps = bool(exif.get_ifd(_GPS_IFD))
            info = {k: v for k, v in im.info.items() if isinstance(v, str)}
    except Exception as err:  # PIL signals damage with many exception types
        raise DataError(f"{path}: cannot read the image's metadata ({type(err).__name__}: "
                        f"{err}); fix: copy the file again or delete it") from err
    for tag, label in _EXIF_TEXT.items():
        value = tags.get(tag)
        if isinstance(value, bytes):
            encoding = "utf-16-le" if tag >= 40091 else "utf-8"
            value = value.decode(encoding, errors="ignore").strip("\x00 ")
            value = value.removeprefix("ASCII\x00\x00\x00").removeprefix("UNICODE\x00")
        if isinstance(value, str) and value.strip():
            lines.append(f"{label}: " + _EXIF_DATE.sub(r"\1-\2-\3", value.strip()))
    lines.extend(f"{key}: {value}" for key, value in sorted(info.items()) if value.strip())
    return lines, has_gps


def read_site_meta(site: Path) -> dict[str, Any]:
    """``meta.json`` of the site (FedReID layout), or {} when there is none."""
    path = site / META_ITEM
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable meta.json ({err}); fix: rewrite or delete it") from err
    if not isinstance(meta, dict):
        raise DataError(f"{path}: the top level is not an object; fix: rewrite or delete it")
    return meta


def image_meta_entry(meta: dict[str, Any], relpath: str) -> Any:
    """The image's entry in meta.json's ``images`` (keyed below ``pytorch/``), or None."""
    images = meta.get("images")
    if not isinstance(images, dict):
        return None
    key = relpath.removeprefix("pytorch/")
    return images.get(key, images.get(relpath))


def name_texts(relpath: str) -> list[str]:
    """A path read as words, one text per folder and file name (so a pid folder and the pid
    that starts the file name do not read as one number), extension dropped, ``_`` as space."""
    return [part.replace("_", " ") for part in os.path.splitext(relpath)[0].split("/") if part]


def _layout_counter(entity: Entity) -> bool:
    """A short all-digit "phone number" in a file name is a layout counter (Market-1501's
    frame ``040445``), not a phone: file-name phones need 9 digits or more."""
    return entity.type == "PHONE_NUMBER" and sum(c.isdigit() for c in entity.text) < 9


def entities_of(
    relpath: str,
    lines: list[TextLine],
    metadata_lines: list[str],
    has_gps: bool,
    analyze: Callable[[str, str], list[Entity]],
) -> list[Entity]:
    """Entities from an image's OCR lines, path and metadata; ``analyze(text, source)``."""
    found = [entity for line in lines for entity in analyze(line.text, "image")]
    found += [e for part in name_texts(relpath) for e in analyze(part, "file name")
              if not _layout_counter(e)]
    for line in metadata_lines:
        found += analyze(line, "metadata")
    if has_gps:
        found.append(Entity("LOCATION", "EXIF GPS position", 1.0, "metadata"))
    return found
