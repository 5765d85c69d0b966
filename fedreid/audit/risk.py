"""Re-identification risk of one image from the entity types found on it together.

After the LAION-400M ultrasound study (research/methods.md §8): one entity alone rarely
names a person; entities that occur *together* on one image do (a name with a date of
birth, a badge number with a name). The grading, over everything found on an image (its
pixels, its file name and its metadata together):

- ``high``: a direct identifier together with any other entity (a name with a date, a
  phone number with a plate), or two different direct identifiers;
- ``medium``: one direct identifier alone, or two or more different quasi-identifiers;
- ``low``: one quasi-identifier alone (a date, a URL, a location);
- ``none``: nothing found.

Direct identifiers point at one person or their vehicle or account: PERSON, PHONE_NUMBER,
EMAIL_ADDRESS, ID_NUMBER, LICENSE_PLATE, US_SSN, UK_NHS, CREDIT_CARD, IBAN_CODE. Every
other type (DATE_TIME, LOCATION, NRP, URL, IP_ADDRESS) is a quasi-identifier.
"""

from __future__ import annotations

from collections.abc import Iterable

LEVELS = ("none", "low", "medium", "high")
DIRECT = frozenset({"PERSON", "PHONE_NUMBER", "EMAIL_ADDRESS", "ID_NUMBER", "LICENSE_PLATE",
                    "US_SSN", "UK_NHS", "CREDIT_CARD", "IBAN_CODE"})


def grade(entity_types: Iterable[str]) -> str:
    """The risk level (one of ``LEVELS``) of an image carrying these entity types."""
    types = set(entity_types)
    direct = types & DIRECT
    quasi = types - DIRECT
    if len(direct) >= 2 or (direct and quasi):
        return "high"
    if direct or len(quasi) >= 2:
        return "medium"
    return "low" if quasi else "none"


def at_least(level: str, threshold: str) -> bool:
    """Whether ``level`` is ``threshold`` or worse; both must be in ``LEVELS``."""
    for value in (level, threshold):
        if value not in LEVELS:
            raise ValueError(f"risk level {value!r} is not one of {', '.join(LEVELS)}")
    return LEVELS.index(level) >= LEVELS.index(threshold)
