"""What every clustering (unsupervised) method keeps of its clusters between rounds."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class KeepsClusterLabels:
    """Mixin for methods that cluster their site's images into pseudo-identities (``capr``,
    ``vitc``, ``daprh``): cross-round recovery scores retrieval with the latest clusters (they
    span cameras, unlike camera proxies), and the clusters survive between rounds in the site's
    private state. The method sets ``cluster_labels`` (DBSCAN's, outliers -1) and ``clustered``.
    Put it before :class:`ReidMethod` in the bases."""

    cluster_labels: np.ndarray
    clustered: bool

    def crr_labels(self) -> np.ndarray | None:
        return self.cluster_labels if self.clustered else None

    def local_state(self) -> dict[str, np.ndarray]:
        state = super().local_state()  # type: ignore[misc]
        if self.clustered:
            state["cluster_labels"] = self.cluster_labels.copy()
        return state

    def load_local_state(self, state: Mapping[str, np.ndarray]) -> None:
        super().load_local_state(state)  # type: ignore[misc]
        if "cluster_labels" in state:
            self.cluster_labels = np.asarray(state["cluster_labels"], dtype=np.int64)
            self.clustered = True
