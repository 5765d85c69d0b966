"""What a site sends to the coordinator, and what never leaves it, in words for operators.

``fedreid site check`` prints these lists. In code the contract is the method's
``shared_keys`` (the only arrays a site encodes) and the coordinator's reply validation;
tests/test_deploy_sharing.py checks real replies against both. Flower itself additionally
sends the node's public key, heartbeats and message metadata; the node config (data path,
device) and the ClientApp's logs stay on the site.
"""

from __future__ import annotations

SHARED = (
    "model weights of the shared network — what the site's method shares (by default backbone "
    "and BNNeck parameters and BN statistics) — after local training, sparse-encoded once "
    "pruned (kept values + a bitmap of kept positions)",
    "scalar metrics: loss, number of training / query images, pruning ratio, KL and cosine "
    "aggregation signals, mAP / Rank-k / mINP of the site's own evaluation, timings",
    "the site name and method name (so the coordinator can attribute and weight the update); "
    "once per run, the backbone name and the names, shapes and dtypes of the shared arrays "
    "(so the coordinator can refuse a site whose model does not fit)",
    "warnings about the site's own round the coordinator's operator must see, as text (e.g. a "
    "round redone from earlier state after the coordinator resumed)",
)
NEVER_SHARED = (
    "images, or anything computed per image (features, embeddings, distances)",
    "identity labels, camera ids and pseudo-labels (cluster assignments)",
    "the method's training heads (classifier, centres, camera-proxy memory) and any part of "
    "the model the method does not share",
    "the CRR dense backup and the history of pruning masks (the site's private state file)",
    "file paths, the node configuration and the site's logs",
)
