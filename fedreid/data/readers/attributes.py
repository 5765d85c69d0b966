"""Identity-level attribute annotations of Lin et al. ("Improving person re-identification by
attribute and identity learning"): ``market_attribute.mat`` (27 attributes) and
``duke_attribute.mat`` (23 attributes).

The .mat holds one struct named like the file with sub-structs ``train`` and ``test``; each
has one 1×N array per attribute (1 = no / first class, 2 = yes / second class; ``age`` 1..4)
and ``image_index``, the N identity ids as 4-digit strings. The values are kept as given.
This layout is read from third-party loaders and the annotation README, not checked against
the original file here, so two plain forms are accepted as well (same stem, same values):

- ``<stem>.json``: ``{"<pid>": {"<attribute>": value, ...}, ...}``, optionally nested one level
  under ``"train"`` / ``"test"``;
- ``<stem>.csv``: a header ``pid,<attribute>,...`` and one row of integers per identity.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedreid.data.records import DataError

_MAT_RULE = (
    "rule: one struct with 'train'/'test' sub-structs, each holding 'image_index' and one "
    "1xN array per attribute"
)


def find_attribute_table(folders: Sequence[str], stem: str) -> dict[int, dict[str, Any]] | None:
    """Attributes per identity from the first ``<stem>.{mat,json,csv}`` found, else ``None``."""
    for folder in folders:
        for ext, parse in ((".mat", _from_mat), (".json", _from_json), (".csv", _from_csv)):
            path = os.path.join(folder, stem + ext)
            if os.path.isfile(path):
                return parse(path)
    return None


def _from_mat(path: str) -> dict[int, dict[str, Any]]:
    from scipy.io import loadmat  # scipy is slow to import; only attribute users pay for it

    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
        keys = [key for key in mat if not key.startswith("__")]
        top = mat[keys[0]]
        table: dict[int, dict[str, Any]] = {}
        for part in top._fieldnames:
            struct = getattr(top, part)
            pids = np.atleast_1d(struct.image_index)
            columns = {
                field: np.atleast_1d(getattr(struct, field))
                for field in struct._fieldnames
                if field != "image_index"
            }
            for i, pid in enumerate(pids):
                table[int(pid)] = {field: int(column[i]) for field, column in columns.items()}
    except (AttributeError, IndexError, TypeError, ValueError, OSError) as err:
        raise DataError(
            f"{path}: unreadable attribute file ({type(err).__name__}: {err}); {_MAT_RULE}; "
            "fix: use the original file or the documented .json/.csv form"
        ) from err
    return table


def _from_json(path: str) -> dict[int, dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
        parts = [data] if all(key.lstrip("-").isdigit() for key in data) else list(data.values())
        table = {}
        for part in parts:
            for pid, attrs in part.items():
                if not isinstance(attrs, dict):
                    raise ValueError(f"entry {pid!r} is not an object")
                table[int(pid)] = attrs
    except (ValueError, AttributeError, OSError) as err:
        raise DataError(
            f"{path}: unreadable attribute file ({err}); rule: "
            '{"<pid>": {"<attribute>": value}} optionally under "train"/"test"; fix: rewrite the file'
        ) from err
    return table


def _from_csv(path: str) -> dict[int, dict[str, Any]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        header = [name.strip() for name in rows[0]]
        if header[0] not in ("pid", "image_index"):
            raise ValueError(f"first column is {header[0]!r}, not 'pid'")
        table = {}
        for line, row in enumerate(rows[1:], start=2):
            if len(row) != len(header):
                raise ValueError(f"line {line} has {len(row)} fields, header has {len(header)}")
            table[int(row[0])] = {
                name: int(value) for name, value in zip(header[1:], row[1:], strict=True)
            }
    except (ValueError, IndexError, OSError) as err:
        raise DataError(
            f"{path}: unreadable attribute file ({err}); rule: header 'pid,<attribute>,...' then one "
            "row of integers per identity; fix: rewrite the file"
        ) from err
    return table
