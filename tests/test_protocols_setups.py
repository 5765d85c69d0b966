"""Setup protocols (aerial-ground, cross-modality, clothes change, occlusion): hand-made cases
with known ranks, equality with a per-query reference loop, and the entry functions on the
tiny published layouts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_layouts import make_agreid_v2, make_hitsz_vcm, make_ltcc, make_prcc

from fedreid.data.readers import load_dataset
from fedreid.data.records import Sample
from fedreid.eval.clothes_change import clothes_change, evaluate_clothes_change
from fedreid.eval.cross_modality import evaluate_cross_modality
from fedreid.eval.cross_platform import cross_platform, evaluate_aerial_ground, geometry_bins
from fedreid.eval.features import extract_features, pairwise_distance
from fedreid.eval.junk import evaluate_with_junk, key_groups, market_junk
from fedreid.eval.metrics import evaluate
from fedreid.eval.occlusion import (
    Occlusion,
    evaluate_occluded,
    occlude,
    occluded_batches,
    occlusion_box,
)

# --- reference: the per-query good/junk loop of the clothes-change evaluation code -----------


def reference_good_junk(distmat, q_pids, g_pids, good_of, junk_of):
    """Per query: stable argsort, drop junk, hits at the good items (CAL's compute_ap_cmc)."""
    all_ap, all_inp, cmc_rows, valid = [], [], [], []
    for i in range(distmat.shape[0]):
        good, junk = good_of(i), junk_of(i)
        if not good.any():
            continue
        order = np.argsort(distmat[i], kind="stable")
        hits = good[order][~junk[order]]
        positions = np.flatnonzero(hits)
        all_ap.append(np.mean(np.arange(1, len(positions) + 1) / (positions + 1.0)))
        all_inp.append(len(positions) / (positions[-1] + 1.0))
        row = np.zeros(distmat.shape[1])
        row[positions[0] :] = 1.0
        cmc_rows.append(row)
        valid.append(i)
    return np.mean(cmc_rows, axis=0), np.array(all_ap), np.array(all_inp), np.array(valid)


def random_problem(seed: int, ties: bool):
    rng = np.random.default_rng(seed)
    nq, ng = int(rng.integers(3, 30)), int(rng.integers(5, 80))
    ids = int(rng.integers(2, 8))
    dist = rng.integers(0, 4, (nq, ng)).astype(float) if ties else rng.random((nq, ng))
    return (
        dist,
        rng.integers(0, ids, nq),
        rng.integers(0, ids, ng),
        rng.integers(0, 3, nq),
        rng.integers(0, 3, ng),
        rng.integers(0, 3, nq),
        rng.integers(0, 3, ng),
    )


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ties", [False, True])
def test_evaluate_with_junk_equals_reference_loop(seed: int, ties: bool) -> None:
    dist, qp, gp, _, _, _, _ = random_problem(seed, ties)
    rng = np.random.default_rng(100 + seed)
    groups = rng.integers(0, 4, len(qp))
    junk = rng.random((4, len(gp))) < 0.3
    out = evaluate_with_junk(dist, qp, gp, groups, junk, max_rank=len(gp))
    cmc, ap, inp, valid = reference_good_junk(
        dist,
        qp,
        gp,
        lambda i: (gp == qp[i]) & ~junk[groups[i]],
        lambda i: (gp == qp[i]) & junk[groups[i]],
    )
    if len(valid) == 0:
        assert out is None
        return
    np.testing.assert_array_equal(out["valid_queries"], valid)
    np.testing.assert_allclose(out["cmc"], cmc, atol=1e-12)
    np.testing.assert_allclose(out["all_AP"], ap, atol=1e-12)
    np.testing.assert_allclose(out["all_INP"], inp, atol=1e-12)
    assert out["mAP"] == pytest.approx(ap.mean()) and out["num_valid_queries"] == len(valid)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["general", "cc", "sc"])
