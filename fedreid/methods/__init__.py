"""Client methods by name. A site picks one with ``method.name``."""

from __future__ import annotations

from fedreid.methods.base import BatchOutput, ReidMethod
from fedreid.methods.bot import BoTMethod
from fedreid.methods.capr import CAPRMethod

METHODS: dict[str, type[ReidMethod]] = {
    BoTMethod.name: BoTMethod,
    CAPRMethod.name: CAPRMethod,
}


def get_method(name: str) -> type[ReidMethod]:
    if name not in METHODS:
        raise ValueError(
            f"method.name={name!r} is not a known method; choose one of {', '.join(METHODS)}"
        )
    return METHODS[name]


__all__ = ["METHODS", "BatchOutput", "ReidMethod", "get_method"]
