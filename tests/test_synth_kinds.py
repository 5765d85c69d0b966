"""Optional site kinds (aerial, ir-video, clothes), their ground truth, the reader's per-image
fields, and the attribute ground truth with its re-rendering check."""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from fedreid.data.readers import load_dataset
from fedreid.data.records import DataError
from fedreid.data.synth import (
    ATTRIBUTE_NAMES,
    KIND_KEYS,
    CameraSpec,
    attribute_truth,
    generate_synthetic8,
    render_spec_table,
    site_spec,
)
from fedreid.data.synth.attributes_truth import (
    COLOUR_GROUPS,
    ImageFacts,
    Palettes,
    colour_distinctness,
    counterfactual,
    measured_visibility,
    present,
    visibility,
)
from fedreid.data.synth.camera import Capture
from fedreid.data.synth.generate import render_job
from fedreid.data.synth.identity import COLOURS, draw_identity
from fedreid.data.synth.infrared import NIR_DYE, nir_identity
from fedreid.data.synth.kinds import KINDS, draw_site_identity, plan_any
from fedreid.data.synth.render import render_image, top_down

SMALL = {"scale": 0.1, "size": (64, 32), "min_test_ids": 6, "seed": 5}


@pytest.fixture(scope="module")
def kinds_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kinds")
    manifest = generate_synthetic8(root, sites=[], kinds=list(KIND_KEYS), workers=1, **SMALL)
    assert manifest["kinds"] == list(KIND_KEYS)
    assert [s["key"] for s in manifest["sites"]] == list(KIND_KEYS)
    return root


def _meta(root: Path, key: str) -> dict:
    return json.loads((root / key / "meta.json").read_text())


def _split(meta: dict, split: str) -> list[dict]:
    return [v for k, v in meta["images"].items() if k.startswith(split + "/")]


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.jpg"))
    }


def test_kinds_leave_default_sites_unchanged(tmp_path):
    generate_synthetic8(tmp_path / "alone", sites=["viper"], workers=1, **SMALL)
    generate_synthetic8(tmp_path / "with", sites=["viper"], kinds=["clothes"], workers=1, **SMALL)
    assert _digests(tmp_path / "alone" / "viper") == _digests(tmp_path / "with" / "viper")
    alone = json.loads((tmp_path / "alone" / "synthetic-8.json").read_text())
    assert "kinds" not in alone