def test_clothes_change_equals_written_out_rules(seed: int, mode: str) -> None:
    dist, qp, gp, qc, gc, qk, gk = random_problem(seed, ties=True)

    def sets(i):
        same, cam, clothes = gp == qp[i], gc == qc[i], gk == qk[i]
        if mode == "general":
            return same & ~cam, same & cam
        if mode == "cc":
            return same & ~cam & ~clothes, same & (cam | clothes)
        return same & ~cam & clothes, same & (cam | ~clothes)

    out = clothes_change(dist, qp, gp, qc, gc, qk, gk, mode=mode, max_rank=len(gp))
    cmc, ap, _, valid = reference_good_junk(
        dist, qp, gp, lambda i: sets(i)[0], lambda i: sets(i)[1]
    )
    if len(valid) == 0:
        assert out is None
        return
    np.testing.assert_array_equal(out["valid_queries"], valid)
    np.testing.assert_allclose(out["cmc"], cmc, atol=1e-12)
    np.testing.assert_allclose(out["all_AP"], ap, atol=1e-12)


def test_general_setting_and_market_junk_are_evaluate() -> None:
    dist, qp, gp, qc, gc, qk, gk = random_problem(3, ties=True)
    plain = evaluate(dist, qp, gp, qc, gc)
    for out in (clothes_change(dist, qp, gp, qc, gc, qk, gk), market_junk(dist, qp, gp, qc, gc)):
        np.testing.assert_allclose(out["cmc"], plain["cmc"], atol=1e-12)
        np.testing.assert_array_equal(out["all_AP"], plain["all_AP"])
        assert out["mINP"] == pytest.approx(plain["mINP"])


def test_key_groups_and_input_checks() -> None:
    keys, groups = key_groups(np.array([2, 0, 2]), np.array([1, 5, 1]))
    np.testing.assert_array_equal(keys, [[0, 5], [2, 1]])
    np.testing.assert_array_equal(groups, [1, 0, 1])
    with pytest.raises(ValueError, match="distmat must be queries × gallery = 1 × 2"):
        evaluate_with_junk(np.zeros((2, 2)), [0], [0, 1], [0], np.zeros((1, 2), bool))
    with pytest.raises(ValueError, match="q_groups must index the 1 rows of g_junk"):
        evaluate_with_junk(np.zeros((1, 2)), [0], [0, 1], [1], np.zeros((1, 2), bool))


# --- clothes change: hand-made ----------------------------------------------------------------
# query 0: pid 1, camera 0, outfit 1. Gallery by distance:
#   g0 pid 1 cam 0 outfit 1 (same camera: junk everywhere), g1 pid 2 (negative),
#   g2 pid 1 cam 1 outfit 1, g3 pid 1 cam 2 outfit 2, g4 pid 3, g5 pid 1 cam 1 outfit 2.
# general: kept g1 g2 g3 g4 g5 -> hits at 2, 3, 5; cc: g2 junk -> kept g1 g3 g4 g5 -> hits 2, 4;
# sc: g3 and g5 junk -> kept g1 g2 g4 -> hit at 2.
# query 1: pid 3 camera 0 outfit 1; g4 (pid 3, camera 2, outfit 1) is nearest: general and sc
# hit at 1; under cc g4 is its own outfit, so query 1 has no positive and is skipped.
CC_DIST = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.9, 0.8, 0.7, 0.6, 0.1, 0.5]])
CC_Q = {"pids": [1, 3], "cams": [0, 0], "clothes": [1, 1]}
CC_G = {"pids": [1, 2, 1, 1, 3, 1], "cams": [0, 1, 1, 2, 2, 1], "clothes": [1, 1, 1, 2, 1, 2]}


