"""A site's gallery index that survives model updates (``fedreid site index``).

Features of a site's gallery images, with pid, camid, capture time and the model that made
them, kept across model versions: a new model either re-indexes from the images
(:func:`build_version`) or, without any image, maps the stored features through a transfer
network into its space (:func:`upgrade_version`, Bi-C2R's gallery update). Metadata is in
sqlite, each version's vectors in faiss files; a new version is written completely and then
switched to in one transaction, so a crash leaves the previous version current and usable.

Features from images (the model, the gallery's items and capture times) are in
:mod:`fedreid.index.extract`, kept out of this namespace so that reading, searching and
upgrading an index do not import the model zoo (torchvision):
a process that only searches or upgrades starts in half the time.
"""

from fedreid.index.backends import SEARCH_KINDS, build_ivf, exact_topk, recall_at_k
from fedreid.index.fusion import upgrade_features
from fedreid.index.site_index import Gallery, Hits, SiteIndex
from fedreid.index.store import ItemRecord, ModelInfo, ModelRef, VersionInfo
from fedreid.index.transfer import Transfer, load_transfer, save_transfer
from fedreid.index.write import build_version, upgrade_version

__all__ = [
    "SEARCH_KINDS",
    "Gallery",
    "Hits",
    "ItemRecord",
    "ModelInfo",
    "ModelRef",
    "SiteIndex",
    "Transfer",
    "VersionInfo",
    "build_ivf",
    "build_version",
    "exact_topk",
    "load_transfer",
    "recall_at_k",
    "save_transfer",
    "upgrade_features",
    "upgrade_version",
]
