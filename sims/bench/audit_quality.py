"""Site audit on planted ground truth: recall and precision per entity type, text size,
contrast and angle; throughput; false alarms on clean synthetic-8 sites; the pixel screen.

Planted set (``fedreid.audit.planted``): 256×256 canvases of two synthetic-8 person crops,
30 % clean, the rest with one or two text items (names from the shipped list and names not in
it, phone numbers, dates, plates, badge numbers) at 8/12/16/24 px, 0/±5/±10°, high or low
contrast. An item counts as found when the audit reports its entity type on that image from
the image's pixels; precision counts (image, type) pairs the audit reported that were not
planted. Every OCR engine reads the same images; entity analysis runs with and without the
OCR repairs on the same reads. Clean sites: the images of every synthetic-8 site (no text
anywhere; ``--clean-limit`` per site to sample), audited end to end (pixels, file names,
meta.json).

    .venv/bin/python -m sims.bench.audit_quality [--images 400] [--engines rapidocr,tesseract]
        [--synth /tmp/fedreid-synth8] [--clean-sites market,...] [--clean-limit 0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from fedreid.audit import EntityAnalyzer, audit_site, default_names
from fedreid.audit.correct import TextCorrector
from fedreid.audit.ocr import TextLine, engine_problem
from fedreid.audit.planted import EXPECTED_ENTITY, KINDS, PlantedImage, plant_site
from fedreid.audit.risk import grade
from fedreid.audit.run import read_images
from fedreid.audit.scan import entities_of, list_images, load_rgb
from fedreid.audit.screen import PIXEL_THRESHOLD, PixelEncoder, screen
from fedreid.data.sources import ensure_data_root
from fedreid.data.synth import SITE_KEYS

SIZES = (8, 12, 16, 24)
LEGIBLE = 12


def found_types(relpath: str, lines: list[TextLine], analyzer: EntityAnalyzer,
                fix: TextCorrector | None) -> set[str]:
    if fix is not None:
        lines = [TextLine(fix(line.text), line.confidence, line.box) for line in lines]
    return {e.type for e in entities_of(relpath, lines, [], False, analyzer.analyze)
            if e.source == "image"}


def score(planted: list[PlantedImage], found: dict[str, set[str]]) -> dict:
    """Recall per kind/size/contrast/angle, precision per reported type, risk agreement."""
    hits: dict[tuple[str, object], list[int]] = defaultdict(lambda: [0, 0])
    tp: Counter = Counter()
    fp: Counter = Counter()
    risk_agree = 0
    for image in planted:
        got = found[image.relpath]
        expected = {EXPECTED_ENTITY[item.kind] for item in image.items}
        for item in image.items:
            ok = EXPECTED_ENTITY[item.kind] in got
            for key in (("kind", item.kind), ("size", item.size), ("contrast", item.contrast),
                        ("angle", abs(item.angle)), ("kind x size", (item.kind, item.size))):
                hits[key][0] += ok
                hits[key][1] += 1
            legible = item.size >= LEGIBLE
            if legible:
                hits[("legible kind", item.kind)][0] += ok
                hits[("legible kind", item.kind)][1] += 1
                if item.kind != "PERSON_UNLISTED":
                    hits[("legible", "all")][0] += ok
                    hits[("legible", "all")][1] += 1
                    hits[("legible contrast", item.contrast)][0] += ok
                    hits[("legible contrast", item.contrast)][1] += 1
        for kind in got:
            (tp if kind in expected else fp)[kind] += 1
        risk_agree += grade(got) == grade(expected)
    return {"hits": hits, "tp": tp, "fp": fp, "risk_agree": risk_agree / len(planted)}


def _rate(pair: list[int]) -> str:
    return f"{pair[0] / pair[1]:.3f} ({pair[0]}/{pair[1]})" if pair[1] else "-"


def recall_table(title: str, results: dict[str, dict], axis: str, keys) -> Table:
    table = Table(title=title)
    table.add_column(axis)
    for name in results:
        table.add_column(name, justify="right")
    for key in keys:
        table.add_row(str(key), *[_rate(r["hits"][(axis, key)]) for r in results.values()])
    return table


def kind_size_table(name: str, result: dict) -> Table:
    table = Table(title=f"recall by kind and text size (px), {name}")
    table.add_column("kind")
    for size in SIZES:
        table.add_column(f"{size} px", justify="right")
    for kind in KINDS:
        table.add_row(kind, *[_rate(result["hits"][("kind x size", (kind, size))]) for size in SIZES])
    return table


def precision_table(results: dict[str, dict]) -> Table:
    table = Table(title="precision per reported type ((image, type) pairs)")
    table.add_column("type")
    for name in results:
        table.add_column(name, justify="right")
    kinds = sorted({k for r in results.values() for k in (r["tp"] | r["fp"])})
    for kind in [*kinds, "all"]:
        cells = []
        for r in results.values():
            t = sum(r["tp"].values()) if kind == "all" else r["tp"][kind]
            f = sum(r["fp"].values()) if kind == "all" else r["fp"][kind]
            cells.append(f"{t / (t + f):.3f} ({t}/{t + f})" if t + f else "-")
        table.add_row(kind, *cells)
    table.add_row("risk level = planted", *[f"{r['risk_agree']:.3f}" for r in results.values()])
    return table


def screen_check(planted_dir: Path, planted: list[PlantedImage], count: int) -> dict:
    """Pixel screen: copies (resized 0.8, JPEG 70, 4 px crop, +10 % brightness) of ``count``
    planted images as exemplars, against the whole planted set."""
    paths = [planted_dir / p.relpath for p in planted]
    images = [load_rgb(p) for p in paths]
    copies = []
    for image in images[:count]:
        picture = Image.fromarray(image)
        w, h = picture.size
        picture = picture.resize((int(w * 0.8), int(h * 0.8))).crop((4, 4, int(w * 0.8) - 4, int(h * 0.8) - 4))
        picture = Image.eval(picture, lambda v: min(255, int(v * 1.1)))
        with tempfile.SpooledTemporaryFile() as buffer:
            picture.save(buffer, "JPEG", quality=70)
            buffer.seek(0)
            copies.append(np.asarray(Image.open(buffer).convert("RGB")))
    encoder = PixelEncoder()
    feats, ex = encoder.embed(images), encoder.embed(copies)
    sims = feats @ ex.T
    own = np.array([sims[j, j] for j in range(count)])
    others = np.array([np.delete(sims[:, j], j).max() for j in range(count)])
    result = screen(feats, ex, threshold=PIXEL_THRESHOLD)
    true_hits = sum(any(j == i for j, _ in m) for i, m in enumerate(result.matches[:count]))
    false_hits = sum(len([j for j, _ in m if j != i]) for i, m in enumerate(result.matches))
    return {"copy_min": float(own.min()), "copy_median": float(np.median(own)),
            "other_max": float(others.max()), "other_median": float(np.median(others)),
            "found": true_hits, "count": count, "false": false_hits, "images": len(images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400, help="planted images")
    parser.add_argument("--engines", default="rapidocr,tesseract", help="OCR engines to compare")
    parser.add_argument("--synth", type=Path, default=Path(tempfile.gettempdir()) / "fedreid-synth8")
    parser.add_argument("--clean-sites", default=",".join(SITE_KEYS),
                        help="synthetic-8 sites audited for false alarms")
    parser.add_argument("--clean-limit", type=int, default=0,
                        help="audit at most this many images per clean site (0 = all)")
    parser.add_argument("--repeats", type=int, default=3, help="throughput repeats (median)")
    parser.add_argument("--throughput-images", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = Console()
    clean_sites = [s for s in args.clean_sites.split(",") if s]
    unknown = sorted(set(clean_sites) - set(SITE_KEYS))
    if unknown:
        parser.error(f"--clean-sites: {unknown} are not synthetic-8 sites; choose among {', '.join(SITE_KEYS)}")
    with console.status(f"synthetic-8 in {args.synth} (generated when absent)…"):
        synth = ensure_data_root(args.synth, sites=sorted({"market", *clean_sites}), synth_scale=1.0,
                                 synth_seed=0)
    base_paths = list_images(synth / "market" / "pytorch" / "train_all")[::7]
    bases = [load_rgb(synth / "market" / "pytorch" / "train_all" / p) for p in base_paths]
    engines = []
    for name in args.engines.split(","):
        problem = engine_problem(name)
        if problem:
            console.print(f"[yellow]skipping OCR engine {name}: {problem}[/]")
        else:
            engines.append(name)
    with console.status("building the entity analyzer…"):
        analyzer = EntityAnalyzer(names=default_names(), ner_model=None)
    fix = TextCorrector(analyzer.names)
    results: dict[str, dict] = {}
    speed_rows = []
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        site = Path(tmp) / "planted"
        planted = plant_site(bases, site, n_images=args.images, seed=args.seed)
        console.print(f"planted {len(planted)} images ({sum(not p.items for p in planted)} clean, "
                      f"{sum(len(p.items) for p in planted)} text items) from "
                      f"{len(bases)} market crops; canvas 256x256")
        subset = [p.relpath for p in planted[: args.throughput_images]]
        for engine in engines:
            with console.status(f"{engine}: reading {len(planted)} planted images…"):
                reads = read_images(site, [p.relpath for p in planted], ocr_engine=engine,
                                    min_confidence=0.5, workers=args.workers, progress=None)
            lines = {r.relpath: r.lines for r in reads}
            for correct in (True, False):
                found = {p: found_types(p, lines[p], analyzer, fix if correct else None)
                         for p in lines}
                results[f"{engine}{'' if correct else ' (no repair)'}"] = score(planted, found)
            ocr_times, analysis_times = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                sub = read_images(site, subset, ocr_engine=engine, min_confidence=0.5,
                                  workers=args.workers, progress=None)
                ocr_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                for r in sub:
                    found_types(r.relpath, r.lines, analyzer, fix)
                analysis_times.append(time.perf_counter() - start)
            ocr_s, analysis_s = statistics.median(ocr_times), statistics.median(analysis_times)
            speed_rows.append((engine, len(subset), ocr_s, analysis_s))
        screen_result = screen_check(site, planted, count=min(20, len(planted)))

    console.print(recall_table(f"recall on legible text (>= {LEGIBLE} px; names not in the list "
                               "excluded)", results, "legible", ["all"]))
    console.print(recall_table("legible recall by contrast", results, "legible contrast",
                               ["high", "low"]))
    console.print(recall_table("legible recall by kind", results, "legible kind", KINDS))
    console.print(recall_table("recall by text size (px), all kinds", results, "size", SIZES))
    console.print(recall_table("recall by kind, all sizes", results, "kind", KINDS))
    if results:
        first = next(iter(results))
        console.print(kind_size_table(first, results[first]))
    console.print(recall_table("recall by angle (degrees)", results, "angle", (0.0, 5.0, 10.0)))
    console.print(precision_table(results))

    table = Table(title=f"throughput, {args.workers} worker thread(s), median of {args.repeats}")
    for column in ("engine", "images", "OCR s", "analysis s", "images/s"):
        table.add_column(column, justify="right")
    for engine, n, ocr_s, analysis_s in speed_rows:
        table.add_row(engine, str(n), f"{ocr_s:.1f}", f"{analysis_s:.2f}",
                      f"{n / (ocr_s + analysis_s):.2f}")
    console.print(table)

    s = screen_result
    console.print(f"pixel screen: {s['found']}/{s['count']} altered copies found at threshold "
                  f"{PIXEL_THRESHOLD}; {s['false']} false matches among {s['images']} images; "
                  f"copy similarity min {s['copy_min']:.3f} (median {s['copy_median']:.3f}); "
                  f"best other image max {s['other_max']:.3f} (median {s['other_median']:.3f})")

    table = Table(title=f"false alarms on clean synthetic-8 sites ({engines[0] if engines else 'auto'})")
    for column in ("site", "images", "with any finding", "rate", "entities by type/source",
                   "images/s"):
        table.add_column(column)
    for name in clean_sites:
        folder = synth / name
        with tempfile.TemporaryDirectory(prefix="audit-clean-") as out:
            target = folder
            if args.clean_limit:
                target = Path(out) / "subset" / name
                for relpath in list_images(folder)[: args.clean_limit]:
                    (target / relpath).parent.mkdir(parents=True, exist_ok=True)
                    (target / relpath).write_bytes((folder / relpath).read_bytes())
                if (folder / "meta.json").is_file():
                    (target / "meta.json").write_bytes((folder / "meta.json").read_bytes())
            with console.status(f"auditing clean site {name}…"):
                start = time.perf_counter()
                result = audit_site(target, Path(out) / "report", analyzer=analyzer,
                                    ocr_engine=engines[0] if engines else "auto",
                                    workers=args.workers)
                seconds = time.perf_counter() - start
        flagged = [f for f in result.findings if f.entities]
        kinds = Counter(f"{e.type}/{e.source}" for f in result.findings for e in f.entities)
        table.add_row(name, str(len(result.findings)), str(len(flagged)),
                      f"{len(flagged) / len(result.findings):.4f}",
                      ", ".join(f"{k} {v}" for k, v in kinds.most_common()) or "-",
                      f"{len(result.findings) / seconds:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
