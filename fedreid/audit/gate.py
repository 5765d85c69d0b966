"""Policy ``block``: `fedreid site join` refuses until every blocking finding is resolved or
acknowledged.

``fedreid site audit DATA --policy block`` writes ``DATA/.fedreid-audit/block.json``: the
images it audited and its blocking findings (risk at or above ``--block-level``, or a match
with a sensitive exemplar), each with the content digest of the file it saw. Nothing else in
the site folder is touched. :func:`join_blockers` reads it back. A finding is settled when

- **resolved**: the file is gone (deleted, or replaced by a redacted copy under another
  name), or
- **acknowledged**: a line of ``DATA/.fedreid-audit/acknowledged.txt`` names it::

      # <digest> <path> -- <reason>     ('#' starts a comment; the reason is required)
      4f2a...e1 pytorch/train_all/0007/0007_c1s1_000151_00.jpg -- shop logo, not a name (A.B.)

  The digest ties the acknowledgement to the bytes that were reviewed: an edited file needs a
  new audit. The audit writes these lines, commented out, to ``acknowledge.txt`` in its
  report folder; copy the ones you accept.

Joining is also refused while a flagged file was changed after the audit, or images were
added that no audit saw. A site that never ran ``--policy block`` is not gated.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

from fedreid.audit.scan import AUDIT_DIR, META_ITEM, Findings, file_digest, list_images

BLOCK_FILE = "block.json"
ACK_FILE = "acknowledged.txt"
FORMAT = 1


def block_path(site: Path) -> Path:
    return Path(site) / AUDIT_DIR / BLOCK_FILE


def ack_path(site: Path) -> Path:
    return Path(site) / AUDIT_DIR / ACK_FILE


def ack_line(finding: Findings, reason: str = "") -> str:
    """The acknowledgement line for ``finding`` (``reason`` left for the operator to write)."""
    return f"{finding.digest} {finding.relpath} -- {reason}"


def write_block(site: Path, blocking: Sequence[Findings], audited: Sequence[str], *,
                block_level: str, report: Path) -> Path:
    """Record what the next `site join` must check; returns the file written."""
    path = block_path(site)
    try:
        path.parent.mkdir(exist_ok=True)
        record = {
            "format": FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "block_level": block_level,
            "report": str(report),
            "audited": list(audited),
            "findings": [{"path": f.relpath, "digest": f.digest, "risk": f.risk,
                          "sensitive": f.sensitive,
                          "types": sorted({e.type for e in f.entities})} for f in blocking],
        }
        path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    except OSError as err:
        raise ValueError(f"{path}: cannot write the block record ({err}); --policy block keeps "
                         "it in the site folder for `site join` to read: make the folder "
                         "writable, or use --policy report") from err
    return path


def read_acknowledged(path: Path) -> tuple[set[tuple[str, str]], list[str]]:
    """``{(digest, path)}`` acknowledged in ``path``, and one problem per malformed line."""
    if not path.is_file():
        return set(), []
    accepted: set[tuple[str, str]] = set()
    problems = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        head, *rest = re.split(r"\s+--\s*", line, maxsplit=1)
        parts = head.split(maxsplit=1)
        if not rest or len(parts) != 2 or not rest[0].strip():
            problems.append(f"{path}:{number}: {raw!r} is not '<digest> <path> -- <reason>' "
                            "with a reason; fix the line or delete it")
            continue
        accepted.add((parts[0], parts[1].strip()))
    return accepted, problems


def join_blockers(site: Path | str) -> list[str]:
    """Why `fedreid site join --data site` must refuse; empty when it may join."""
    site = Path(site)
    path = block_path(site)
    if not path.is_file():
        return []
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        findings, audited = record["findings"], set(record["audited"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        return [f"{path}: unreadable block record ({err}); rerun `fedreid site audit {site} "
                "--policy block`"]
    accepted, blockers = read_acknowledged(ack_path(site))
    for item in findings:
        relpath, digest = item["path"], item["digest"]
        file = site / relpath
        if not file.is_file():
            continue  # resolved: deleted or moved away
        what = ", ".join(item["types"] + (["sensitive-content match"] if item["sensitive"] else []))
        if file_digest(file) != digest:
            blockers.append(f"{relpath}: changed since the audit ({what}); rerun `fedreid site "
                            "audit` on it")
        elif (digest, relpath) not in accepted:
            blockers.append(f"{relpath}: risk {item['risk']} ({what}); redact or delete it, or "
                            f"acknowledge it in {ack_path(site)}")
    current = list_images(site)
    if (site / META_ITEM).is_file():
        current.append(META_ITEM)
    added = [p for p in current if p not in audited]
    if added:
        blockers.append(f"{len(added)} file(s) added since the audit (first: {added[0]}); rerun "
                        f"`fedreid site audit {site} --policy block`")
    return blockers