@pytest.mark.parametrize(
    ("mode", "num_valid", "m_ap", "m_inp", "cmc"),
    [
        ("general", 2, ((1 / 2 + 2 / 3 + 3 / 5) / 3 + 1) / 2, (3 / 5 + 1) / 2, [0.5, 1.0]),
        ("cc", 1, (1 / 2 + 2 / 4) / 2, 2 / 4, [0.0, 1.0]),
        ("sc", 2, (1 / 2 + 1) / 2, (1 / 2 + 1) / 2, [0.5, 1.0]),
    ],
)
def test_clothes_change_hand_made(mode, num_valid, m_ap, m_inp, cmc) -> None:
    out = clothes_change(
        CC_DIST,
        CC_Q["pids"],
        CC_G["pids"],
        CC_Q["cams"],
        CC_G["cams"],
        CC_Q["clothes"],
        CC_G["clothes"],
        mode=mode,
        max_rank=2,
    )
    assert out["num_valid_queries"] == num_valid
    assert out["mAP"] == pytest.approx(m_ap)
    assert out["mINP"] == pytest.approx(m_inp)
    np.testing.assert_allclose(out["cmc"], cmc)


def test_clothes_change_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode must be one of general, cc, sc, got 'both'"):
        clothes_change(
            CC_DIST,
            [1, 3],
            CC_G["pids"],
            [0, 0],
            CC_G["cams"],
            [1, 1],
            CC_G["clothes"],
            mode="both",
        )


def unit(angle_deg: float) -> list[float]:
    return [math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))]


def test_prcc_query_sets_through_the_entry_function(tmp_path: Path) -> None:
    """PRCC: B queries (same clothes as A) count only under sc, C queries only under cc."""
    splits = load_dataset(make_prcc(tmp_path), "prcc")
    # person 10 near 0 degrees, person 11 near 90; person 10's C query drifts to 60 degrees
    angle = {(10, 0): 0, (10, 1): 10, (10, 2): 60, (11, 0): 90, (11, 1): 80, (11, 2): 85}
    qf = torch.tensor([unit(angle[s.pid, s.camid]) for s in splits.query])
    gf = torch.tensor([unit(angle[s.pid, s.camid]) for s in splits.gallery])
    out = evaluate_clothes_change(qf, gf, splits.query, splits.gallery)
    assert (out["general_nq"], out["cc_nq"], out["sc_nq"]) == (4, 2, 2)
    assert out["sc_rank1"] == 1.0 and out["sc_mAP"] == 1.0
    # cc: person 10's C query (60) is nearer person 11's A image (90) than its own (0)
    assert out["cc_rank1"] == 0.5 and out["cc_mAP"] == pytest.approx((1 / 2 + 1) / 2)
    assert out["general_rank1"] == 0.75
    assert set(out) == {f"{m}_{k}" for m in ("general", "cc", "sc")
                        for k in ("rank1", "rank5", "rank10", "mAP", "mINP", "nq")}  # fmt: skip


