"""Camera-aware proxy memory loss of CAP (Wang et al. AAAI 2021) with FedCAPR's weights.

Each pseudo-label cluster is split by camera into proxies (the mean feature of the cluster's
images from one camera). The intra-camera term classifies a sample among its own camera's
proxies; the inter-camera term pulls it towards every proxy of its cluster, across cameras,
against the hardest proxies of other clusters. This makes features camera-invariant
without camera labels being identities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedreid.losses._groups import occurrence_rank

REDUCTIONS = ("mean", "camera_sum")


class CameraProxyMemoryLoss(nn.Module):
    """``intra_weight * intra + inter_weight * inter`` over a proxy memory ``[P, D]``.

    Call :meth:`reset` with the epoch's proxies, then per batch ``loss = self(feats,
    proxy_targets, camids)`` and :meth:`update` (before or after ``backward``).
    ``proxy_targets`` are indices into the memory, ``camids`` the samples' cameras (they must
    equal the cameras of their proxies). Features are expected L2-normalised (FedCAPR's model
    output); they are normalised again here, which changes neither value nor gradient then.

    - intra: cross-entropy over the proxies of the sample's camera,
      logits = similarity / temperature, target = its proxy.
    - inter: ``-mean_{p in P(i)} log softmax_p`` over [positives + the ``bg_knn`` most similar
      non-positive proxies], positives P(i) = all proxies of the sample's cluster. When
      fewer than ``bg_knn`` non-positives exist all are used (FedCAPR's sort would then
      re-select positives as negatives).
    - ``reduction="mean"``: both terms averaged over the batch. ``"camera_sum"``: averaged
      within each camera of the batch and summed over cameras, as the FedCAPR code does
      (the loss then grows with the number of cameras in the batch).
    """

    def __init__(
        self,
        temperature: float = 0.07,
        intra_weight: float = 0.6,
        inter_weight: float = 0.7,
        alpha: float = 0.2,
        bg_knn: int = 50,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}; FedCAPR uses 0.07")
        if intra_weight < 0 or inter_weight < 0:
            raise ValueError(
                f"intra_weight and inter_weight must be >= 0, got {intra_weight}, {inter_weight}"
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}; FedCAPR uses 0.2")
        if bg_knn < 0:
            raise ValueError(f"bg_knn must be >= 0, got {bg_knn}; FedCAPR uses 50")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.temperature = temperature
        self.intra_weight = intra_weight
        self.inter_weight = inter_weight
        self.alpha = alpha
        self.bg_knn = bg_knn
        self.reduction = reduction
        # Not persistent: proxies are rebuilt from clustering every epoch and stay on the site.
        self.register_buffer("memory", torch.empty(0, 0), persistent=False)
        self.register_buffer("proxy_cluster", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("proxy_camera", torch.empty(0, dtype=torch.long), persistent=False)

    def reset(
        self,
        proxy_centers: torch.Tensor,
        proxy_cluster: torch.Tensor,
        proxy_camera: torch.Tensor,
    ) -> None:
        """Load the epoch's proxies (``[P, D]``, L2-normalised here) with each proxy's cluster
        and camera. Buffers stay on the module's device."""
        if proxy_centers.dim() != 2 or proxy_centers.shape[0] == 0:
            raise ValueError(
                f"proxy_centers must be a non-empty [num_proxies, dim], got "
                f"{tuple(proxy_centers.shape)}"
            )
        num = proxy_centers.shape[0]
        for name, value in (("proxy_cluster", proxy_cluster), ("proxy_camera", proxy_camera)):
            if value.shape != (num,):
                raise ValueError(
                    f"{name} must be [{num}] (one per proxy), got {tuple(value.shape)}"
                )
        device = self.memory.device
        self.memory = F.normalize(proxy_centers.detach().to(device), dim=1).clone()
        self.proxy_cluster = proxy_cluster.detach().to(device=device, dtype=torch.long).clone()
        self.proxy_camera = proxy_camera.detach().to(device=device, dtype=torch.long).clone()

    def _check(self, feats: torch.Tensor, proxy_targets: torch.Tensor) -> None:
        num, dim = self.memory.shape
        if num == 0:
            raise ValueError("the proxy memory is empty; call reset(...) with the epoch's proxies")
        if feats.dim() != 2 or feats.shape[1] != dim or feats.shape[0] == 0:
            raise ValueError(f"feats must be a non-empty [batch, {dim}], got {tuple(feats.shape)}")
        if proxy_targets.shape != feats.shape[:1]:
            raise ValueError(
                f"proxy_targets must be [{feats.shape[0]}], got {tuple(proxy_targets.shape)}"
            )
        if proxy_targets.min() < 0 or proxy_targets.max() >= num:
            raise ValueError(
                f"proxy_targets must lie in [0, {num}), got "
                f"[{int(proxy_targets.min())}, {int(proxy_targets.max())}]"
            )

    def terms(
        self, feats: torch.Tensor, proxy_targets: torch.Tensor, camids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The unweighted (intra, inter) terms, reduced; for logging the two parts."""
        self._check(feats, proxy_targets)
        targets = proxy_targets.long()
        if camids.shape != targets.shape or not bool((self.proxy_camera[targets] == camids).all()):
            raise ValueError(
                "camids must be [batch] and equal the cameras of the samples' proxies "
                "(proxy_camera[proxy_targets]); check the proxy labelling"
            )
        feats = F.normalize(feats, dim=1)
        sims = feats @ self.memory.to(feats.dtype).t() / self.temperature
        neg_inf = float("-inf")

        same_camera = self.proxy_camera[None, :] == camids[:, None]
        intra = F.cross_entropy(sims.masked_fill(~same_camera, neg_inf), targets, reduction="none")

        pos = self.proxy_cluster[None, :] == self.proxy_cluster[targets][:, None]
        others = sims.detach().masked_fill(pos, neg_inf)
        hardest = others.topk(min(self.bg_knn, sims.shape[1]), dim=1).indices
        hard = torch.zeros_like(pos).scatter(1, hardest, True) & ~pos
        log_prob = F.log_softmax(sims.masked_fill(~(pos | hard), neg_inf), dim=1)
        pos_log_prob = torch.where(pos, log_prob, torch.zeros_like(log_prob))
        inter = -pos_log_prob.sum(dim=1) / pos.sum(dim=1).to(log_prob.dtype)

        if self.reduction == "mean":
            weight = torch.full_like(intra, 1.0 / intra.shape[0])
        else:
            _, cam_index, cam_counts = torch.unique(camids, return_inverse=True, return_counts=True)
            weight = 1.0 / cam_counts[cam_index].to(intra.dtype)
        return (intra * weight).sum(), (inter * weight).sum()

    def forward(
        self, feats: torch.Tensor, proxy_targets: torch.Tensor, camids: torch.Tensor
    ) -> torch.Tensor:
        intra, inter = self.terms(feats, proxy_targets, camids)
        return self.intra_weight * intra + self.inter_weight * inter

    @torch.no_grad()
    def update(self, feats: torch.Tensor, proxy_targets: torch.Tensor) -> None:
        """Momentum update ``m <- normalise(alpha * m + (1 - alpha) * x)`` of each sample's
        proxy, sample by sample in batch order as in CAP, vectorised over proxies.

        Builds a new memory tensor instead of writing in place, so a pending ``backward()``
        of a loss computed on the old memory still works.
        """
        self._check(feats, proxy_targets)
        targets = proxy_targets.long()
        feats = F.normalize(feats.detach(), dim=1).to(self.memory.dtype)
        memory = self.memory.clone()
        _, _, rank = occurrence_rank(targets)
        for r in range(int(rank.max()) + 1):
            chosen = rank == r
            rows = targets[chosen]
            mixed = self.alpha * memory[rows] + (1.0 - self.alpha) * feats[chosen]
            memory[rows] = F.normalize(mixed, dim=1)
        self.memory = memory
