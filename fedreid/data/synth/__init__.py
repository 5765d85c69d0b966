"""synthetic-8: a generated stand-in for the eight FedKLPR benchmark splits, optional site
kinds (aerial, ir-video, clothes), attribute ground truth, and prompt-driven identities.

``generate_synthetic8`` writes it in the FedReID layout; ``SITE_SPECS`` is its one table and
``KINDS`` the optional sites; ``spec_rows``/``render_spec_table`` print the table with the
real statistics beside it; ``attribute_truth`` reads a site's attribute separabilities back;
``parse_prompts``/``random_prompts``/``generate_from_prompts`` render people from text.
"""

from .attributes_truth import ATTRIBUTE_NAMES, attribute_truth
from .camera import CameraSpec
from .from_prompts import generate_from_prompts
from .generate import generate_synthetic8
from .identity import AttributePriors, Identity, Outfit
from .kinds import KIND_KEYS, KINDS, SiteKind
from .prompts import (
    DEFAULT_HELD_OUT,
    IdentityPrompt,
    parse_prompt,
    parse_prompts,
    random_prompts,
    vocabulary,
)
from .specs import SITE_KEYS, SITE_SPECS, RealStats, SiteSpec, site_spec
from .table import held_out_sites, render_spec_table, site_styles, spec_rows

__all__ = [
    "ATTRIBUTE_NAMES",
    "AttributePriors",
    "CameraSpec",
    "DEFAULT_HELD_OUT",
    "Identity",
    "IdentityPrompt",
    "KINDS",
    "KIND_KEYS",
    "Outfit",
    "RealStats",
    "SITE_KEYS",
    "SITE_SPECS",
    "SiteKind",
    "SiteSpec",
    "attribute_truth",
    "generate_from_prompts",
    "generate_synthetic8",
    "held_out_sites",
    "parse_prompt",
    "parse_prompts",
    "random_prompts",
    "render_spec_table",
    "site_spec",
    "site_styles",
    "spec_rows",
    "vocabulary",
]