def test_ltcc_general_and_cloth_changing(tmp_path: Path) -> None:
    splits = load_dataset(make_ltcc(tmp_path), "ltcc")
    # query (20, outfit 1, cam 1); gallery: same outfit cam 2 (nearest), other outfit cam 3, pid 21
    qf = torch.tensor([unit(0)])
    gf = torch.tensor([unit(5), unit(40), unit(30)])
    out = evaluate_clothes_change(qf, gf, splits.query, splits.gallery)
    assert out["general_rank1"] == 1.0 and out["general_mAP"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["cc_rank1"] == 0.0 and out["cc_mAP"] == pytest.approx(1 / 2)
    assert out["sc_rank1"] == 1.0 and out["sc_mAP"] == 1.0


def test_clothes_change_needs_clothes_ids() -> None:
    query = [Sample("q.png", 1, 0)]
    gallery = [Sample("g.png", 1, 1, meta={"clothes_id": 0})]
    with pytest.raises(ValueError, match=r"q\.png: no meta\['clothes_id'\]; the clothes-change"):
        evaluate_clothes_change(torch.ones(1, 2), torch.ones(1, 2), query, gallery)


# --- aerial-ground: hand-made -----------------------------------------------------------------
# gallery: g0 pid 1 aerial level 0, g1 pid 1 aerial level 2, g2 pid 2 aerial level 2,
#          g3 pid 1 ground, g4 pid 2 ground.
# queries: q0 pid 1 ground, q1 pid 2 ground, q2 pid 1 aerial level 1, q3 pid 2 aerial level 2.
AG_DIST = np.array(
    [
        [0.3, 0.2, 0.1, 0.05, 0.0],  # q0 over aerial: g2 (neg), g1, g0 -> hits 2, 3
        [0.1, 0.2, 0.3, 0.9, 0.9],  # q1 over aerial: g0, g1, g2 -> hit 3
        [0.9, 0.9, 0.9, 0.4, 0.2],  # q2 over ground: g4, g3 -> hit 2
        [0.9, 0.9, 0.9, 0.5, 0.1],  # q3 over ground: g4 -> hit 1
    ]
)
AG_Q = {"pids": [1, 2, 1, 2], "cams": [1, 1, 0, 0], "platform": ["ground"] * 2 + ["aerial"] * 2}
AG_G = {
    "pids": [1, 1, 2, 1, 2],
    "cams": [0, 0, 0, 1, 1],
    "platform": ["aerial"] * 3 + ["ground"] * 2,
}


def ag(query_platform, gallery_platform, **bins):
    return cross_platform(
        AG_DIST,
        AG_Q["pids"],
        AG_G["pids"],
        AG_Q["cams"],
        AG_G["cams"],
        AG_Q["platform"],
        AG_G["platform"],
        query_platform=query_platform,
        gallery_platform=gallery_platform,
        **bins,
    )


def test_aerial_to_ground_overall_and_per_query_altitude() -> None:
    out = ag("aerial", "ground", q_bins={"alt": np.array([-1, -1, 1, 2])})
    assert sorted(out) == ["", "alt1", "alt2"]
    assert out[""]["mAP"] == pytest.approx(0.75) and out[""]["cmc"][0] == 0.5
    assert out["alt1"]["mAP"] == pytest.approx(0.5) and out["alt1"]["cmc"][0] == 0.0
    assert out["alt2"]["mAP"] == 1.0 and out["alt2"]["num_valid_queries"] == 1


def test_ground_to_aerial_bins_junk_the_other_altitudes() -> None:
    out = ag("ground", "aerial", g_bins={"alt": np.array([0, 2, 2, -1, -1])})
    assert out[""]["mAP"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 / 3) / 2)
    assert out[""]["num_valid_queries"] == 2 and out[""]["cmc"][0] == 0.0
    # level 0: g1 is junk for q0 (kept g2, g0: hit 2); q1 has no level-0 view and is skipped
    assert out["alt0"]["num_valid_queries"] == 1 and out["alt0"]["mAP"] == pytest.approx(0.5)
    # level 2: g0 is junk for q0 (kept g2, g1: hit 2); q1 keeps g0, g1, g2: hit 3
    assert out["alt2"]["mAP"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    np.testing.assert_array_equal(out["alt2"]["valid_queries"], [0, 1])


def test_a_direction_without_matches_is_empty() -> None:
    assert ag("wearable", "aerial") == {}


def test_geometry_bins_levels_metres_and_unknown() -> None:
    geometries = [
        {"altitude_level": 2, "altitude": 10.0, "distance": 14.9},
        {"altitude": 24.9, "distance": 15.0},
        {"altitude": 35.0, "distance": 31.0},
        {"platform": "ground", "altitude": None},
    ]
    bins = geometry_bins(geometries)
    np.testing.assert_array_equal(bins["alt"], [2, 0, 2, -1])
    np.testing.assert_array_equal(bins["dist"], [0, 1, 2, -1])
    with pytest.raises(ValueError, match=r"altitude_edges must be increasing, got \(30.0, 20.0\)"):
        geometry_bins(geometries, altitude_edges=(30.0, 20.0))


def test_aerial_ground_entry_on_agreid_v2(tmp_path: Path) -> None:
    splits = load_dataset(make_agreid_v2(tmp_path), "agreid-v2")
    rng = np.random.default_rng(0)
    qf = torch.tensor(rng.normal(size=(len(splits.query), 8)), dtype=torch.float32)
    gf = torch.tensor(rng.normal(size=(len(splits.gallery), 8)), dtype=torch.float32)
    out = evaluate_aerial_ground(qf, gf, splits.query, splits.gallery)
    # one aerial query (P0020, level 1), one CCTV and one wearable query (P0021)
    assert {key.split("_")[0] for key in out} == {"a2g", "g2a", "a2w", "w2a"}
    assert out["a2g_nq"] == out["g2a_nq"] == out["a2w_nq"] == out["w2a_nq"] == 1.0
    assert "a2g_mAP_alt1" in out and "g2a_mAP_alt0" in out and "g2a_mAP_alt1" not in out
    # each number is cross_platform's on the same distances
    dist = pairwise_distance(qf, gf).numpy()
    platforms = [
        [s.meta["geometry"]["platform"] for s in part] for part in (splits.query, splits.gallery)
    ]
    expected = cross_platform(
        dist,
        [s.pid for s in splits.query],
        [s.pid for s in splits.gallery],
        [s.camid for s in splits.query],
        [s.camid for s in splits.gallery],
        *platforms,
        query_platform="ground",
        gallery_platform="aerial",
    )
    assert out["g2a_mAP"] == pytest.approx(expected[""]["mAP"])


def test_aerial_ground_errors() -> None:
    ground = {"geometry": {"platform": "ground"}}
    query = [Sample("q.jpg", 1, 0, meta=ground)]
    with pytest.raises(ValueError, match=r"no aerial-ground direction has a query with a match"):
        evaluate_aerial_ground(
            torch.ones(1, 2), torch.ones(1, 2), query, [Sample("g.jpg", 1, 1, meta=ground)]
        )
    with pytest.raises(ValueError, match=r"g\.jpg: meta\['geometry'\]\['platform'\] is 'sky'"):
        evaluate_aerial_ground(
            torch.ones(1, 2), torch.ones(1, 2), query,
            [Sample("g.jpg", 1, 1, meta={"geometry": {"platform": "sky"}})],
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"g\.jpg: no meta\['geometry'\]; the aerial-ground"):
        evaluate_aerial_ground(torch.ones(1, 2), torch.ones(1, 2), query, [Sample("g.jpg", 1, 1)])
    with pytest.raises(ValueError, match=r"qf must be N×D with one row per sample \(1\)"):
        evaluate_aerial_ground(torch.ones(2, 2), torch.ones(1, 2), query, query)


# --- cross-modality: hand-made, tracklet level ------------------------------------------------
# HITSZ-VCM-like: the query split holds infrared tracklets, the gallery split visible ones.
# Each tracklet has two frames at angle +-4 degrees around its own angle (means point at it).
#   infrared (query):  A pid 1 cam 0 at 0,   B pid 2 cam 1 at 90
#   visible (gallery): C pid 1 cam 2 at 40,  D pid 2 cam 3 at 30,  E pid 1 cam 0 at 5
# IR->V: A: E (same camera, junk), D, C -> hit 2; B: C, D -> hit 2.            mAP 0.5
# V->IR (splits swapped): C: A first -> hit 1; D: A, B -> hit 2; E: A is junk (same camera)
# and B is someone else, so E is skipped.                                     mAP 0.75


def tracklet(pid, camid, tid, angle, modality):
    samples = [
        Sample(f"{tid}_{f}.jpg", pid, camid, tid, f, {"modality": modality}) for f in range(2)
    ]
    return samples, [unit(angle - 4), unit(angle + 4)]


def build(parts):
    samples, feats = [], []
    for part in parts:
        s, f = tracklet(*part)
        samples += s
        feats += f
    return samples, torch.tensor(feats)


def test_cross_modality_hand_made_with_split_swap() -> None:
    query, qf = build([(1, 0, 0, 0, "infrared"), (2, 1, 1, 90, "infrared")])
    gallery, gf = build(
        [(1, 2, 2, 40, "visible"), (2, 3, 3, 30, "visible"), (1, 0, 4, 5, "visible")]
    )
    out = evaluate_cross_modality(qf, gf, query, gallery)
    assert out["ir2v_mAP"] == pytest.approx(0.5) and out["ir2v_rank1"] == 0.0
    assert out["ir2v_rank5"] == out["ir2v_rank20"] == 1.0 and out["ir2v_nq"] == 2
    assert out["v2ir_mAP"] == pytest.approx(0.75) and out["v2ir_rank1"] == 0.5
    assert out["v2ir_nq"] == 2
    assert out["v2ir_mINP"] == pytest.approx((1 + 1 / 2) / 2)


def test_cross_modality_without_swap_when_both_sides_hold_both() -> None:
    """BUPTCampus-like: the query has one tracklet per person, of either modality."""
    query, qf = build([(1, 0, 0, 0, "infrared"), (2, 0, 1, 90, "visible")])
    gallery, gf = build(
        [
            (1, 1, 2, 10, "visible"),
            (1, 1, 3, 10, "infrared"),
            (2, 2, 4, 85, "visible"),
            (2, 2, 5, 20, "infrared"),
        ]
    )
    out = evaluate_cross_modality(qf, gf, query, gallery)
    # IR->V: person 1's infrared query against the visible gallery: own tracklet first
    assert out["ir2v_nq"] == 1 and out["ir2v_mAP"] == 1.0
    # V->IR: person 2's visible query (90) against infrared tracklets at 10 and 20: hit 1
    assert out["v2ir_nq"] == 1 and out["v2ir_mAP"] == 1.0


def test_cross_modality_on_hitsz_vcm_layout(tmp_path: Path) -> None:
    splits = load_dataset(make_hitsz_vcm(tmp_path), "hitsz-vcm")
    angle = {3: 0.0, 4: 90.0}
    qf = torch.tensor([unit(angle[s.pid] + s.frame % 3) for s in splits.query])
    gf = torch.tensor([unit(angle[s.pid] + 20) for s in splits.gallery])
    out = evaluate_cross_modality(qf, gf, splits.query, splits.gallery)
    assert out["ir2v_nq"] == out["v2ir_nq"] == 2
    assert out["ir2v_mAP"] == out["v2ir_mAP"] == 1.0


def test_cross_modality_errors() -> None:
    query, qf = build([(1, 0, 0, 0, "infrared")])
    gallery, gf = build([(1, 1, 1, 0, "infrared")])
    with pytest.raises(ValueError, match=r"no cross-modality query has a match"):
        evaluate_cross_modality(qf, gf, query, gallery)
    mixed = [query[0], Sample("x.jpg", 1, 0, 0, 1, {"modality": "visible"})]
    with pytest.raises(ValueError, match=r"x\.jpg: meta\['modality'\] is 'visible' but 0_0\.jpg"):
        evaluate_cross_modality(qf, gf, mixed, gallery)
    odd = [Sample("y.jpg", 1, 0, 0, 0, {"modality": "thermal"})] * 2
    with pytest.raises(ValueError, match=r"y\.jpg: meta\['modality'\] is 'thermal'"):
        evaluate_cross_modality(qf, gf, odd, gallery)


# --- occlusion --------------------------------------------------------------------------------


def test_occlusion_boxes() -> None:
    assert occlusion_box(8, 4, Occlusion("upper", 0.5), 0) == (0, 0, 4, 4)
    assert occlusion_box(8, 4, Occlusion("lower", 0.25), 7) == (6, 0, 8, 4)
    spec = Occlusion("random", 0.25, seed=3)
    boxes = [occlusion_box(128, 64, spec, key) for key in range(50)]
    assert boxes == [occlusion_box(128, 64, spec, key) for key in range(50)]  # deterministic
    assert len(set(boxes)) > 40  # and it moves
    for top, left, bottom, right in boxes:
        assert 0 <= top < bottom <= 128 and 0 <= left < right <= 64
        assert (bottom - top) * (right - left) == pytest.approx(0.25 * 128 * 64, rel=0.1)
    assert boxes != [occlusion_box(128, 64, Occlusion(seed=4), key) for key in range(50)]


def test_occlusion_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="occlusion mode must be one of random, upper, lower"):
        Occlusion("left")
    with pytest.raises(ValueError, match=r"occlusion fraction must be in \(0, 1\], got 0"):
        Occlusion(fraction=0)


