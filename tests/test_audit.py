"""Site audit: risk grading, OCR repairs, entities, the join gate, the screen, redaction, and
the whole audit on a handful of planted images (with the network cut off)."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image, ImageDraw, ImageFont
from typer.testing import CliRunner

from fedreid.audit import EntityAnalyzer, audit_site, default_names, join_blockers
from fedreid.audit.correct import TextCorrector
from fedreid.audit.entities import Entity
from fedreid.audit.gate import ack_line, ack_path, write_block
from fedreid.audit.ocr import TextLine, engine_problem, join_lines, make_ocr
from fedreid.audit.planted import EXPECTED_ENTITY, PlantedText, draw_items, plant_site
from fedreid.audit.redact import blur_boxes
from fedreid.audit.risk import at_least, grade
from fedreid.audit.scan import Findings, file_digest, list_images
from fedreid.audit.screen import PixelEncoder, ReidEncoder, screen


def _bases(n: int = 8) -> list[np.ndarray]:
    """Person-sized crops: a vertical gradient with a few coloured blocks (a body, a bag) at
    random places, each crop its own layout."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        img = np.linspace(90, 170, 128, dtype=np.float32)[:, None, None] * np.ones((1, 64, 3))
        for _ in range(3):
            y, x = int(rng.integers(0, 96)), int(rng.integers(0, 48))
            img[y : y + int(rng.integers(16, 40)), x : x + int(rng.integers(8, 24))] = rng.integers(30, 220, 3)
        img += rng.normal(0, 4, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def analyzer() -> EntityAnalyzer:
    return EntityAnalyzer(names=default_names(), ner_model=None)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, list]:
    """Eight legible images (24 px, upright, high contrast): one per kind, two clean."""
    site = tmp_path_factory.mktemp("planted") / "site"
    rng = np.random.default_rng(5)
    kinds = ["PERSON", "PHONE_NUMBER", "DATE_TIME", "LICENSE_PLATE", "BADGE_ID", "PERSON", None,
             None]
    texts = {"PERSON": ["Anna Smith", "DAVID GARCIA"], "PHONE_NUMBER": ["020 7946 0123"],
             "DATE_TIME": ["12/03/2024"], "LICENSE_PLATE": ["AB51 CDE"], "BADGE_ID": ["ID 482913"]}
    truth = []
    for index, kind in enumerate(kinds):
        canvas = Image.fromarray(_bases()[index]).resize((256, 256))
        items: tuple = ()
        if kind is not None:
            text = texts[kind][index // 5 if kind == "PERSON" else 0]
            items = draw_items(canvas, [PlantedText(kind, text, 24, 0.0, "high")], rng)
        relpath = f"pytorch/train_all/{index + 1:04d}/{index + 1:04d}_c1s1_{index:06d}_00.jpg"
        (site / relpath).parent.mkdir(parents=True, exist_ok=True)
        canvas.save(site / relpath, quality=92)
        truth.append((relpath, items))
    return site, truth


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"the audit tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ---- risk grading ------------------------------------------------------------------------
@pytest.mark.parametrize(("types", "level"), [
    ((), "none"),
    (("DATE_TIME",), "low"),
    (("URL", "DATE_TIME"), "medium"),
    (("PERSON",), "medium"),
    (("LICENSE_PLATE",), "medium"),
    (("PERSON", "DATE_TIME"), "high"),
    (("ID_NUMBER", "PERSON"), "high"),
    (("PERSON", "PERSON"), "medium"),
])
def test_grade_follows_cooccurrence(types, level):
    assert grade(types) == level


def test_at_least_orders_levels_and_rejects_unknown():
    assert at_least("high", "medium") and at_least("medium", "medium")
    assert not at_least("low", "medium")
    with pytest.raises(ValueError, match="not one of"):
        at_least("severe", "low")


# ---- OCR text repairs --------------------------------------------------------------------
def test_corrector_repairs_digits_spaces_and_width_but_keeps_plates():
    fix = TextCorrector(["James", "Costa", "Wickersham"])
    assert fix("555-O147") == "555-0147"
    assert fix("（212）") == "(212)"
    assert fix("JAMESCOSTA") == "JAMES COSTA"
    assert fix("maWickersham") == "ma Wickersham"
    assert fix("AB51 CDE") == "AB51 CDE"  # two letters: a plate, not a misread number
    assert fix("EXIT") == "EXIT"


def test_join_lines_merges_pieces_of_one_line_only():
    pieces = [TextLine("415 555 0724", 0.9, (47, 56, 150, 76)), TextLine("+1", 0.95, (28, 58, 44, 74)),
              TextLine("Sharon Perez", 0.98, (68, 10, 235, 36))]
    merged = {line.text: line for line in join_lines(pieces)}
    assert set(merged) == {"+1 415 555 0724", "Sharon Perez"}
    assert merged["+1 415 555 0724"].box == (28, 56, 150, 76)
    assert merged["+1 415 555 0724"].confidence == 0.9


# ---- entities ----------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "kind"), [
    ("Anna Smith", "PERSON"), ("+44 20 7946 0958", "PHONE_NUMBER"), ("(212) 555-0147", "PHONE_NUMBER"),
    ("12/03/2024", "DATE_TIME"), ("12 Mar 2024", "DATE_TIME"), ("16NOV1995", "DATE_TIME"),
    ("AB51 CDE", "LICENSE_PLATE"), ("AB-123-CD", "LICENSE_PLATE"), ("STAFF ID 48213", "ID_NUMBER"),
    ("john.doe@example.org", "EMAIL_ADDRESS"), ("www.example.com", "URL"),
])
def test_analyzer_finds_each_type_offline(analyzer, offline, text, kind):
    found = analyzer.analyze(text, "image")
    assert [e.type for e in found] == [kind]
    assert found[0].text == text


