"""synthetic-8: a generated stand-in for the eight FedKLPR benchmark splits.

``generate_synthetic8`` writes it in the FedReID layout; ``SITE_SPECS`` is its one table;
``spec_rows``/``render_spec_table`` print that table with the real statistics beside it.
"""

from .camera import CameraSpec
from .generate import generate_synthetic8
from .identity import AttributePriors, Identity, Outfit
from .specs import SITE_KEYS, SITE_SPECS, RealStats, SiteSpec, site_spec
from .table import render_spec_table, spec_rows

__all__ = [
    "AttributePriors",
    "CameraSpec",
    "Identity",
    "Outfit",
    "RealStats",
    "SITE_KEYS",
    "SITE_SPECS",
    "SiteSpec",
    "generate_synthetic8",
    "render_spec_table",
    "site_spec",
    "spec_rows",
]
