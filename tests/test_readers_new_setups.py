"""Readers of the aerial-ground, video visible-infrared and clothes-change sets on tiny folders
in their published layouts: exact counts and metadata, and one test per error rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fixtures_layouts import (
    make_agreid,
    make_agreid_v2,
    make_buptcampus,
    make_hitsz_vcm,
    make_ltcc,
    make_prcc,
    write_image,
)

from fedreid.data.check import check_dataset
from fedreid.data.readers import READERS, load_dataset
from fedreid.data.readers.hitsz_vcm import MIN_SEQ_LEN
from fedreid.data.records import DataError, ReidSplits

BUILDERS = {
    "agreid": make_agreid,
    "agreid-v2": make_agreid_v2,
    "hitsz-vcm": make_hitsz_vcm,
    "buptcampus": make_buptcampus,
    "ltcc": make_ltcc,
    "prcc": make_prcc,
}


def counts(splits: ReidSplits) -> dict[str, tuple[int, ...]]:
    """(identities, cameras, images[, tracklets]) per split."""
    summary = splits.summary()
    keys = ("ids", "cams", "images") + (("tracklets",) if splits.video else ())
    return {
        split: tuple(summary[split][key] for key in keys) for split in ("train", "query", "gallery")
    }


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_registered_and_passes_the_full_check(tmp_path: Path, name: str) -> None:
    assert name in READERS
    report = check_dataset(BUILDERS[name](tmp_path), name)
    assert report["dataset"] == name
    assert report["image_size"] == {"min": [8, 4], "median": [8, 4], "max": [8, 4]}
    json.dumps(report)


# --- AG-ReID ----------------------------------------------------------------------------------


def test_agreid_counts_pids_cameras_and_geometry(tmp_path: Path) -> None:
    splits = load_dataset(make_agreid(tmp_path), "agreid")
    assert counts(splits) == {"train": (2, 2, 4), "query": (2, 2, 3), "gallery": (2, 2, 4)}
    assert splits.num_cameras == 2 and splits.warnings == []
    first = splits.query[0]
    assert Path(first.path).name == "P0010T02140A0C0F91.jpg"
    assert (first.pid, first.camid) == (10021400, 0)  # int("0010" + "02140" + "0")
    assert first.meta["geometry"] == {
        "altitude": None,
        "altitude_level": 0,
        "distance": None,
        "pitch": None,
        "platform": "aerial",
    }
    ground = next(s for s in splits.query if Path(s.path).parent.name == "query_all_c3")
    assert ground.camid == 1
    assert ground.meta["geometry"]["platform"] == "ground"
    assert ground.meta["geometry"]["altitude"] == 3.0
    assert ground.meta["geometry"]["altitude_level"] is None
    high = next(s for s in splits.gallery if s.pid == 11021412 and s.camid == 0)
    assert high.meta["geometry"]["altitude_level"] == 2
    assert "attributes" not in first.meta


def test_agreid_attribute_file(tmp_path: Path) -> None:
    splits = load_dataset(make_agreid(tmp_path, attributes="mat"), "agreid")
    by_pid = {s.pid: s.meta.get("attributes") for s in splits.train + splits.query}
    assert by_pid[10021400] == {"age": 1, "backpack": 1}  # 10021400 % 4 + 1, 1 + pid % 2
    assert by_pid[2040411] == {"age": 4, "backpack": 2}


def test_agreid_v2_sub_folders_and_three_platforms(tmp_path: Path) -> None:
    splits = load_dataset(make_agreid_v2(tmp_path), "agreid-v2")
    assert counts(splits) == {"train": (2, 3, 3), "query": (2, 3, 3), "gallery": (2, 3, 6)}
    assert splits.num_cameras == 3 and splits.root.endswith("AG-ReID.v2")
    platform = {
        Path(s.path).name: (s.camid, s.meta["geometry"]["platform"], s.meta["geometry"]["altitude"])
        for s in splits.query
    }
    assert platform == {
        "P0020T05010A1C0F00010.jpg": (0, "aerial", None),
        "P0021T05011A0C3F00020.jpg": (2, "ground", 3.0),
        "P0021T05011A0C2F00030.jpg": (1, "wearable", 1.5),
    }


def test_agreid_file_in_the_wrong_camera_folder(tmp_path: Path) -> None:
    make_agreid(tmp_path)
    write_image(tmp_path / "query_all_c0" / "P0010T02140A0C3F999.jpg")
    with pytest.raises(
        DataError, match=r"P0010T02140A0C3F999\.jpg: camera C3 in folder query_all_c0/; rule"
    ):
        load_dataset(tmp_path, "agreid")


def test_agreid_wearable_camera_is_not_v1(tmp_path: Path) -> None:
    make_agreid(tmp_path)
    write_image(tmp_path / "bounding_box_train" / "P0001T04041A0C2F99.jpg")
    with pytest.raises(
        DataError, match=r"camera C2 is not one of the AG-ReID cameras; rule: cameras are C0, C3"
    ):
        load_dataset(tmp_path, "agreid")


def test_agreid_altitude_level_out_of_range(tmp_path: Path) -> None:
    make_agreid_v2(tmp_path)
    write_image(tmp_path / "AG-ReID.v2" / "gallery" / "x" / "P0020T05010A3C0F00001.jpg")
    with pytest.raises(DataError, match=r"altitude level A3 out of range; rule: A0 \(low\)"):
        load_dataset(tmp_path, "agreid-v2")


def test_agreid_unparsable_name_and_missing_folder(tmp_path: Path) -> None:
    make_agreid(tmp_path)
    write_image(tmp_path / "bounding_box_test_all_c3" / "person_3.jpg")
    with pytest.raises(DataError, match=r"person_3\.jpg: unparsable file name; rule: 'P<pid>T"):
        load_dataset(tmp_path, "agreid")
    shutil.rmtree(tmp_path / "query_all_c3")
    with pytest.raises(DataError, match=r"query_all_c3: missing split folder for AG-ReID"):
        load_dataset(tmp_path, "agreid")


# --- HITSZ-VCM --------------------------------------------------------------------------------


def test_hitsz_vcm_tracklets_modalities_and_short_tracklets(tmp_path: Path) -> None:
    splits = load_dataset(make_hitsz_vcm(tmp_path), "hitsz-vcm")
    assert splits.video and splits.num_cameras == 12
    assert counts(splits) == {
        "train": (1, 2, 24, 2),
        "query": (2, 2, 24, 2),
        "gallery": (2, 2, 24, 2),
    }
    (warning,) = splits.warnings
    assert warning.startswith(f"1 train tracklets shorter than {MIN_SEQ_LEN} frames dropped")
    assert "track_train_info.txt line 3" in warning
    assert {s.meta["modality"] for s in splits.query} == {"infrared"}
    assert {s.meta["modality"] for s in splits.gallery} == {"visible"}
    assert sorted({s.tracklet for s in splits.train}) == [0, 1]
    assert sorted({s.tracklet for s in splits.query + splits.gallery}) == [3, 4, 5, 6]
    first = splits.gallery[0]
    assert (first.pid, first.camid, first.frame) == (3, 3, 201)  # D4, frame file 201.jpg
    assert Path(first.path).parts[-5:] == ("Test", "0003", "rgb", "D4", "201.jpg")


def test_hitsz_vcm_readme_layout_without_train_test_info_folders(tmp_path: Path) -> None:
    base = make_hitsz_vcm(tmp_path) / "HITSZ-VCM"
    for folder in ("info", "Train", "Test"):
        for entry in (base / folder).iterdir():
            entry.rename(base / entry.name)
        (base / folder).rmdir()
    splits = load_dataset(tmp_path, "hitsz-vcm")
    assert counts(splits)["query"] == (2, 2, 24, 2)


def test_hitsz_vcm_frame_disagreeing_with_its_row(tmp_path: Path) -> None:
    info = make_hitsz_vcm(tmp_path) / "HITSZ-VCM" / "info"
    lines = (info / "test_name.txt").read_text().splitlines()
    lines[0] = lines[0].replace("M1", "M2")
    (info / "test_name.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataError,
        match=r"test_name\.txt line 1: frame 0003M2D1T1F101\.jpg .* lies in the tracklet of .*"
        r"track_test_info\.txt line 1 .*rule: a tracklet's frames share",
    ):
        load_dataset(tmp_path, "hitsz-vcm")


def test_hitsz_vcm_missing_frame(tmp_path: Path) -> None:
    base = make_hitsz_vcm(tmp_path) / "HITSZ-VCM"
    (base / "Test" / "0004" / "ir" / "D5" / "105.jpg").unlink()
    with pytest.raises(DataError, match=r"D5/105\.jpg: listed frame does not exist \(named by"):
        load_dataset(tmp_path, "hitsz-vcm")


@pytest.mark.parametrize(
    ("file", "content", "problem"),
    [
        ("query_IDX.txt", "1 9\n", r"query_IDX\.txt line 1: row 9 out of range"),
        ("query_IDX.txt", "1 1\n", r"query_IDX\.txt line 1: row 1 listed twice"),
        ("track_test_info.txt", "1 1 12 3\n", r"track_test_info\.txt line 1: 4 fields"),
        ("track_test_info.txt", "1 1 12 3 13\n", r"line 1: camera 13 out of range for HITSZ-VCM"),
        ("track_test_info.txt", "3 1 12 3 1\n", r"line 1: modality 3, frames 1\.\.12"),
        ("track_test_info.txt", "1 a 12 3 1\n", r"line 1: unparsable line"),
    ],
)
def test_hitsz_vcm_bad_info_lines(tmp_path: Path, file: str, content: str, problem: str) -> None:
    (make_hitsz_vcm(tmp_path) / "HITSZ-VCM" / "info" / file).write_text(content)
    with pytest.raises(DataError, match=problem):
        load_dataset(tmp_path, "hitsz-vcm")


def test_hitsz_vcm_missing_info_file(tmp_path: Path) -> None:
    (make_hitsz_vcm(tmp_path) / "HITSZ-VCM" / "info" / "query_IDX.txt").unlink()
    with pytest.raises(DataError, match=r"info/query_IDX\.txt: missing info file for HITSZ-VCM"):
        load_dataset(tmp_path, "hitsz-vcm")


# --- BUPTCampus -------------------------------------------------------------------------------


def test_buptcampus_pairs_modalities_and_cameras(tmp_path: Path) -> None:
    splits = load_dataset(make_buptcampus(tmp_path), "buptcampus")
    assert splits.video and splits.num_cameras == 6 and splits.warnings == []
    assert counts(splits) == {
        "train": (1, 1, 6, 2),
        "query": (2, 2, 6, 2),
        "gallery": (2, 2, 12, 4),
    }
    assert [(s.pid, s.camid, s.meta["modality"]) for s in splits.query[::3]] == [
        (5, 1, "infrared"),  # G25
        (6, 2, "visible"),  # CQ1
    ]
    ir, rgb = (
        {s.tracklet for s in splits.train if s.meta["modality"] == "infrared"},
        {s.tracklet for s in splits.train if s.meta["modality"] == "visible"},
    )
    assert len(ir) == len(rgb) == 1 and ir != rgb  # an aligned pair is two tracklets
    assert sorted({s.frame for s in splits.train}) == [8535, 8536, 8537]
    assert all(s.pid != 9 for s in splits.train)  # train_auxiliary.txt is not read


def test_buptcampus_unknown_camera(tmp_path: Path) -> None:
    base = make_buptcampus(tmp_path) / "BUPTCampus"
    (base / "query.txt").write_text("5 IR X9 1\n")
    with pytest.raises(
        DataError, match=r"query\.txt line 1: camera 'X9' is not a BUPTCampus camera"
    ):
        load_dataset(tmp_path, "buptcampus")


def test_buptcampus_tracklet_missing_from_data_paths(tmp_path: Path) -> None:
    base = make_buptcampus(tmp_path) / "BUPTCampus"
    (base / "gallery.txt").write_text("5 RGB/IR LS3 7\n")
    with pytest.raises(
        DataError, match=r"gallery\.txt line 1: no frames for pid 5, IR, camera LS3, tracklet 7"
    ):
        load_dataset(tmp_path, "buptcampus")


def test_buptcampus_missing_frame_and_bad_line(tmp_path: Path) -> None:
    base = make_buptcampus(tmp_path) / "BUPTCampus"
    (base / "DATA" / "6" / "IR" / "W4" / "6_IR_W4_1_8536.jpg").unlink()
    with pytest.raises(DataError, match=r"6_IR_W4_1_8536\.jpg: listed frame does not exist"):
        load_dataset(tmp_path, "buptcampus")
    (base / "train.txt").write_text("1 RGB CQ1\n")
    with pytest.raises(DataError, match=r"train\.txt line 1: unparsable list line"):
        load_dataset(tmp_path, "buptcampus")


# --- LTCC and PRCC ----------------------------------------------------------------------------


def test_ltcc_counts_and_clothes(tmp_path: Path) -> None:
    splits = load_dataset(make_ltcc(tmp_path), "ltcc")
    assert counts(splits) == {"train": (2, 3, 3), "query": (1, 1, 1), "gallery": (2, 3, 3)}
    assert splits.num_cameras == 12 and splits.warnings == []
    assert [(s.pid, s.camid, s.meta["clothes_id"]) for s in splits.gallery] == [
        (20, 1, 1),
        (20, 2, 2),
        (21, 11, 1),
    ]


def test_ltcc_errors(tmp_path: Path) -> None:
    make_ltcc(tmp_path)
    bad = write_image(tmp_path / "LTCC_ReID" / "test" / "020_1_c13_000009.png")
    with pytest.raises(DataError, match=r"020_1_c13_000009\.png: camera 13 out of range for LTCC"):
        load_dataset(tmp_path, "ltcc")
    bad.unlink()
    write_image(tmp_path / "LTCC_ReID" / "train" / "015_c11_015923.png")
    with pytest.raises(DataError, match=r"015_c11_015923\.png: unparsable file name; rule"):
        load_dataset(tmp_path, "ltcc")


def test_prcc_query_sets_and_clothes(tmp_path: Path) -> None:
    splits = load_dataset(make_prcc(tmp_path), "prcc")
    assert counts(splits) == {"train": (1, 3, 3), "query": (2, 2, 4), "gallery": (2, 1, 2)}
    assert splits.warnings == []
    assert {(s.camid, s.meta["clothes_id"]) for s in splits.train} == {(0, 0), (1, 0), (2, 1)}
    assert {(s.camid, s.meta["clothes_id"]) for s in splits.query} == {(1, 0), (2, 1)}
    assert {(s.camid, s.meta["clothes_id"]) for s in splits.gallery} == {(0, 0)}
    assert all(s.pid != 2 for s in splits.train)  # rgb/val is not read


def test_prcc_errors(tmp_path: Path) -> None:
    rgb = make_prcc(tmp_path) / "prcc" / "rgb"
    bad = write_image(rgb / "train" / "001" / "D_cropped_rgb009.jpg")
    with pytest.raises(DataError, match=r"D_cropped_rgb009\.jpg: unparsable file name; rule"):
        load_dataset(tmp_path, "prcc")
    bad.unlink()
    write_image(rgb / "test" / "B" / "bob" / "x.jpg")
    with pytest.raises(DataError, match=r"test/B/bob: unparsable identity folder name"):
        load_dataset(tmp_path, "prcc")
    shutil.rmtree(rgb / "test" / "B" / "bob")
    shutil.rmtree(rgb / "test" / "C")
    with pytest.raises(DataError, match=r"rgb/test/C: missing split folder for PRCC"):
        load_dataset(tmp_path, "prcc")


def test_prcc_loose_files_are_counted(tmp_path: Path) -> None:
    rgb = make_prcc(tmp_path) / "prcc" / "rgb"
    (rgb / "test" / "A" / "Thumbs.db").write_bytes(b"x")
    splits = load_dataset(tmp_path, "prcc")
    assert splits.warnings[0].startswith("1 entries that are not identity folders skipped")
