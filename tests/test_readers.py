"""Readers on tiny folders in each real layout: exact counts, and one test per error rule."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fixtures_layouts import (
    FEDREID_MARKET_FILES,
    FEDREID_VIDEO_FILES,
    fedreid_meta,
    make_3dpes,
    make_3dpes_fastreid,
    make_cuhk01,
    make_cuhk03_np,
    make_duke,
    make_fedreid,
    make_ilids_vid,
    make_market,
    make_msmt17,
    make_prid,
    make_viper,
    write_image,
)

from fedreid.data.readers import READERS, load_dataset
from fedreid.data.readers.prid2011 import CAM_A_ONLY_PID_OFFSET
from fedreid.data.readers.small_split import query_gallery_by_views, split_identities
from fedreid.data.records import DataError, ReidSplits, Sample


def counts(splits: ReidSplits) -> dict[str, tuple[int, int, int]]:
    """(identities, cameras, images) per split."""
    summary = splits.summary()
    return {
        split: (summary[split]["ids"], summary[split]["cams"], summary[split]["images"])
        for split in ("train", "query", "gallery")
    }


def warning_with(splits: ReidSplits, text: str) -> str:
    found = [line for line in splits.warnings if text in line]
    assert len(found) == 1, splits.warnings
    return found[0]


# --- layouts and exact counts -------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True])
def test_market1501_counts_junk_and_distractors(tmp_path: Path, nested: bool) -> None:
    splits = load_dataset(make_market(tmp_path, nested=nested), "market1501")
    assert counts(splits) == {"train": (2, 4, 4), "query": (2, 2, 2), "gallery": (3, 5, 5)}
    assert splits.num_cameras == 6 and not splits.video
    assert sum(s.pid == 0 for s in splits.gallery) == 2  # distractors stay
    assert all(s.pid != -1 for s in splits.gallery)
    assert warning_with(splits, "junk images (pid -1)").startswith("2 ")
    assert warning_with(splits, "non-image entries").startswith("1 ")
    assert "Thumbs.db" in warning_with(splits, "non-image entries")
    first = splits.train[0]
    assert (Path(first.path).name, first.pid, first.camid, first.tracklet) == (
        "0002_c1s1_000451_03.jpg",
        2,
        0,
        -1,
    )
    assert Path(first.path).is_absolute()


@pytest.mark.parametrize("form", ["mat", "json", "csv"])
def test_market_attribute_files(tmp_path: Path, form: str) -> None:
    splits = load_dataset(make_market(tmp_path, attributes=form), "market1501")
    by_pid = {s.pid: s.meta.get("attributes") for s in splits.train + splits.query + splits.gallery}
    assert by_pid[7] == {"age": 4, "backpack": 2}
    assert by_pid[1] == {"age": 2, "backpack": 2}
    assert by_pid[0] is None  # distractors carry no annotation


def test_dukemtmc(tmp_path: Path) -> None:
    splits = load_dataset(make_duke(tmp_path), "dukemtmc")
    assert counts(splits) == {"train": (2, 3, 3), "query": (1, 1, 1), "gallery": (2, 2, 2)}
    assert splits.num_cameras == 8
    assert {s.camid for s in splits.train} == {1, 7, 0}
    assert splits.warnings == []


def test_cuhk03_np_detected_and_labeled(tmp_path: Path) -> None:
    make_cuhk03_np(tmp_path)
    detected = load_dataset(tmp_path, "cuhk03-np-detected")
    labeled = load_dataset(tmp_path, "cuhk03-np-labeled")
    assert counts(detected) == {"train": (1, 2, 2), "query": (1, 1, 1), "gallery": (2, 2, 3)}
    assert counts(labeled)["train"] == (2, 2, 3)
    assert "detected" in detected.root and "labeled" in labeled.root
    assert detected.num_cameras == 2


@pytest.mark.parametrize("version", [1, 2])
def test_msmt17(tmp_path: Path, version: int) -> None:
    splits = load_dataset(make_msmt17(tmp_path, version=version), "msmt17")
    assert counts(splits) == {"train": (2, 3, 3), "query": (1, 1, 1), "gallery": (2, 2, 2)}
    assert splits.num_cameras == 15
    assert sorted(s.camid for s in splits.train) == [0, 4, 14]
    assert warning_with(splits, "named by no list file").startswith("1 ")


def test_cuhk01(tmp_path: Path) -> None:
    splits = load_dataset(make_cuhk01(tmp_path), "cuhk01")
    assert counts(splits) == {"train": (3, 2, 12), "query": (3, 1, 6), "gallery": (3, 1, 6)}
    sample = next(
        s for s in splits.train + splits.query + splits.gallery if s.path.endswith("0002003.png")
    )
    assert (sample.pid, sample.camid) == (2, 1)


def test_viper(tmp_path: Path) -> None:
    splits = load_dataset(make_viper(tmp_path), "viper")
    assert counts(splits) == {"train": (3, 2, 6), "query": (3, 1, 3), "gallery": (3, 1, 3)}
    assert {s.pid for s in splits.query} == {s.pid for s in splits.gallery}


def test_prid2011(tmp_path: Path) -> None:
    splits = load_dataset(make_prid(tmp_path), "prid2011")
    assert counts(splits) == {"train": (5, 2, 8), "query": (3, 1, 3), "gallery": (7, 1, 7)}
    assert {s.pid for s in splits.train if s.pid > 200} == {
        CAM_A_ONLY_PID_OFFSET + 201,
        CAM_A_ONLY_PID_OFFSET + 202,
    }
    assert {s.pid for s in splits.gallery if s.pid > 200} == {201, 202, 203, 204}
    assert all(s.pid <= 6 and s.camid == 0 for s in splits.query)
    assert splits.warnings == []


def test_3dpes_open_reid(tmp_path: Path) -> None:
    splits = load_dataset(make_3dpes(tmp_path), "3dpes")
    assert counts(splits) == {"train": (2, 2, 6), "query": (2, 1, 4), "gallery": (2, 1, 2)}


def test_3dpes_fast_reid(tmp_path: Path) -> None:
    splits = load_dataset(make_3dpes_fastreid(tmp_path), "3dpes")
    assert counts(splits) == {"train": (2, 2, 6), "query": (2, 1, 2), "gallery": (2, 1, 4)}


def test_ilids_vid(tmp_path: Path) -> None:
    splits = load_dataset(make_ilids_vid(tmp_path), "ilids-vid")
    assert splits.video
    summary = splits.summary()
    assert (summary["train"]["ids"], summary["train"]["tracklets"], summary["train"]["images"]) == (
        2,
        4,
        12,
    )
    assert (summary["query"]["tracklets"], summary["query"]["images"]) == (2, 6)
    assert (summary["gallery"]["tracklets"], summary["gallery"]["images"]) == (2, 6)
    assert {s.camid for s in splits.query} == {0} and {s.camid for s in splits.gallery} == {1}
    assert sorted({s.frame for s in splits.query}) == [317, 318, 319]


def test_seeded_split_is_reproducible_and_seed_dependent(tmp_path: Path) -> None:
    make_cuhk01(tmp_path)
    train_pids = [
        frozenset(s.pid for s in load_dataset(tmp_path, "cuhk01", seed=seed).train)
        for seed in range(6)
    ]
    assert train_pids[0] == frozenset(s.pid for s in load_dataset(tmp_path, "cuhk01", seed=0).train)
    assert len(set(train_pids)) > 1
    train, test = split_identities(range(971), seed=3)
    assert (len(train), len(test)) == (485, 486)


def test_small_set_view_rule_sends_single_view_identities_to_gallery() -> None:
    samples = [
        Sample("a", 1, 0),
        Sample("b", 1, 1),
        Sample("c", 2, 1),
        Sample("d", 3, 0),
        Sample("e", 3, 1),
        Sample("f", 3, 2),
    ]
    query, gallery = query_gallery_by_views(samples)
    assert [s.path for s in query] == ["a", "d"]
    assert [s.path for s in gallery] == ["b", "c", "e", "f"]


def test_fedreid_layout_with_meta(tmp_path: Path) -> None:
    splits = load_dataset(make_fedreid(tmp_path, meta=fedreid_meta()), "fedreid")
    assert counts(splits) == {"train": (2, 3, 3), "query": (1, 1, 1), "gallery": (2, 1, 2)}
    assert splits.num_cameras == 3 and not splits.video
    assert splits.name == tmp_path.name
    assert splits.train[2].meta == {
        "outfit": 0,
        "viewpoint": "front",
        "identity": {"role": "train", "hat": False},
        "camera": {"camid": 2, "altitude": 5.0},
    }
    assert splits.warnings == []
    # reading the pytorch/ folder itself finds the same site and meta.json
    again = load_dataset(tmp_path / "pytorch", "fedreid")
    assert again.train == splits.train and again.train[2].meta == splits.train[2].meta


def test_fedreid_meta_keys_may_start_with_pytorch(tmp_path: Path) -> None:
    meta = fedreid_meta()
    meta["images"] = {f"pytorch/{key}": value for key, value in meta["images"].items()}
    del meta["identities"], meta["cameras"]
    splits = load_dataset(make_fedreid(tmp_path, meta=meta), "fedreid")
    assert splits.query[0].meta == {"outfit": 0, "viewpoint": "front"}
    assert splits.warnings == []


def test_fedreid_open_reid_meta_json_is_tolerated(tmp_path: Path) -> None:
    """FedReID's small-set folders keep open-reid's meta.json beside pytorch/."""
    meta = {"name": "3dpes", "shot": "multiple", "num_cameras": 3, "identities": [[["a.bmp"], []]]}
    splits = load_dataset(make_fedreid(tmp_path, meta=meta), "fedreid")
    assert splits.num_cameras == 3 and splits.train[0].meta == {}


def test_fedreid_layout_video_and_market_names(tmp_path: Path) -> None:
    video = load_dataset(make_fedreid(tmp_path / "v", FEDREID_VIDEO_FILES), "fedreid")
    assert video.video and video.num_cameras == 2
    assert video.summary()["gallery"]["tracklets"] == 1
    assert [(s.tracklet, s.frame) for s in video.query] == [(2, 0), (2, 1)]
    market = load_dataset(make_fedreid(tmp_path / "m", FEDREID_MARKET_FILES), "fedreid")
    assert counts(market) == {"train": (1, 2, 2), "query": (1, 1, 1), "gallery": (2, 2, 2)}
    assert warning_with(market, "junk images (pid -1)").startswith("1 ")


def test_fedreid_meta_entries_without_image_are_counted(tmp_path: Path) -> None:
    meta = fedreid_meta()
    meta["images"]["query/0009/cam_0_9_0.png"] = {}
    splits = load_dataset(make_fedreid(tmp_path, meta=meta), "fedreid")
    assert "cam_0_9_0.png" in warning_with(splits, "meta.json image entries")


# --- error rules ----------------------------------------------------------------------------


def test_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="market1501.*fedreid"):
        load_dataset(tmp_path, "market")
    assert set(READERS) == {
        "market1501", "dukemtmc", "cuhk03-np-detected", "cuhk03-np-labeled", "msmt17", "cuhk01",
        "viper", "prid2011", "3dpes", "ilids-vid", "fedreid", "agreid", "agreid-v2", "hitsz-vcm",
        "buptcampus", "ltcc", "prcc",
    }  # fmt: skip


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nowhere", "viper")


def test_missing_split_folder_names_it(tmp_path: Path) -> None:
    make_market(tmp_path)
    shutil.rmtree(tmp_path / "query")
    with pytest.raises(DataError, match=r"query: missing split folder"):
        load_dataset(tmp_path, "market1501")


def test_missing_layout_entirely(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="bounding_box_train: missing split folder"):
        load_dataset(tmp_path, "dukemtmc")
    with pytest.raises(DataError, match="cam_0: missing split folder for 3DPeS"):
        load_dataset(tmp_path, "3dpes")


def test_unparsable_file_name(tmp_path: Path) -> None:
    make_market(tmp_path)
    write_image(tmp_path / "bounding_box_train" / "person7.jpg")
    with pytest.raises(
        DataError, match=r"person7\.jpg: unparsable file name; rule: names start with"
    ):
        load_dataset(tmp_path, "market1501")


def test_camera_out_of_range(tmp_path: Path) -> None:
    make_market(tmp_path)
    write_image(tmp_path / "query" / "0002_c7s1_000451_00.jpg")
    with pytest.raises(
        DataError, match=r"0002_c7s1_000451_00\.jpg: camera 7 out of range for Market-1501"
    ):
        load_dataset(tmp_path, "market1501")


def test_camera_out_of_range_cuhk01(tmp_path: Path) -> None:
    make_cuhk01(tmp_path)
    write_image(tmp_path / "campus" / "0001005.png")
    with pytest.raises(DataError, match=r"0001005\.png: image index 5 gives a camera out of range"):
        load_dataset(tmp_path, "cuhk01")


def test_camera_out_of_range_msmt17(tmp_path: Path) -> None:
    make_msmt17(tmp_path)
    base = tmp_path / "MSMT17_V1"
    write_image(base / "test" / "0001" / "0001_009_16_0113noon_0001_0.jpg")
    with (base / "list_gallery.txt").open("a") as fh:
        fh.write("0001/0001_009_16_0113noon_0001_0.jpg 1\n")
    with pytest.raises(
        DataError, match=r"0001_009_16_0113noon_0001_0\.jpg: camera 16 out of range for MSMT17"
    ):
        load_dataset(tmp_path, "msmt17")


def test_camera_out_of_range_fedreid_meta(tmp_path: Path) -> None:
    make_fedreid(tmp_path, meta=fedreid_meta(num_cameras=2))
    with pytest.raises(DataError, match=r"cam_2_2_0\.png: camera id 2 \(0-based\) out of range"):
        load_dataset(tmp_path, "fedreid")


def test_fedreid_folder_pid_must_match_name(tmp_path: Path) -> None:
    make_fedreid(tmp_path)
    write_image(tmp_path / "pytorch" / "query" / "0005" / "cam_0_6_0.png")
    with pytest.raises(
        DataError, match=r"cam_0_6_0\.png: file-name pid 6 differs from its folder's pid 5"
    ):
        load_dataset(tmp_path, "fedreid")


def test_fedreid_unparsable_folder(tmp_path: Path) -> None:
    make_fedreid(tmp_path)
    write_image(tmp_path / "pytorch" / "gallery" / "bob" / "cam_0_6_0.png")
    with pytest.raises(DataError, match=r"gallery/bob: unparsable identity folder name"):
        load_dataset(tmp_path, "fedreid")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "unreadable meta.json"),
        ('{"video": "yes"}', "'video' is 'yes'"),
        ('{"num_cameras": 0}', "'num_cameras' is 0"),
        ('{"images": {"a": 3}}', "images\\['a'\\] is not an object"),
    ],
)
def test_fedreid_bad_meta_json(tmp_path: Path, content: str, problem: str) -> None:
    make_fedreid(tmp_path)
    (tmp_path / "meta.json").write_text(content)
    with pytest.raises(DataError, match=rf"meta\.json: .*{problem}"):
        load_dataset(tmp_path, "fedreid")


def test_bad_attribute_file(tmp_path: Path) -> None:
    make_market(tmp_path)
    (tmp_path / "market_attribute.csv").write_text("name,age\n2,1\n")
    with pytest.raises(DataError, match=r"market_attribute\.csv: unreadable attribute file"):
        load_dataset(tmp_path, "market1501")


def test_empty_split(tmp_path: Path) -> None:
    make_market(tmp_path)
    for path in (tmp_path / "query").iterdir():
        path.unlink()
    with pytest.raises(DataError, match=r"split 'query' of market1501 is empty"):
        load_dataset(tmp_path, "market1501")


def test_query_without_gallery_match_is_a_counted_warning(tmp_path: Path) -> None:
    make_market(tmp_path)
    write_image(tmp_path / "query" / "0004_c1s1_000001_00.jpg")  # no gallery image of id 4
    write_image(tmp_path / "query" / "0003_c4s1_000009_00.jpg")  # id 3 only in gallery camera 4
    splits = load_dataset(tmp_path, "market1501")
    line = warning_with(splits, "no gallery image")
    assert line.startswith("2 query identities (2 images)")
    assert "0003_c4s1_000009_00.jpg" in line


def test_msmt17_missing_listed_file(tmp_path: Path) -> None:
    make_msmt17(tmp_path)
    (tmp_path / "MSMT17_V1" / "test" / "0000" / "0000_000_02_0113morning_0001_0.jpg").unlink()
    with pytest.raises(
        DataError,
        match=r"list_query\.txt line 1: listed image .*0000_000_02_0113morning_0001_0\.jpg does not exist",
    ):
        load_dataset(tmp_path, "msmt17")


def test_msmt17_same_name_twice(tmp_path: Path) -> None:
    make_msmt17(tmp_path)
    with (tmp_path / "MSMT17_V1" / "list_val.txt").open("a") as fh:
        fh.write("0000/0000_001_05_0303noon_0020_1.jpg 0\n")
    with pytest.raises(
        DataError,
        match=r"list_val\.txt line 2: .*0000_001_05_0303noon_0020_1\.jpg listed again \(first at .*list_train\.txt line 2\)",
    ):
        load_dataset(tmp_path, "msmt17")


def test_msmt17_bad_list_line(tmp_path: Path) -> None:
    make_msmt17(tmp_path)
    (tmp_path / "MSMT17_V1" / "list_query.txt").write_text(
        "0000/0000_000_02_0113morning_0001_0.jpg\n"
    )
    with pytest.raises(DataError, match=r"list_query\.txt line 1: unparsable list line"):
        load_dataset(tmp_path, "msmt17")


def test_zero_byte_image_only_when_validating(tmp_path: Path) -> None:
    make_viper(tmp_path)
    (tmp_path / "VIPeR" / "cam_a" / "000_45.bmp").write_bytes(b"")
    load_dataset(tmp_path, "viper")  # listing never opens images
    with pytest.raises(DataError, match=r"000_45\.bmp: zero-byte image"):
        load_dataset(tmp_path, "viper", validate_images=True)


def test_corrupt_image(tmp_path: Path) -> None:
    make_duke(tmp_path)
    (tmp_path / "DukeMTMC-reID" / "query" / "0001_c2_f0046182.jpg").write_bytes(b"\x00garbage" * 20)
    with pytest.raises(DataError, match=r"0001_c2_f0046182\.jpg: corrupt image"):
        load_dataset(tmp_path, "dukemtmc", validate_images=True)


def test_truncated_jpeg_is_corrupt(tmp_path: Path) -> None:
    make_duke(tmp_path)
    path = tmp_path / "DukeMTMC-reID" / "bounding_box_test" / "0003_c5_f0010000.jpg"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"0003_c5_f0010000\.jpg: corrupt image"):
        load_dataset(tmp_path, "dukemtmc", validate_images=True)


def test_duplicate_content_within_a_split(tmp_path: Path) -> None:
    make_cuhk01(tmp_path)
    shutil.copy(tmp_path / "campus" / "0001001.png", tmp_path / "campus" / "0001002.png")
    with pytest.raises(DataError, match=r"0001002\.png: same content as .*0001001\.png in split"):
        load_dataset(tmp_path, "cuhk01", validate_images=True)


def test_video_frames_may_repeat_inside_their_tracklet(tmp_path: Path) -> None:
    make_ilids_vid(tmp_path)
    folder = tmp_path / "i-LIDS-VID" / "sequences" / "cam1" / "person001"
    shutil.copy(folder / "cam1_person001_00317.png", folder / "cam1_person001_00318.png")
    load_dataset(tmp_path, "ilids-vid", validate_images=True)
    other = (
        tmp_path / "i-LIDS-VID" / "sequences" / "cam2" / "person001" / "cam2_person001_00317.png"
    )
    shutil.copy(folder / "cam1_person001_00317.png", other)
    with pytest.raises(DataError, match=r"same content as"):
        load_dataset(tmp_path, "ilids-vid", validate_images=True)