def test_occlude_copies_and_fills() -> None:
    images = torch.ones(2, 3, 8, 4)
    out = occlude(images, [0, 1], Occlusion("lower", 0.5, fill=-1.0))
    assert images.min() == 1.0  # input untouched
    assert (out[:, :, 4:] == -1.0).all() and (out[:, :, :4] == 1.0).all()
    with pytest.raises(ValueError, match="one key per image"):
        occlude(images, [0], Occlusion())


def test_occluded_batches_do_not_depend_on_batching() -> None:
    images = torch.rand(7, 3, 16, 8)
    spec = Occlusion(fraction=0.3, seed=1)
    by_two = torch.cat(list(occluded_batches(images.split(2), spec)))
    by_five = torch.cat(
        [b["image"] for b in occluded_batches(({"image": x} for x in images.split(5)), spec)]
    )
    tuples = list(occluded_batches([(images, torch.arange(7))], spec))
    assert torch.equal(by_two, by_five) and torch.equal(by_two, tuples[0][0])
    assert torch.equal(tuples[0][1], torch.arange(7))
    assert not torch.equal(by_two, images)


def test_evaluate_occluded_hand_made() -> None:
    query = [Sample("q1.jpg", 1, 0), Sample("q2.jpg", 2, 0)]
    gallery = [Sample("g1.jpg", 1, 1), Sample("g2.jpg", 2, 1)]
    gf = torch.tensor([unit(0), unit(90)])
    clean = torch.tensor([unit(5), unit(85)])
    occluded = torch.tensor([unit(60), unit(85)])  # q1 now nearer person 2: hit 2
    out = evaluate_occluded(occluded, gf, query, gallery, qf_clean=clean)
    assert out["occ_rank1"] == 0.5 and out["occ_mAP"] == pytest.approx(0.75)
    assert out["occ_mAP_drop"] == pytest.approx(0.25) and out["occ_rank1_drop"] == 0.5
    assert out["occ_nq"] == 2


