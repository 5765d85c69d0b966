"""Image-file validation shared by the readers and `fedreid data check`.

Readers never open images unless asked (a 20k-image site must list in well under a second);
these helpers are the slow, thorough path that proves every file decodes and none is a copy.
"""

from __future__ import annotations

import hashlib
import io

from PIL import Image

from fedreid.data.records import DataError, Sample

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})

_RULE = "rule: every image file must hold one decodable image"


def inspect_image(path: str) -> tuple[int, int, str]:
    """Decode one image fully; return ``(height, width, content digest)``.

    ``verify()`` checks the container (PNG CRCs); ``load()`` then catches what verify cannot,
    such as a JPEG cut short by an interrupted copy.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise DataError(
            f"{path}: cannot read the file ({err}); {_RULE}; fix: check permissions"
        ) from err
    if not data:
        raise DataError(f"{path}: zero-byte image; {_RULE}; fix: copy the file again or delete it")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as err:  # PIL signals damage with many exception types
        raise DataError(
            f"{path}: corrupt image ({type(err).__name__}: {err}); {_RULE}; "
            "fix: copy the file again or delete it"
        ) from err
    return height, width, hashlib.blake2b(data, digest_size=16).hexdigest()


def validate_images(
    samples: list[Sample], split: str, *, video: bool = False
) -> list[tuple[int, int]]:
    """Inspect every image of one split; return their ``(height, width)`` sizes.

    Two files with the same content in one split are an error (a copied image under two names
    or two identities corrupts training and inflates evaluation). In video sets a frame may
    repeat inside its own tracklet (frozen video), so only repeats across tracklets count.
    """
    seen: dict[str, Sample] = {}
    sizes: list[tuple[int, int]] = []
    for sample in samples:
        height, width, digest = inspect_image(sample.path)
        sizes.append((height, width))
        first = seen.setdefault(digest, sample)
        if first is sample:
            continue
        same_tracklet = (first.pid, first.camid, first.tracklet) == (
            sample.pid,
            sample.camid,
            sample.tracklet,
        )
        if video and same_tracklet:
            continue
        raise DataError(
            f"{sample.path}: same content as {first.path} in split '{split}'; "
            "rule: no duplicate files within a split; fix: delete one of the two copies"
        )
    return sizes
