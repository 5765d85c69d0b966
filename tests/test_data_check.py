"""`check_dataset` / `render_check_table` on the tiny layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_layouts import (
    FEDREID_VIDEO_FILES,
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
)
from rich.console import Console

from fedreid.data.check import check_dataset, render_check_report, render_check_table
from fedreid.data.readers import load_dataset
from fedreid.data.records import DataError

BUILDERS = {
    "market1501": make_market,
    "dukemtmc": make_duke,
    "cuhk03-np-detected": make_cuhk03_np,
    "cuhk03-np-labeled": make_cuhk03_np,
    "msmt17": make_msmt17,
    "cuhk01": make_cuhk01,
    "viper": make_viper,
    "prid2011": make_prid,
    "3dpes": make_3dpes,
    "ilids-vid": make_ilids_vid,
    "fedreid": make_fedreid,
}


def render(report: dict) -> str:
    console = Console(record=True, width=200)
    console.print(render_check_report(report))
    return console.export_text()


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_layout_passes_the_full_check(tmp_path: Path, name: str) -> None:
    report = check_dataset(BUILDERS[name](tmp_path), name)
    assert report["dataset"] == name
    assert report["images"] == sum(
        report[split]["images"] for split in ("train", "query", "gallery")
    )
    assert report["image_size"] == {"min": [8, 4], "median": [8, 4], "max": [8, 4]}
    json.dumps(report)  # the CLI prints this for --json


def test_market_report_numbers(tmp_path: Path) -> None:
    report = check_dataset(make_market(tmp_path), "market1501", seed=3)
    assert (report["identities"], report["images"], report["num_cameras"], report["seed"]) == (
        5,
        11,
        6,
        3,
    )
    assert report["gallery"] == {"ids": 3, "cams": 5, "images": 5}
    assert len(report["warnings"]) == 2
    text = render(report)
    assert "market1501" in text and "gallery" in text and "8x4" in text
    assert "2 warning(s)" in text and "warning: 2 junk images (pid -1)" in text
    assert render_check_table(report).row_count == 4


def test_video_report_counts_tracklets(tmp_path: Path) -> None:
    report = check_dataset(make_ilids_vid(tmp_path), "ilids-vid")
    assert report["video"] and report["tracklets"] == 8
    assert report["query"]["tracklets"] == 2
    assert "tracklets" in render(report)
    site = check_dataset(make_fedreid(tmp_path / "site", FEDREID_VIDEO_FILES), "fedreid")
    assert site["video"] and site["tracklets"] == 4


def test_fast_reid_3dpes_and_sizes_vary(tmp_path: Path) -> None:
    make_3dpes_fastreid(tmp_path)
    from PIL import Image

    Image.new("RGB", (6, 20), (1, 2, 3)).save(tmp_path / "3DPeS" / "1" / "1_3_000_100.bmp")
    report = check_dataset(tmp_path, "3dpes")
    assert report["image_size"]["max"] == [20, 6] and report["image_size"]["min"] == [8, 4]


def test_check_stops_on_a_corrupt_image(tmp_path: Path) -> None:
    make_market(tmp_path)
    (tmp_path / "bounding_box_train" / "0002_c1s1_000451_03.jpg").write_bytes(
        b"JFIF but not really"
    )
    with pytest.raises(DataError, match=r"0002_c1s1_000451_03\.jpg: corrupt image"):
        check_dataset(tmp_path, "market1501")


def test_check_stops_on_a_duplicate(tmp_path: Path) -> None:
    first, second = load_dataset(make_viper(tmp_path), "viper").gallery[:2]
    Path(second.path).write_bytes(Path(first.path).read_bytes())
    with pytest.raises(
        DataError, match=rf"{Path(second.path).name}: same content as .*{Path(first.path).name}"
    ):
        check_dataset(tmp_path, "viper", seed=0)
