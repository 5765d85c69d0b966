"""The seeded split for small data sets without a public split file (CUHK01, VIPeR, PRID2011,
3DPeS, iLIDS-VID).

Identities: sorted, shuffled with ``random.Random(seed)``, the first
``floor(n * TRAIN_FRACTION)`` train and the rest test. With one half this reproduces the
published identity counts: VIPeR 316/316, CUHK01 485/486, PRID2011 100/100 of its 200 shared
identities, iLIDS-VID 150/150 (3DPeS: 96/97; FedReID's unreleased split has 93/86).

Test images follow FedReID's ``preprocess_small_datasets`` rule: for each test identity, the
first half of its camera views (sorted camera ids, ``views[:len(views) // 2]``) form the query
and the rest the gallery. With two cameras: camera 0 is the query, camera 1 the gallery; an
identity seen by one camera only goes to the gallery.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from fedreid.data.records import Sample

TRAIN_FRACTION = 0.5


def split_identities(
    pids: Iterable[int], seed: int, train_fraction: float = TRAIN_FRACTION
) -> tuple[set[int], set[int]]:
    """Seeded train / test identity sets."""
    ordered = sorted(set(pids))
    random.Random(seed).shuffle(ordered)
    cut = int(len(ordered) * train_fraction)
    return set(ordered[:cut]), set(ordered[cut:])


def query_gallery_by_views(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """FedReID's test rule: the first half of each identity's camera views is the query."""
    views: dict[int, set[int]] = {}
    for sample in samples:
        views.setdefault(sample.pid, set()).add(sample.camid)
    query_views = {pid: set(sorted(cams)[: len(cams) // 2]) for pid, cams in views.items()}
    query = [s for s in samples if s.camid in query_views[s.pid]]
    gallery = [s for s in samples if s.camid not in query_views[s.pid]]
    return query, gallery


def seeded_split(
    samples: list[Sample], seed: int
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Train / query / gallery of a small data set under the rules above."""
    train_pids, _ = split_identities((s.pid for s in samples), seed)
    train = [s for s in samples if s.pid in train_pids]
    query, gallery = query_gallery_by_views([s for s in samples if s.pid not in train_pids])
    return train, query, gallery
