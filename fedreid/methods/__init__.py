"""Client methods by name. A site picks one with ``method.name`` (or ``sites.<site>.method``).

Each entry is a :class:`ReidMethod` subclass; its ``Options`` dataclass becomes the config
section ``method.<name>``. Adding a method is one module here and one entry below.
"""

from __future__ import annotations

from fedreid.methods.base import MethodOptions, MethodSetup, ReidMethod, StepOutput
from fedreid.methods.bic2r import Bic2rMethod
from fedreid.methods.bot import BoTMethod
from fedreid.methods.capr import CAPRMethod
from fedreid.methods.daprh import DAPRHMethod
from fedreid.methods.dppp import DPPPMethod
from fedreid.methods.echo import EchoMethod
from fedreid.methods.giqt import GIQTMethod
from fedreid.methods.iqaga import IQAGAMethod
from fedreid.methods.lsmrl import LSMRLMethod
from fedreid.methods.mosaic import MosaicMethod
from fedreid.methods.scm import SCMMethod
from fedreid.methods.vitc import ViTCMethod

METHODS: dict[str, type[ReidMethod]] = {
    cls.name: cls
    for cls in (BoTMethod, CAPRMethod, SCMMethod, ViTCMethod, MosaicMethod, IQAGAMethod, DAPRHMethod, Bic2rMethod,
                GIQTMethod, LSMRLMethod, EchoMethod, DPPPMethod)
}


def get_method(name: str) -> type[ReidMethod]:
    if name not in METHODS:
        raise ValueError(f"method {name!r} is not a known method; choose one of {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "MethodOptions", "MethodSetup", "ReidMethod", "StepOutput", "get_method"]
