"""`fedreid site audit DATA`: what a site's folder holds that should not train a shared model
(text in images, personal entities, sensitive content), before the site joins."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.common import console, fail
from fedreid.data.records import DataError


def _names(names: Path | None, allow: Path | None, default_list: bool) -> tuple[list[str], list[str]]:
    from fedreid.audit import default_names, read_names

    deny = list(default_names()) if default_list else []
    if names is not None:
        deny += read_names(names)
    return deny, list(read_names(allow)) if allow is not None else []


def audit(
    data: Annotated[Path, typer.Argument(help="The site's data folder (e.g. holding pytorch/).")],
    out: Annotated[Path | None, typer.Option(help="Report folder, outside the site folder (default: runs/audit-<site>).")] = None,
    policy: Annotated[str, typer.Option(help="report: write the report; redact: also write a copy with text blurred to <out>/redacted; block: also make `fedreid site join` refuse until findings are resolved or acknowledged.")] = "report",
    exemplars: Annotated[Path | None, typer.Option(help="Folder of sensitive exemplar images to screen the site for.")] = None,
    encoder: Annotated[Path | None, typer.Option(help="fedreid checkpoint whose ReID model embeds images for the screen (default: a model-free pixel encoder that finds copies of exemplars).")] = None,
    arch: Annotated[str | None, typer.Option(help="Architecture of --encoder when the checkpoint does not record it.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Cosine similarity at which an image matches an exemplar (default: 0.9).")] = None,
    ocr: Annotated[str, typer.Option(help="OCR engine: auto, rapidocr or tesseract.")] = "auto",
    names: Annotated[Path | None, typer.Option(help="Extra PERSON names to find, one per line.")] = None,
    allow: Annotated[Path | None, typer.Option(help="Words never reported (a brand, a street name), one per line.")] = None,
    default_names: Annotated[bool, typer.Option("--default-names/--no-default-names", help="Use the shipped list of common names.")] = True,
    ner_model: Annotated[str, typer.Option(help="spaCy model for PERSON/LOCATION/NRP: auto (one installed, else none), none, or a name/folder.")] = "auto",
    min_score: Annotated[float, typer.Option(help="Lowest Presidio score reported.")] = 0.4,
    block_level: Annotated[str, typer.Option(help="Lowest risk (low, medium, high) that blocks a join under --policy block.")] = "medium",
    correct: Annotated[bool, typer.Option("--correct/--no-correct", help="Repair OCR text (digit look-alikes, lost spaces).")] = True,
    workers: Annotated[int, typer.Option(help="Images read at once.")] = 2,
) -> None:
    """Audit a site's images before it joins: in-image text, personal entities, sensitive
    content; a Markdown/HTML/JSON report, and the policy. Nothing leaves this machine."""
    from fedreid.audit import POLICIES, EntityAnalyzer, audit_site, find_ner_model

    if policy not in POLICIES:
        fail(f"--policy {policy!r} is not one of {', '.join(POLICIES)}")
    if workers < 1:
        fail(f"--workers {workers}: pass 1 or more")
    out = out or Path("runs") / f"audit-{data.resolve().name}"
    try:
        deny, allowed = _names(names, allow, default_names)
        model = find_ner_model(ner_model)
        with console.status("loading the entity analyzer…"):
            analyzer = EntityAnalyzer(names=deny, allow=allowed, ner_model=model,
                                      min_score=min_score)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("listing images", total=None)
            result = audit_site(
                data, out, analyzer=analyzer, policy=policy, ocr_engine=ocr, correct=correct,
                exemplars=exemplars, encoder=encoder, arch=arch, threshold=threshold,
                block_level=block_level, workers=workers,
                progress=lambda stage, i, n: bar.update(task, description=stage, completed=i,
                                                        total=n))
    except (DataError, ValueError) as exc:
        fail(str(exc), code=1)
    s = result.summary
    console.print(f"[bold]site audit[/] {data}: {s.images} files in {s.seconds:.1f} s "
                  f"(OCR {s.ocr_engine}, NER {s.ner_model or 'none'}, screen {s.encoder or 'off'})",
                  highlight=False)
    table = Table("risk", "files", title="files by risk")
    risks: dict[str, int] = {}
    for finding in result.findings:
        risks[finding.risk] = risks.get(finding.risk, 0) + 1
    for level in ("high", "medium", "low", "none"):
        table.add_row(level, str(risks.get(level, 0)))
    console.print(table)
    sensitive = sum(f.sensitive for f in result.findings)
    if exemplars is not None:
        console.print(f"sensitive-content matches: {sensitive}", highlight=False)
    for note in s.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"report: {result.reports['markdown']} (also .html, .json, .png)", highlight=False)
    if result.redacted is not None:
        console.print(f"redacted copy (originals untouched): {result.redacted}", highlight=False)
    if result.block_file is not None:
        if result.blocking:
            console.print(f"[bold red]{len(result.blocking)} blocking finding(s)[/]: `fedreid site "
                          f"join --data {data}` refuses until each is redacted/deleted or "
                          f"acknowledged (template: {out / 'acknowledge.txt'}).", highlight=False)
        else:
            console.print("no blocking findings: `fedreid site join` may proceed.", highlight=False)
