"""The audit's report, written only to the site's own report folder: ``audit.json`` (every
finding), ``audit.md`` and ``audit.html`` (counts, then one row per flagged image with a
thumbnail that outlines the text read), ``audit.png`` (a chart of the counts) and
``thumbs/``. The report quotes the text found, so it is as private as the images."""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from fedreid.audit.risk import LEVELS
from fedreid.audit.scan import Findings

THUMB_HEIGHT = 160


@dataclass
class AuditSummary:
    """What the audit was and how it ran, for the report's header."""

    site: str
    policy: str
    ocr_engine: str
    ner_model: str | None
    encoder: str | None
    threshold: float | None
    images: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def flagged(findings: Sequence[Findings]) -> list[Findings]:
    """Items with any entity or a sensitive-content match, worst risk first."""
    hits = [f for f in findings if f.entities or f.sensitive]
    return sorted(hits, key=lambda f: (-LEVELS.index(f.risk), not f.sensitive, f.relpath))


def counts(findings: Sequence[Findings]) -> dict[str, Any]:
    """Entities and images per entity type, entities per source, images per risk level."""
    entities = Counter(e.type for f in findings for e in f.entities)
    images = Counter(t for f in findings for t in {e.type for e in f.entities})
    sources = Counter(e.source for f in findings for e in f.entities)
    risks = Counter(f.risk for f in findings)
    return {
        "entities_by_type": dict(entities.most_common()),
        "images_by_type": dict(images.most_common()),
        "entities_by_source": dict(sources.most_common()),
        "images_by_risk": {level: risks.get(level, 0) for level in LEVELS},
        "sensitive_images": sum(f.sensitive for f in findings),
    }