def test_kinds_are_deterministic_across_runs_and_workers(tmp_path):
    tiny = {"scale": 0.03, "size": (32, 16), "min_test_ids": 3, "seed": 2, "sites": []}
    generate_synthetic8(tmp_path / "a", kinds=list(KIND_KEYS), workers=1, **tiny)
    generate_synthetic8(tmp_path / "b", kinds=list(KIND_KEYS), workers=2, **tiny)
    files = {str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*") if p.is_file()}
    assert len(files) > 100
    assert files == {str(p.relative_to(tmp_path / "b")) for p in (tmp_path / "b").rglob("*") if p.is_file()}
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


@pytest.mark.parametrize("kinds", [["drone"], ["aerial", "aerial"], "aerial"])
def test_bad_kinds_name_the_allowed_ones(tmp_path, kinds):
    with pytest.raises(ValueError, match="aerial.*ir-video.*clothes"):
        generate_synthetic8(tmp_path, sites=[], kinds=kinds, **SMALL)


def test_aerial_geometry_and_protocols(kinds_root):
    meta = _meta(kinds_root, "aerial")
    cameras = meta["cameras"]
    pitch = {"aerial": [], "ground": []}
    levels = set()
    for entry in meta["images"].values():
        geo = entry["geometry"]
        platform = cameras[entry["camid"]]["kind"]
        assert geo["platform"] == platform
        assert math.isclose(geo["pitch"], math.degrees(math.atan2(geo["altitude"], geo["distance"])), abs_tol=0.1)
        pitch[platform].append(geo["pitch"])
        levels.add(geo["altitude_level"])
    assert levels == {None, 0, 1, 2}
    assert min(pitch["aerial"]) > max(pitch["ground"]) - 5 and max(pitch["aerial"]) > 60
    gallery = {(e["pid"], e["geometry"]["platform"]) for e in _split(meta, "gallery")}
    queries = _split(meta, "query")
    assert {q["geometry"]["platform"] for q in queries} == {"aerial", "ground"}
    for q in queries:  # an aerial query has a ground match and vice versa
        other = "ground" if q["geometry"]["platform"] == "aerial" else "aerial"
        assert (q["pid"], other) in gallery


def test_aerial_pictures_are_rendered_from_their_geometry(kinds_root):
    assert np.allclose(top_down(np.linspace(-0.2, 1.2, 8), 0.0), np.linspace(-0.2, 1.2, 8))
    v = top_down(np.linspace(0, 1, 11), 70.0)
    assert v[0] == pytest.approx(0) and v[-1] == pytest.approx(1) and np.all(np.diff(v) > 0)
    assert v[5] < 0.5  # the upper half of the picture shows less than half the body: stretched head end
    plan = plan_any("aerial", seed=SMALL["seed"], scale=SMALL["scale"], min_test_ids=6)
    body = defaultdict(list)
    for job in plan.jobs[:40]:
        ident = draw_site_identity("aerial", SMALL["seed"], job.pid, plan.n_prototypes)
        _, meta, facts = render_job("aerial", SMALL["seed"], (128, 64), job, ident)
        body[meta["geometry"]["platform"]].append(facts.body_px)
    # drones: lower resolution with range, looser crops, foreshortened: fewer pixels a person
    assert np.mean(body["aerial"]) < 0.7 * np.mean(body["ground"])


def test_ir_video_modalities_tracklets_and_motion(kinds_root):
    meta = _meta(kinds_root, "ir-video")
    frames = defaultdict(list)
    modalities = defaultdict(set)
    for rel, e in meta["images"].items():
        camera = meta["cameras"][e["camid"]]["modality"]  # the generator's "rgb" | "infrared"
        assert e["modality"] == ("infrared" if camera == "infrared" else "visible")
        frames[e["pid"], e["camid"], e["tracklet"]].append((e["frame"], rel))
        modalities[e["pid"]].add(e["modality"])
    assert all(4 <= len(f) <= 8 for f in frames.values())
    assert all(m == {"visible", "infrared"} for m in modalities.values())
    gallery = {(e["pid"], e["modality"]) for e in _split(meta, "gallery")}
    for q in _split(meta, "query"):  # IR->visible and visible->IR both have matches
        other = "visible" if q["modality"] == "infrared" else "infrared"
        assert (q["pid"], other) in gallery
    from PIL import Image

    (pid, cam, t), shots = next((k, v) for k, v in frames.items() if len(v) >= 5)
    pics = [np.asarray(Image.open(kinds_root / "ir-video" / "pytorch" / rel), np.float32)
            for _, rel in sorted(shots)]
    assert np.abs(pics[0] - pics[-1]).mean() > np.abs(pics[0] - pics[1]).mean() > 0  # it walks


def test_infrared_is_not_a_grey_copy():
    from scipy.stats import kendalltau

    lum = [float(np.dot(COLOURS[c], (0.299, 0.587, 0.114))) for c in COLOURS]
    assert kendalltau(lum, [NIR_DYE[c] for c in COLOURS]).statistic < 0.6  # dyes reorder in NIR
    assert lum[list(COLOURS).index("red")] < lum[list(COLOURS).index("lightgrey")]
    assert NIR_DYE["red"] > NIR_DYE["lightgrey"]
    spec = site_spec("market")
    ident = draw_identity(0, 1, 3, spec.priors, 5)
    cap = Capture("front", 0.0, 1, 1.0, 0.0, 1.0, 0.0, 0.0, (0.3, 0.3), (0.0, 0.0, 0.0), None)
    vis = render_image(ident, 0, CameraSpec(name="v", noise=0.0), cap, np.random.default_rng(0), (128, 64), 0.0)
    ir = render_image(ident, 0, CameraSpec(name="v", noise=0.0, modality="infrared"), cap,
                      np.random.default_rng(0), (128, 64), 0.0)
    assert np.array_equal(ir[..., 0], ir[..., 1])
    grey = vis.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.corrcoef(grey.ravel(), ir[..., 0].astype(np.float32).ravel())[0, 1] < 0.9


def test_clothes_sessions_and_prcc_test_split(kinds_root):
    meta = _meta(kinds_root, "clothes")
    for ident in meta["identities"].values():
        uppers = [o["upper"] for o in ident["outfits"]]
        assert len(set(uppers)) == 3
        assert len({o["shoes_rgb"][0] for o in ident["outfits"]}) == 1
    for e in meta["images"].values():
        assert e["clothes_id"] == (e["pid"] - 1) * 3 + e["outfit"]
        assert 0 <= e["session"] <= 2
    gallery = defaultdict(set)
    for e in _split(meta, "gallery"):
        gallery[e["pid"]].add((e["camid"], e["clothes_id"]))
    sessions = set()
    for q in _split(meta, "query"):
        sessions.add(q["session"])
        if q["session"] == 0:  # same-clothes query: its clothes seen by another camera
            assert any(c == q["clothes_id"] and cam != q["camid"] for cam, c in gallery[q["pid"]])
        else:  # changed-clothes query: every gallery picture of the person wears other clothes
            assert gallery[q["pid"]] and all(c != q["clothes_id"] for _, c in gallery[q["pid"]])
    assert sessions == {0, 1}


def test_reader_hands_the_fields_to_samples(kinds_root):
    aerial = load_dataset(kinds_root / "aerial", "fedreid")
    assert all(s.meta["geometry"]["platform"] in ("aerial", "ground") for s in aerial.train)
    attrs = aerial.train[0].meta["attributes"]
    assert list(attrs) == list(ATTRIBUTE_NAMES) and set(attrs.values()) <= {0, 1}
    ir = load_dataset(kinds_root / "ir-video", "fedreid")
    assert ir.video and all(s.tracklet >= 0 and s.meta["modality"] in ("visible", "infrared") for s in ir.query)
    clothes = load_dataset(kinds_root / "clothes", "fedreid")
    assert {s.meta["session"] for s in clothes.train} == {0, 1, 2}
    assert all(isinstance(s.meta["clothes_id"], int) for s in clothes.gallery)


def test_reader_rejects_bad_fields_and_reads_tracklets_from_meta(kinds_root, tmp_path):
    import shutil

    site = tmp_path / "clothes"
    shutil.copytree(kinds_root / "clothes", site)
    meta = json.loads((site / "meta.json").read_text())
    key = next(iter(meta["images"]))
    meta["images"][key]["tracklet"], meta["images"][key]["frame"] = 3, 1
    (site / "meta.json").write_text(json.dumps(meta))
    sample = next(s for s in load_dataset(site, "fedreid").train if s.path.endswith(key.split("/")[-1]))
    assert (sample.tracklet, sample.frame) == (3, 1)
    for field, bad, words in (
        ("modality", "thermal", "modality"),
        ("clothes_id", -2, "clothes_id"),
        ("geometry", {"altitude": "high", "distance": 1, "pitch": 2, "platform": "aerial"}, "altitude"),
    ):
        broken = json.loads(json.dumps(meta))
        broken["images"][key][field] = bad
        (site / "meta.json").write_text(json.dumps(broken))
        with pytest.raises(DataError, match=f"{key.split('/')[-1]}.*{words}"):
            load_dataset(site, "fedreid")


def test_attribute_truth_is_recorded_with_strong_weak_and_absent(kinds_root):
    for key in KIND_KEYS:
        truth = attribute_truth(kinds_root / key)
        assert list(truth) == list(ATTRIBUTE_NAMES)
        classes = {v["class"] for v in _meta(kinds_root, key)["attribute_truth"]["attributes"].values()}
        assert {"strong", "weak", "absent"} <= classes
    assert attribute_truth(kinds_root / "ir-video")["hat:cap"] == 0.0
    assert attribute_truth(kinds_root / "clothes")["bag:handbag"] == 0.0
    logo = _meta(kinds_root, "clothes")["attribute_truth"]["attributes"]["pattern:logo"]
    assert logo["frequency"] > 0 and logo["class"] == "invisible"  # worn, never seen from the front
    with pytest.raises(DataError, match="meta.json"):
        attribute_truth(kinds_root)


def test_visibility_rules():
    spec = site_spec("viper")
    ident = draw_identity(0, 1, 2, spec.priors, 0)
    pal = Palettes()
    facts = ImageFacts(pid=2, outfit=0, view="back", infrared=False, body_px=110.0, occluder=None)
    assert visibility("pattern:logo", ident, facts, pal, ident) == 0.0
    tiny = ImageFacts(pid=2, outfit=0, view="front", infrared=False, body_px=8.0, occluder=None)
    assert visibility("hat:cap", ident, tiny, pal, ident) == 0.0  # under a pixel
    # colour: red is distinct from most other hues in daylight, much less so in NIR
    assert colour_distinctness("red", "upper", tuple(COLOURS), False) > 0.8
    assert colour_distinctness("red", "upper", tuple(COLOURS), True) < 0.6
    assert colour_distinctness("black", "upper", tuple(COLOURS), True) == 1.0
    assert set(COLOURS) == set(COLOUR_GROUPS)


def test_counterfactual_rerender_agrees_with_the_rules():
    plan = plan_any("aerial", seed=1, scale=0.1, min_test_ids=6)
    pri = plan.spec.priors
    pal = Palettes(pri.upper_palette, pri.lower_palette, pri.hair_palette)
    rng = np.random.default_rng(0)
    recorded, measured = [], []
    for job in plan.jobs[:: max(1, len(plan.jobs) // 12)]:
        ident = draw_site_identity("aerial", 1, job.pid, plan.n_prototypes)
        pixels, _, facts = render_job("aerial", 1, (64, 32), job, ident)
        for name in sorted(present(ident, job.outfit)):
            again, _, _ = render_job("aerial", 1, (64, 32), job, counterfactual(ident, job.outfit, name, pal, rng))
            recorded.append(visibility(name, ident, facts, pal, ident))
            measured.append(measured_visibility(pixels, again, facts.infrared))
    recorded, measured = np.array(recorded), np.array(measured)
    assert len(recorded) > 50
    assert np.abs(recorded - measured).mean() < 0.25
    assert np.corrcoef(recorded, measured)[0, 1] > 0.3


def test_nir_identity_keeps_shapes():
    spec = site_spec("duke")
    ident = draw_identity(0, 7, 4, spec.priors, 0)
    nir = nir_identity(ident)
    assert (nir.hair_length, nir.width, nir.outfits[0].bag) == (ident.hair_length, ident.width, ident.outfits[0].bag)
    assert all(len(set(rgb)) == 1 for rgb in (nir.skin_rgb, nir.outfits[0].upper_rgb))
    assert present(nir, 0) == present(ident, 0)


def test_spec_table_lists_kinds_and_protocol_queries():
    table = render_spec_table(0.1, min_test_ids=6, kinds=list(KIND_KEYS))
    for key in KIND_KEYS:
        assert f"| {key} |" in table
    assert "aerial->ground (" in table and "infrared->visible (" in table and "changed-clothes (" in table
    assert render_spec_table() == render_spec_table(kinds=())
    assert set(KINDS) == set(KIND_KEYS)


def test_every_kind_passes_the_data_check(kinds_root):
    from fedreid.data.check import check_dataset

    for key in KIND_KEYS:  # readable, decodable, no duplicate pictures within a split
        report = check_dataset(kinds_root / key, "fedreid")
        assert report["images"] == sum(1 for _ in (kinds_root / key / "pytorch").rglob("*.jpg"))


def _one_hot(samples, value) -> np.ndarray:
    labels = sorted({value(s) for s in samples})
    out = np.zeros((len(samples), len(labels)), np.float32)
    out[np.arange(len(samples)), [labels.index(value(s)) for s in samples]] = 1.0
    return out


def _features(site, value):
    f = _one_hot(site.query + site.gallery, value)
    return f[: len(site.query)], f[len(site.query) :]


def test_kinds_read_with_their_evaluation_protocols(kinds_root):
    from fedreid.eval.clothes_change import evaluate_clothes_change
    from fedreid.eval.cross_modality import evaluate_cross_modality
    from fedreid.eval.cross_platform import evaluate_aerial_ground

    aerial = load_dataset(kinds_root / "aerial", "fedreid")
    out = evaluate_aerial_ground(*_features(aerial, lambda s: s.pid), aerial.query, aerial.gallery)
    assert out["a2g_mAP"] == out["g2a_mAP"] == 1.0 and out["a2g_nq"] > 0 and out["g2a_nq"] > 0
    assert any(k.startswith("a2g_mAP_alt") for k in out)  # per-altitude bins from the geometry
    ir = load_dataset(kinds_root / "ir-video", "fedreid")
    out = evaluate_cross_modality(*_features(ir, lambda s: s.pid), ir.query, ir.gallery)
    assert out["ir2v_mAP"] == out["v2ir_mAP"] == 1.0 and out["ir2v_nq"] > 0 and out["v2ir_nq"] > 0
    clothes = load_dataset(kinds_root / "clothes", "fedreid")
    by_pid = evaluate_clothes_change(*_features(clothes, lambda s: s.pid), clothes.query, clothes.gallery)
    assert by_pid["cc_mAP"] == by_pid["sc_mAP"] == 1.0 and by_pid["cc_nq"] > 0 and by_pid["sc_nq"] > 0
    # matching clothes instead of people: perfect in the same-clothes setting, lost in the other
    by_clothes = evaluate_clothes_change(
        *_features(clothes, lambda s: s.meta["clothes_id"]), clothes.query, clothes.gallery
    )
    assert by_clothes["sc_mAP"] == 1.0 and by_clothes["cc_mAP"] < 0.5


def test_a_run_naming_a_site_kind_generates_it_on_first_use(tmp_path):
    from fedreid.data.sources import ensure_data_root

    root = ensure_data_root(tmp_path / "synth", sites=["viper", "aerial"], synth_scale=0.02, synth_seed=0)
    assert (root / "aerial").is_dir() and (root / "viper").is_dir()


def test_a_kind_named_later_is_added_to_an_earlier_generation_and_keeps_its_manifest(tmp_path):
    from fedreid.data.sources import ensure_data_root

    root = ensure_data_root(tmp_path / "synth", sites=["viper"], synth_scale=0.02, synth_seed=0)
    manifest = (root / "synthetic-8.json").read_text()
    ensure_data_root(root, sites=["viper", "clothes"], synth_scale=0.02, synth_seed=0)
    assert (root / "clothes" / "meta.json").is_file() and (root / "synthetic-8.json").read_text() == manifest
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # nothing left aside
    real = tmp_path / "real"
    real.mkdir()
    with pytest.raises(DataError, match="no folder for site"):  # a folder not generated is never written into
        ensure_data_root(real, sites=["aerial"], synth_scale=0.02, synth_seed=0)