@pytest.mark.parametrize("text", ["0001 c1s1 000151 00", "pytorch train all 0134 0134 c2s1 062759 00",
                                  "cam 0 0001 000", "viewpoint: front", "EXIT", "zones"])
def test_analyzer_is_quiet_on_layout_names_and_plain_words(analyzer, text):
    assert analyzer.analyze(text, "file name") == []


def test_the_generators_own_metadata_raises_no_alarm(analyzer):
    """synthetic-8's meta.json explains its attribute truth; the audit must not flag it."""
    from fedreid.data.synth.generate import TRUTH_DEFINITION

    assert analyzer.analyze(TRUTH_DEFINITION, "metadata") == []


def test_allow_list_and_custom_names(offline):
    custom = EntityAnalyzer(names=["Quimby"], allow=["anna"], ner_model=None)
    assert [e.text for e in custom.analyze("Anna Quimby", "image")] == ["Quimby"]


def test_exif_text_and_gps_are_audited_and_stripped_by_redaction(analyzer, tmp_path):
    site = tmp_path / "site"
    relpath = "pytorch/train_all/0001/0001_c1s1_000001_00.jpg"
    (site / relpath).parent.mkdir(parents=True)
    exif = Image.Exif()
    exif[315] = "Anna Smith"  # Artist
    exif.get_ifd(0x8825)[1] = "N"  # a GPS position
    Image.fromarray(_bases(1)[0]).save(site / relpath, exif=exif)
    result = audit_site(site, tmp_path / "out", analyzer=analyzer, policy="redact", workers=1)
    (finding,) = result.findings
    assert {(e.type, e.source) for e in finding.entities} == {("PERSON", "metadata"),
                                                               ("LOCATION", "metadata")}
    assert finding.risk == "high"
    with Image.open(tmp_path / "out" / "redacted" / relpath) as copy:
        assert not dict(copy.getexif())



def test_names_in_file_names_and_meta_json_are_found_with_their_source(analyzer, offline, tmp_path):
    site = tmp_path / "site"
    named = "pytorch/train_all/0001/Anna_Smith_0001_c1s1_000001_00.jpg"
    plain = "pytorch/train_all/0002/0002_c1s1_000002_00.jpg"
    for relpath in (named, plain):
        (site / relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((64, 32, 3), 127, np.uint8)).save(site / relpath)
    meta = {"images": {plain.removeprefix("pytorch/"): {"note": "call 0151 496 0123"}},
            "identities": {"0001": {"contact": "anna.smith@example.org"}}}
    (site / "meta.json").write_text(json.dumps(meta))
    result = audit_site(site, tmp_path / "out", analyzer=analyzer, workers=1)
    found = {f.relpath: {(e.type, e.source) for e in f.entities} for f in result.findings}
    assert ("PERSON", "file name") in found[named]
    assert ("PHONE_NUMBER", "metadata") in found[plain]
    assert ("EMAIL_ADDRESS", "metadata") in found["meta.json"]