class LowerHalfAngle(torch.nn.Module):
    """Embeds an image as the unit vector at 150 degrees times its lower half's mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = torch.deg2rad(150 * x[:, :, x.shape[2] // 2 :].mean((1, 2, 3)))
        return torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)


def test_occlusion_end_to_end_with_extract_features() -> None:
    """Person i's lower half has value i/5. Erasing it sends every query to 0 degrees, so all
    tie and gallery order decides: query i finds its match at rank i + 1 (AP 1/(i+1))."""
    images = torch.zeros(6, 3, 8, 4)
    images[:, :, 4:] = torch.arange(6).view(-1, 1, 1, 1) / 5
    query = [Sample(f"q{i}", i, 0) for i in range(6)]
    gallery = [Sample(f"g{i}", i, 1) for i in range(6)]
    model = LowerHalfAngle()
    clean = extract_features(model, images, flip=False)
    occluded = extract_features(
        model, occluded_batches(images.split(4), Occlusion("lower", 0.5)), flip=False
    )
    out = evaluate_occluded(occluded, clean, query, gallery, qf_clean=clean)
    assert out["occ_mAP"] == pytest.approx(sum(1 / (i + 1) for i in range(6)) / 6)
    assert out["occ_mAP_drop"] == pytest.approx(1 - out["occ_mAP"])
    assert out["occ_rank1"] == pytest.approx(1 / 6)
