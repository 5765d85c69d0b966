"""BNNeck and the identity classifier of the strong re-ID baseline (Luo et al., 2019)."""

from __future__ import annotations

from torch import nn


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d over the pooled feature, weight 1, bias 0 and the bias frozen.

    The frozen bias keeps the BN feature centred, which is what lets the ID loss (on the BN
    feature) and the triplet loss (on the feature before BN) not fight each other. The bias
    is still a parameter, so it is saved and shared like the rest of the neck.
    """

    def __init__(self, feat_dim: int) -> None:
        super().__init__(feat_dim)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        self.bias.requires_grad_(False)


class IdentityHead(nn.Linear):
    """Site-private classifier over the BN feature: Linear without bias, N(0, 0.001) init.

    It is deliberately not part of :class:`~fedreid.models.reid_net.ReidNet`: each site has
    its own identities, so a method holds the head itself, outside its ``shared_keys()``, and it
    never enters the shared state.
    """

    def __init__(self, feat_dim: int, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r}: must be at least 1")
        super().__init__(feat_dim, num_classes, bias=False)
        nn.init.normal_(self.weight, std=0.001)
