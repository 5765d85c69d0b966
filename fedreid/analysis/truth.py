"""The synthetic generator's attribute ground truth, to check a measured importance against.

synthetic-8 records per site how much each attribute separates identities as rendered there
(:func:`fedreid.data.synth.attribute_truth`, in bits: the identity information of the
attribute times how visible the renderer made it) and a class per attribute: ``absent``
(nobody has it), ``invisible``, ``weak`` or ``strong``. The information alone is kept too: an
oracle router gates experts from labels, not pixels, so visibility cannot matter to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fedreid.data.records import DataError


@dataclass(frozen=True)
class AttributeTruth:
    """Separability and identity information (bits) and class of every attribute at one
    generated site."""

    separability: dict[str, float]
    information: dict[str, float]
    classes: dict[str, str]

    @property
    def present(self) -> list[str]:
        """Attributes somebody at the site has (class other than ``absent``)."""
        return [n for n, c in self.classes.items() if c != "absent"]


def generator_truth(site_dir: str | Path) -> AttributeTruth | None:
    """The truth of a generated site, or None for a site without one (real data)."""
    from fedreid.data.synth import attribute_truth  # the generator's reader of its own meta.json

    try:
        separability = attribute_truth(site_dir)
    except DataError:
        return None
    meta = json.loads((Path(site_dir) / "meta.json").read_text())["attribute_truth"]["attributes"]
    return AttributeTruth(separability, {n: float(meta[n]["information"]) for n in separability},
                          {n: str(meta[n]["class"]) for n in separability})