# ---- join gate ---------------------------------------------------------------------------
def _gate_site(tmp_path: Path) -> tuple[Path, list[Findings]]:
    site = tmp_path / "site"
    paths = [f"pytorch/train_all/000{i}/000{i}_c1s1_00000{i}_00.jpg" for i in (1, 2, 3)]
    for i, relpath in enumerate(paths):
        (site / relpath).parent.mkdir(parents=True)
        Image.fromarray(_bases()[i]).save(site / relpath)
    person = Entity("PERSON", "Anna Smith", 0.7, "image")
    date = Entity("DATE_TIME", "12/03/2024", 0.6, "image")
    findings = [Findings(paths[0], file_digest(site / paths[0]), [], [person, date]),
                Findings(paths[1], file_digest(site / paths[1]), [], [person])]
    write_block(site, findings, paths, block_level="medium", report=tmp_path / "audit.md")
    return site, findings


def test_join_blocked_until_acknowledged_or_resolved(tmp_path):
    site, findings = _gate_site(tmp_path)
    assert len(join_blockers(site)) == 2
    ack_path(site).write_text(f"# reviewed\n{ack_line(findings[0], 'badge of a mannequin')}\n")
    blockers = join_blockers(site)
    assert len(blockers) == 1 and findings[1].relpath in blockers[0]
    (site / findings[1].relpath).unlink()  # resolved by deleting the image
    assert join_blockers(site) == []


def test_join_blocked_by_changed_added_files_and_bad_ack_lines(tmp_path):
    site, findings = _gate_site(tmp_path)
    ack_path(site).write_text(f"{ack_line(findings[0])}\n{ack_line(findings[1], 'ok')}\n")
    blockers = join_blockers(site)
    assert any("is not '<digest> <path> -- <reason>'" in b for b in blockers)  # no reason
    Image.fromarray(_bases()[3]).save(site / findings[1].relpath)  # edited after the audit
    Image.fromarray(_bases()[3]).save(site / "pytorch/train_all/0001/0001_c2s1_000009_00.jpg")
    blockers = join_blockers(site)
    assert any("changed since the audit" in b for b in blockers)
    assert any("1 file(s) added since the audit" in b for b in blockers)


def test_site_without_block_record_is_not_gated(tmp_path):
    assert join_blockers(tmp_path) == []


# ---- screen ------------------------------------------------------------------------------
def test_pixel_screen_finds_copies_not_other_crops():
    bases = _bases(4)
    rng = np.random.default_rng(1)
    canvases = []
    for i in range(4):
        canvas = Image.fromarray(bases[i]).resize((128, 256))
        draw_items(canvas, [PlantedText("PERSON", "Anna", 24, 0.0, "high")] if i % 2 else [], rng)
        canvases.append(np.asarray(canvas))
    copy = np.asarray(Image.fromarray(canvases[1]).resize((100, 200)).crop((2, 3, 98, 197)))
    encoder = PixelEncoder()
    result = screen(encoder.embed(canvases), encoder.embed([copy]), threshold=0.95, top_k=2)
    assert [bool(m) for m in result.matches] == [False, True, False, False]
    assert result.nearest[0][0][0] == 1


def test_screen_rejects_mismatched_features():
    with pytest.raises(ValueError, match="same encoder"):
        screen(np.zeros((2, 4)), np.zeros((1, 5)), threshold=0.9)


def test_reid_encoder_from_a_fedreid_checkpoint(tmp_path):
    import torch

    from fedreid.models import build_model

    model = build_model("mobilenet_v2", "none")
    torch.save({"model": model.state_dict(), "arch": "mobilenet_v2"}, tmp_path / "checkpoint.pt")
    encoder = ReidEncoder(tmp_path / "checkpoint.pt")
    features = encoder.embed(_bases(2))
    assert features.shape[0] == 2
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="no such file"):
        ReidEncoder(tmp_path / "missing.pt")


# ---- redaction ---------------------------------------------------------------------------
def test_blur_boxes_flattens_text_and_leaves_the_rest():
    image = Image.new("RGB", (128, 64), (200, 200, 200))
    ImageDraw.Draw(image).text((10, 20), "Anna Smith", fill=(0, 0, 0))
    out = np.asarray(blur_boxes(image, [(8, 18, 80, 32)]), np.float32)
    before = np.asarray(image, np.float32)
    assert out[18:32, 8:80].std() < 0.5 * before[18:32, 8:80].std()
    np.testing.assert_array_equal(out[40:], before[40:])


# ---- planted ground truth ----------------------------------------------------------------
def test_plant_site_is_deterministic_and_mixes_clean_images(tmp_path):
    first = plant_site(_bases(), tmp_path / "a", n_images=12, clean_fraction=0.25, seed=3)
    second = plant_site(_bases(), tmp_path / "b", n_images=12, clean_fraction=0.25, seed=3)
    assert first == second
    assert (tmp_path / "a" / first[5].relpath).read_bytes() == (tmp_path / "b" / first[5].relpath).read_bytes()
    assert any(not p.items for p in first) and any(len(p.items) for p in first)
    assert all(item.kind in EXPECTED_ENTITY for p in first for item in p.items)
    with pytest.raises(ValueError, match="bases is empty"):
        plant_site([], tmp_path / "c", n_images=1)


