"""OCR text correction aimed at what the entity recognisers need, nothing more.

General spelling correction would "fix" surnames and plate letters into dictionary words, so
only three targeted repairs are made (each measured on/off by ``sims/bench/audit_quality``):

1. Unicode NFKC: the recogniser of RapidOCR returns full-width punctuation (``（212）``).
2. Digit look-alikes inside numbers: in a token of at least four characters that is all
   digits and number punctuation except for at most one look-alike letter (``O o Q D`` → 0,
   ``I l | i`` → 1, ``S`` → 5, ``B`` → 8, ``Z`` → 2), that letter becomes its digit, so
   ``555-O147`` reads ``555-0147``. Plates keep their letters: they have two or more.
3. Lost spaces: OCR often drops the space between words (``JAMESCOSTA``, ``maWickersham``):
   a lower-to-upper case change is split, and a token that is two names of the deny list
   glued together is split between them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_LOOKALIKE = {"O": "0", "o": "0", "Q": "0", "D": "0", "I": "1", "l": "1", "|": "1", "i": "1",
              "S": "5", "B": "8", "Z": "2"}
_NUMBER_CHARS = set("0123456789-/.:()+")
_TOKEN = re.compile(r"\S+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def _fix_number(token: str) -> str:
    if len(token) < 4:
        return token
    odd = [i for i, ch in enumerate(token) if ch not in _NUMBER_CHARS]
    digits = sum(ch.isdigit() for ch in token)
    if len(odd) != 1 or token[odd[0]] not in _LOOKALIKE or digits < 3:
        return token
    i = odd[0]
    return token[:i] + _LOOKALIKE[token[i]] + token[i + 1 :]


class TextCorrector:
    """Applies the repairs in the module docstring; ``names`` is the PERSON deny list used to
    split glued names (any case)."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._names = {name.lower() for name in names if len(name) >= 3}

    def _split_names(self, token: str) -> str:
        low = token.lower()
        if not low.isalpha() or low in self._names:
            return token
        for cut in range(3, len(low) - 2):
            if low[:cut] in self._names and low[cut:] in self._names:
                return f"{token[:cut]} {token[cut:]}"
        return token

    def __call__(self, text: str) -> str:
        text = unicodedata.normalize("NFKC", text)
        words = []
        for token in _TOKEN.findall(text):
            token = _fix_number(token)
            for part in _CAMEL.split(token):
                words.append(self._split_names(part))
        return " ".join(words)
