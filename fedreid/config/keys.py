"""Every config key with its type, value and help, for ``fedreid config``.

The help of a key is the comment written beside its field (or on the lines just above it) in
the dataclass that declares it (``fedreid/config/schema.py`` or a method's options), read
from the source, so the schema stays the one place where a key and its meaning are written.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

_FIELD = re.compile(r"^\s+(\w+)\s*:[^=#]+(?:=[^#]*)?(?:#\s*(.+?))?\s*$")
_COMMENT = re.compile(r"^\s+#\s*(.+?)\s*$")


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` for the fields of dataclass ``cls`` (and its bases) that have one."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):  # built with make_dataclass: no source of its own
            continue
        above: list[str] = []
        for line in source.splitlines():
            if c := _COMMENT.match(line):
                above.append(c.group(1))
                continue
            m = _FIELD.match(line)
            if m and (m.group(2) or above):
                out[m.group(1)] = " ".join([*above, m.group(2) or ""]).strip()
            above = []
    return out


def describe_keys(obj: Any, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """``(dotted key, type name, value, help)`` for every leaf of the config dataclass ``obj``."""
    rows: list[tuple[str, str, Any, str]] = []
    comments = {**field_comments(type(obj)),
                **{f.name: f.metadata["help"] for f in dataclasses.fields(obj) if "help" in f.metadata}}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            rows += describe_keys(value, f"{key}.")
        elif isinstance(value, dict) and all(dataclasses.is_dataclass(v) for v in value.values()):
            for name, item in value.items():
                rows += describe_keys(item, f"{key}.{name}.")
            if not value:
                rows.append((f"{key}.<name>.*", "table", "{}", comments.get(f.name, "")))
        else:
            type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            rows.append((key, str(type_name), value, comments.get(f.name, "")))
    return rows
