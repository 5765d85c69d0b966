"""fedreid: federated person re-identification (FedKLPR on Flower).

The ``fedreid`` package is pure PyTorch/NumPy and never imports Flower; the ``server`` and
``clients`` packages adapt it to Flower messages.
"""

__version__ = "0.1.0"