# ---- the whole audit ---------------------------------------------------------------------
def test_audit_finds_planted_text_and_reports_offline(planted, analyzer, offline, tmp_path):
    site, truth = planted
    result = audit_site(site, tmp_path / "out", analyzer=analyzer, policy="redact", workers=1)
    by_path = {f.relpath: f for f in result.findings}
    for relpath, items in truth:
        found = {e.type for e in by_path[relpath].entities if e.source == "image"}
        assert found == {EXPECTED_ENTITY[i.kind] for i in items}, relpath
    record = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert record["images_by_type"]["PERSON"] == 2
    assert record["images_by_risk"] == {"none": 2, "low": 1, "medium": 5, "high": 0}  # date alone: low
    for name in ("audit.md", "audit.html", "audit.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert len(list((tmp_path / "out" / "thumbs").iterdir())) == 6
    # the redacted copy reads clean; the originals are untouched
    digests = {p: file_digest(site / p) for p in list_images(site)}
    again = audit_site(tmp_path / "out" / "redacted", tmp_path / "out2", analyzer=analyzer, workers=1)
    assert all(not f.entities for f in again.findings)
    assert digests == {p: file_digest(site / p) for p in list_images(site)}


def test_audit_screen_and_block_policy(planted, analyzer, tmp_path):
    source, truth = planted
    site = tmp_path / "site"
    shutil.copytree(source, site)
    exemplars = tmp_path / "exemplars"
    exemplars.mkdir()
    clean = truth[6][0]
    Image.open(site / clean).resize((200, 200)).save(exemplars / "withdrawn.jpg", quality=80)
    result = audit_site(site, tmp_path / "out", analyzer=analyzer, policy="block",
                        exemplars=exemplars, block_level="high", workers=1)
    assert [f.relpath for f in result.blocking] == [clean]  # lone entities are medium, not high
    blockers = join_blockers(site)
    assert len(blockers) == 1 and "sensitive-content match" in blockers[0]
    template = (tmp_path / "out" / "acknowledge.txt").read_text().splitlines()
    ack_path(site).write_text(template[1].removeprefix("# ") + "reviewed: a test image\n")
    assert join_blockers(site) == []


def test_audit_rejects_report_folder_inside_the_site(planted, analyzer):
    site, _ = planted
    with pytest.raises(ValueError, match="inside the site folder"):
        audit_site(site, site / "report", analyzer=analyzer)


@pytest.mark.skipif(engine_problem("tesseract") is not None,
                    reason=f"tesseract OCR engine unavailable: {engine_problem('tesseract')}")
def test_tesseract_engine_reads_clean_text():
    image = Image.new("RGB", (320, 80), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), "Anna Smith", fill=(0, 0, 0), font=ImageFont.load_default(24))
    draw.text((10, 44), "020 7946 0123", fill=(0, 0, 0), font=ImageFont.load_default(24))
    lines = make_ocr("tesseract").read(np.asarray(image))
    text = " ".join(line.text for line in lines)
    assert "Anna Smith" in text and "7946" in text
    assert all(0 <= line.box[0] < line.box[2] <= 320 for line in lines)


# ---- command line ------------------------------------------------------------------------
def _app() -> typer.Typer:
    from cli.audit import audit

    app = typer.Typer()
    app.command()(audit)
    app.command("noop")(lambda: None)  # two commands: typer keeps `audit` as a sub-command
    return app


def test_cli_audit_block_and_clear_errors(planted, tmp_path):
    source, _ = planted
    site = tmp_path / "site"
    shutil.copytree(source, site)
    runner = CliRunner()
    out = tmp_path / "report"
    ok = runner.invoke(_app(), ["audit", str(site), "--out", str(out), "--policy", "block",
                                "--workers", "1"])
    assert ok.exit_code == 0, ok.output
    assert "5 blocking finding(s)" in ok.output and (out / "audit.md").is_file()
    bad = runner.invoke(_app(), ["audit", str(site), "--policy", "delete"])
    assert bad.exit_code == 2 and "--policy 'delete' is not one of" in bad.output
    inside = runner.invoke(_app(), ["audit", str(site), "--out", str(site / "r")])
    assert inside.exit_code == 1 and "inside the site folder" in inside.output