def _thumbnail(site: Path, finding: Findings, target: Path) -> None:
    with Image.open(site / finding.relpath) as im:
        picture = im.convert("RGB")
    draw = ImageDraw.Draw(picture)
    for line in finding.lines:
        draw.rectangle(line.box, outline=(255, 0, 0), width=max(1, picture.height // 128))
    scale = THUMB_HEIGHT / picture.height
    picture.resize((max(1, round(picture.width * scale)), THUMB_HEIGHT)).save(target)


def _chart(numbers: dict[str, Any], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    by_type = numbers["images_by_type"]
    left.barh(list(by_type)[::-1] or ["(none)"], list(by_type.values())[::-1] or [0],
              color="#c0392b")
    left.set_xlabel("images")
    left.set_title("images per entity type")
    risks = numbers["images_by_risk"]
    right.bar(list(risks), list(risks.values()), color=["#95a5a6", "#f1c40f", "#e67e22", "#c0392b"])
    right.set_yscale("symlog")
    right.set_title("images per risk level")
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)


def _row_cells(finding: Findings) -> tuple[str, str, str]:
    entities = "; ".join(f"{e.type} '{e.text}' ({e.source})" for e in finding.entities)
    matches = "; ".join(f"{name} {sim:.3f}" for name, sim in finding.matches)
    return finding.risk, entities or "-", matches or "-"


def _markdown(summary: AuditSummary, numbers: dict[str, Any], rows: list[Findings],
              thumbs: dict[str, str], nearest: dict[str, list[tuple[str, float]]]) -> str:
    out = [f"# Site audit: {summary.site}", "",
           f"{summary.images} files audited in {summary.seconds:.1f} s; OCR {summary.ocr_engine}; "
           f"NER {summary.ner_model or 'none (pattern recognisers and name list)'}; screen "
           f"{summary.encoder or 'off'}"
           + (f" (threshold {summary.threshold})" if summary.encoder else "")
           + f"; policy {summary.policy}.", ""]
    out += [f"- {note}" for note in summary.notes] + ([""] if summary.notes else [])
    out += ["## Counts", "", "| entity type | entities | images |", "|---|---:|---:|"]
    for kind, n in numbers["entities_by_type"].items():
        out.append(f"| {kind} | {n} | {numbers['images_by_type'][kind]} |")
    out += ["", "| risk | images |", "|---|---:|"]
    out += [f"| {level} | {n} |" for level, n in numbers["images_by_risk"].items()]
    out += ["", f"Sensitive-content matches: {numbers['sensitive_images']} image(s).", "",
            "![counts](audit.png)", "", "## Flagged files", ""]
    if not rows:
        out.append("None.")
    else:
        out += ["| file | thumbnail | risk | entities | exemplar matches |", "|---|---|---|---|---|"]
        for finding in rows:
            risk, entities, matches = (cell.replace("|", "\\|") for cell in _row_cells(finding))
            thumb = f"![]({thumbs[finding.relpath]})" if finding.relpath in thumbs else ""
            out.append(f"| `{finding.relpath}` | {thumb} | {risk} | {entities} | {matches} |")
    if nearest:
        out += ["", "## Nearest site images per exemplar", "", "| exemplar | nearest (cosine) |",
                "|---|---|"]
        for name, hits in nearest.items():
            out.append(f"| {name} | " + ", ".join(f"`{p}` {s:.3f}" for p, s in hits) + " |")
    return "\n".join(out) + "\n"


def _html(summary: AuditSummary, markdown_counts: dict[str, Any], rows: list[Findings],
          thumbs: dict[str, str]) -> str:
    esc = html.escape
    body = [f"<h1>Site audit: {esc(summary.site)}</h1>",
            f"<p>{summary.images} files; policy {esc(summary.policy)}; OCR "
            f"{esc(summary.ocr_engine)}</p>", '<img src="audit.png" alt="counts">',
            "<table border=1 cellpadding=4><tr><th>file</th><th>thumbnail</th><th>risk</th>"
            "<th>entities</th><th>exemplar matches</th></tr>"]
    for finding in rows:
        risk, entities, matches = _row_cells(finding)
        thumb = (f'<img src="{esc(thumbs[finding.relpath])}">' if finding.relpath in thumbs
                 else "")
        body.append(f"<tr><td><code>{esc(finding.relpath)}</code></td><td>{thumb}</td>"
                    f"<td>{risk}</td><td>{esc(entities)}</td><td>{esc(matches)}</td></tr>")
    body.append("</table>")
    return ("<!doctype html><meta charset=utf-8><title>site audit</title>\n"
            + "\n".join(body) + "\n")


def write_report(out: Path, site: Path, summary: AuditSummary, findings: Sequence[Findings],
                 nearest: dict[str, list[tuple[str, float]]]) -> dict[str, Path]:
    """Write the report files into ``out``; returns them by kind."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "thumbs").mkdir(exist_ok=True)
    rows = flagged(findings)
    numbers = counts(findings)
    thumbs: dict[str, str] = {}
    for index, finding in enumerate(rows):
        if finding.relpath.lower().endswith((".jpg", ".jpeg", ".png", ".bmp")):
            name = f"thumbs/{index:05d}.png"
            _thumbnail(site, finding, out / name)
            thumbs[finding.relpath] = name
    _chart(numbers, out / "audit.png")
    record = {
        "site": summary.site, "policy": summary.policy, "ocr_engine": summary.ocr_engine,
        "ner_model": summary.ner_model, "encoder": summary.encoder,
        "threshold": summary.threshold, "files": summary.images,
        "seconds": round(summary.seconds, 2), "notes": summary.notes, **numbers,
        "findings": [f.to_json() for f in rows],
        "nearest": {name: [{"path": p, "similarity": round(s, 4)} for p, s in hits]
                    for name, hits in nearest.items()},
    }
    paths = {"json": out / "audit.json", "markdown": out / "audit.md", "html": out / "audit.html",
             "chart": out / "audit.png"}
    paths["json"].write_text(json.dumps(record, indent=1), encoding="utf-8")
    paths["markdown"].write_text(_markdown(summary, numbers, rows, thumbs, nearest),
                                 encoding="utf-8")
    paths["html"].write_text(_html(summary, numbers, rows, thumbs), encoding="utf-8")
    return paths
