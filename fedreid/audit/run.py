"""The whole audit of one site folder: read, analyse, screen, report, apply the policy.

OCR runs in ``workers`` threads, one engine per thread (ONNX Runtime and the tesseract
process release the GIL); entity analysis runs in the calling thread. Everything is written
below ``out`` (and, for ``block``, one record in the site's ``.fedreid-audit/``); nothing is
sent anywhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fedreid.audit import gate
from fedreid.audit.correct import TextCorrector
from fedreid.audit.entities import EntityAnalyzer
from fedreid.audit.ocr import TextLine, join_lines, make_ocr, resolve_engine
from fedreid.audit.redact import write_redacted_image, write_redacted_meta
from fedreid.audit.report import AuditSummary, write_report
from fedreid.audit.risk import LEVELS, at_least
from fedreid.audit.scan import (
    META_ITEM,
    Findings,
    embedded_metadata,
    entities_of,
    file_digest,
    flatten_strings,
    image_meta_entry,
    list_images,
    load_rgb,
    read_site_meta,
)
from fedreid.audit.screen import PixelEncoder, ReidEncoder, embed_files, screen

POLICIES = ("report", "redact", "block")
Progress = Callable[[str, int, int], None]


@dataclass
class AuditResult:
    """Findings of every audited item and what the policy wrote."""

    findings: list[Findings]
    blocking: list[Findings]
    reports: dict[str, Path]
    redacted: Path | None
    block_file: Path | None
    summary: AuditSummary


@dataclass(frozen=True)
class _Read:
    relpath: str
    digest: str
    lines: list[TextLine]
    metadata: list[str]
    has_gps: bool


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def check_paths(site: Path, out: Path, exemplars: Path | None) -> None:
    """Reject report or exemplar folders inside the site: the next audit (and training) would
    read thumbnails and redacted copies as site images."""
    if not site.is_dir():
        raise ValueError(f"DATA {site}: not a folder; pass the site's data folder")
    if _inside(out, site):
        raise ValueError(f"--out {out} is inside the site folder {site}; its thumbnails and "
                         "redacted copies would be read as site images: pick a folder outside")
    if exemplars is not None:
        if not exemplars.is_dir():
            raise ValueError(f"--exemplars {exemplars}: not a folder; pass a folder of images")
        if _inside(exemplars, site):
            raise ValueError(f"--exemplars {exemplars} is inside the site folder {site}: move "
                             "the exemplars out, or they are audited as site images")


def read_images(site: Path, relpaths: list[str], *, ocr_engine: str, min_confidence: float,
                workers: int, progress: Progress | None) -> list[_Read]:
    """OCR, digest and embedded metadata of every image, ``workers`` at a time, in order."""
    local = threading.local()

    def one(relpath: str) -> _Read:
        if not hasattr(local, "ocr"):
            local.ocr = make_ocr(ocr_engine, min_confidence=min_confidence)
        path = site / relpath
        lines = join_lines(local.ocr.read(load_rgb(path)))
        metadata, has_gps = embedded_metadata(path)
        return _Read(relpath, file_digest(path), lines, metadata, has_gps)

    reads: list[_Read] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for read in pool.map(one, relpaths):
            reads.append(read)
            if progress:
                progress("reading text", len(reads), len(relpaths))
    return reads


def audit_site(
    site: Path,
    out: Path,
    *,
    analyzer: EntityAnalyzer,
    policy: str = "report",
    ocr_engine: str = "auto",
    min_confidence: float = 0.5,
    correct: bool = True,
    exemplars: Path | None = None,
    encoder: Path | None = None,
    arch: str | None = None,
    threshold: float | None = None,
    block_level: str = "medium",
    workers: int = 2,
    progress: Progress | None = None,
) -> AuditResult:
    """Audit every image (and ``meta.json``) of ``site``; write the report into ``out``.

    ``encoder``: a fedreid checkpoint for the screen (default: the model-free pixel encoder);
    ``threshold``: the screen's cosine threshold (default: the encoder's). ``block_level``:
    the lowest risk that blocks a join under ``policy="block"``.
    """
    if policy not in POLICIES:
        raise ValueError(f"--policy {policy!r} is not one of {', '.join(POLICIES)}")
    if block_level not in LEVELS[1:]:
        raise ValueError(f"--block-level {block_level!r} is not one of {', '.join(LEVELS[1:])}")
    check_paths(site, out, exemplars)
    ocr_engine = resolve_engine(ocr_engine)  # fails here, not in a worker thread
    started = time.perf_counter()
    notes: list[str] = []
    relpaths = list_images(site)
    reads = read_images(site, relpaths, ocr_engine=ocr_engine, min_confidence=min_confidence,
                        workers=workers, progress=progress)
    fix = TextCorrector(analyzer.names) if correct else None
    meta = read_site_meta(site)
    findings = []
    for read in reads:
        lines = ([TextLine(fix(t.text), t.confidence, t.box) for t in read.lines] if fix
                 else read.lines)
        entry = image_meta_entry(meta, read.relpath)
        metadata = read.metadata + (flatten_strings(entry) if entry is not None else [])
        findings.append(Findings(read.relpath, read.digest, lines,
                                 entities_of(read.relpath, lines, metadata, read.has_gps,
                                             analyzer.analyze)))
    if meta:
        rest = {key: value for key, value in meta.items() if key != "images"}
        meta_entities = [e for line in flatten_strings(rest)
                         for e in analyzer.analyze(line, "metadata")]
        findings.append(Findings(META_ITEM, file_digest(site / META_ITEM), [], meta_entities))

    nearest: dict[str, list[tuple[str, float]]] = {}
    encoder_name = None
    if exemplars is not None:
        model = ReidEncoder(encoder, arch=arch) if encoder is not None else PixelEncoder()
        threshold = model.default_threshold if threshold is None else threshold
        encoder_name = f"{model.name} ({encoder})" if encoder is not None else model.name
        names = list_images(exemplars)
        if not names:
            raise ValueError(f"--exemplars {exemplars}: no image files (.jpg .jpeg .png .bmp)")
        ex = embed_files(model, [exemplars / n for n in names], load_rgb)
        feats = embed_files(model, [site / p for p in relpaths], load_rgb,
                            progress=(lambda i, n: progress("screening", i, n)) if progress else None)
        result = screen(feats, ex, threshold=threshold)
        for finding, hits in zip(findings, result.matches, strict=False):
            finding.matches = [(names[j], sim) for j, sim in hits]
        nearest = {names[j]: [(relpaths[i], sim) for i, sim in hits]
                   for j, hits in enumerate(result.nearest)}
    elif encoder is not None:
        notes.append("--encoder was given without --exemplars: no content screen ran")

    blocking = [f for f in findings if f.sensitive or (f.entities and at_least(f.risk, block_level))]
    existing = gate.block_path(site)
    if policy != "block" and existing.is_file():
        notes.append(f"a block record of an earlier audit stays in force: {existing}")
    redacted = block_file = None
    if policy == "redact":
        redacted = out / "redacted"
        for i, (finding, relpath) in enumerate(zip(findings, relpaths, strict=False)):
            write_redacted_image(site / relpath, redacted / relpath, finding.lines,
                                 strip_metadata=any(e.source == "metadata" for e in finding.entities))
            if progress:
                progress("redacting", i + 1, len(relpaths))
        if meta:
            write_redacted_meta(site / META_ITEM, redacted / META_ITEM,
                                [e for f in findings for e in f.entities if e.source == "metadata"])
    summary = AuditSummary(site=site.name, policy=policy, ocr_engine=ocr_engine,
                           ner_model=analyzer.ner_model, encoder=encoder_name,
                           threshold=threshold if exemplars is not None else None,
                           images=len(findings), seconds=time.perf_counter() - started,
                           notes=notes)
    reports = write_report(out, site, summary, findings, nearest)
    if policy == "block":
        audited = relpaths + ([META_ITEM] if meta else [])
        block_file = gate.write_block(site, blocking, audited, block_level=block_level,
                                      report=reports["markdown"])
        (out / "acknowledge.txt").write_text(
            "# Copy the lines you accept into " + str(gate.ack_path(site)) + ", uncommented, "
            "with a reason after ' -- '.\n" + "".join(f"# {gate.ack_line(f)}\n" for f in blocking),
            encoding="utf-8")
    return AuditResult(findings, blocking, reports, redacted, block_file, summary)
