"""What a site sends to the coordinator, and what never leaves it — stated once, checked once.

``fedreid site check`` prints these lists to the site's operator; ``check_reply`` is the
same contract as code: it rejects any reply content that is not the shared model (backbone
and BNNeck arrays, possibly sparse-encoded) plus scalar metrics and the site's name.
Flower itself additionally sends the node's public key, heartbeats and message metadata;
the node config (data path, device) and the ClientApp's logs stay on the site.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from fedreid.fl.codec import SEP, SPARSE_PARTS

SHARED = (
    "model weights of the shared network — backbone and BNNeck parameters and BN statistics — "
    "after local training, sparse-encoded once pruned (kept values + a bitmap of kept positions)",
    "scalar metrics: loss, number of training / query images, pruning ratio, KL and cosine "
    "aggregation signals, mAP / Rank-k / mINP of the site's own evaluation, timings",
    "the site name and method name (so the coordinator can attribute and weight the update)",
)
NEVER_SHARED = (
    "images, or anything computed per image (features, embeddings, distances)",
    "identity labels, camera ids and pseudo-labels (cluster assignments)",
    "the classifier head / camera-proxy memory (the method's private part of the model)",
    "the CRR dense backup and the history of pruning masks (the site's private state file)",
    "file paths, the node configuration and the site's logs",
)
REPLY_RECORDS = {"arrays", "metrics", "meta"}
META_KEYS = {"site", "method"}


def check_reply(content_records: Mapping[str, object], array_keys: Iterable[str],
                array_dtypes: Mapping[str, np.dtype], metrics: Mapping[str, object],
                meta: Mapping[str, object], shared_keys: Iterable[str]) -> list[str]:
    """Problems with one reply's content (empty = it carries only what :data:`SHARED` says).

    Every array must be a shared model tensor, whole (``name::dense``) or sparse
    (``name::bits|values|shape``); every metric a plain number; the meta just site/method.
    """
    problems = []
    extra = set(content_records) - REPLY_RECORDS
    if extra:
        problems.append(f"unexpected records {sorted(extra)}")
    shared = set(shared_keys)
    for key in array_keys:
        name, _, part = key.rpartition(SEP)
        if name not in shared or part not in (*SPARSE_PARTS, "dense"):
            problems.append(f"array {key!r} is not part of the shared model")
        elif part == "bits" and array_dtypes[key] != np.uint8:
            problems.append(f"array {key!r} should be a uint8 bitmap, is {array_dtypes[key]}")
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"metric {key!r} is not a scalar number: {type(value).__name__}")
    if set(meta) - META_KEYS:
        problems.append(f"meta carries {sorted(set(meta) - META_KEYS)}")
    return problems
