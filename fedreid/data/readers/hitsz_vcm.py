"""HITSZ-VCM: video visible-infrared person re-identification (Lin et al., CVPR 2022).

Layout, from the data set README (``VCM-project233/HITSZ-VCM-data``) and the published loaders
(``VCM-project233/MITML`` ``data_manager.py``, third-party managers that name the folders)::

    <root>/Train/<pid>/{ir,rgb}/D<camera>/<frame>.jpg      training frames
    <root>/Test/<pid>/{ir,rgb}/D<camera>/<frame>.jpg       test frames
    <root>/info/train_name.txt     one frame name per line, e.g. 0001M2D3T1F1.jpg
    <root>/info/track_train_info.txt   one tracklet per line: "<m> <start> <end> <pid> <camera>"
    <root>/info/test_name.txt, track_test_info.txt         the same for the test set
    <root>/info/query_IDX.txt      1-based rows of track_test_info.txt that form the query

The README draws the pid folders and the info files side by side in one ``data/`` folder, so
``Train/``/``Test/`` and ``info/`` are each optional (frames and info files then sit in the root).

A frame name ``<pid>M<m>D<camera>T<tracklet>F<frame file>`` maps to
``<pid>/<ir if m == 1 else rgb>/D<camera>/<frame file>`` (the loaders' ``decoder_pic_path``);
``<start>..<end>`` are 1-based, inclusive lines of the name file; ``m`` is 1 (infrared) or 2
(visible); cameras are 1..12 (the CVPR paper's 12 cameras; assumption: not checked against the
files). Every frame's pid, modality and camera must agree with its tracklet row.

The published test script (MITML ``test.py``) reads the data with ``min_seq_len=12``: tracklets
of fewer than ``MIN_SEQ_LEN`` frames are dropped (counted in the warnings), in training and test
alike. The query rows are the infrared test tracklets and the rest the visible ones (a
third-party loader notes "Infrared Query & Visible Gallery"); infrared->visible evaluates the
query against the gallery and visible->infrared swaps the two, which
``fedreid.eval.cross_modality`` does. Counts a third-party loader prints with min_seq_len 12:
train 500 ids, 9,751 tracklets (4,291 infrared, 5,460 visible), 224,757 frames; query 4,584
tracklets (105,979 frames); gallery 5,099 tracklets (118,137 frames). Not run on the real data
here (no download is possible); ``fedreid data check`` prints what a copy holds.

``Sample.tracklet`` is the tracklet's row (test rows numbered after the training rows, so ids
are unique), ``Sample.frame`` the frame file's number, ``meta["modality"]`` "infrared" or
"visible"; camids are 0-based (``D1`` -> 0).
"""

from __future__ import annotations

import os
import re

from fedreid.data.readers.common import Tally, absolute, finish
from fedreid.data.readers.listing import FolderIndex
from fedreid.data.records import DataError, ReidSplits, Sample

NUM_CAMERAS = 12
MIN_SEQ_LEN = 12
_MODALITY = {1: ("ir", "infrared"), 2: ("rgb", "visible")}
_INFO_FILES = (
    "train_name.txt",
    "track_train_info.txt",
    "test_name.txt",
    "track_test_info.txt",
    "query_IDX.txt",
)
_NESTS = ("", "HITSZ-VCM", "VCM", "VCM-HITSZ")
_NAME = re.compile(r"^(\d+)M(\d+)D(\d+)T(\d+)F(.+)$")
_NAME_RULE = "'<pid>M<modality>D<camera>T<tracklet>F<frame number>.<ext>', e.g. 0001M2D3T1F1.jpg"
_FRAME = re.compile(r"^(\d+)\.")
_ROW_RULE = "'<modality 1|2> <start> <end> <pid> <camera>' (integers, start <= end)"
_META = {m: {"modality": modality} for m, (_, modality) in _MODALITY.items()}


def _find(top: str) -> tuple[str, str]:
    """The data root and the folder holding the five info files."""
    for nest in _NESTS:
        base = os.path.join(top, nest) if nest else top
        info = os.path.join(base, "info")
        info = info if os.path.isdir(info) else base
        present = [name for name in _INFO_FILES if os.path.isfile(os.path.join(info, name))]
        if len(present) == len(_INFO_FILES):
            return base, info
        if present:
            missing = next(name for name in _INFO_FILES if name not in present)
            raise DataError(
                f"{os.path.join(info, missing)}: missing info file for HITSZ-VCM; rule: the info "
                f"folder holds {', '.join(_INFO_FILES)}; fix: restore it from the info archive"
            )
    raise DataError(
        f"{os.path.join(top, 'info', _INFO_FILES[0])}: missing info file for HITSZ-VCM (looked in "
        f"{top} and its {', '.join(n for n in _NESTS if n)} sub-folders, with and without info/); "
        "rule: HITSZ-VCM needs the five info files beside Train/ and Test/; fix: point the root "
        "at the unpacked data set"
    )


def _lines(path: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of the non-empty lines."""
    with open(path, encoding="utf-8") as fh:
        return [(n, line.strip()) for n, line in enumerate(fh, start=1) if line.strip()]


def _ints(path: str, number: int, text: str, rule: str) -> list[int]:
    try:
        return [int(part) for part in text.split()]
    except ValueError:
        raise DataError(
            f"{path} line {number}: unparsable line {text!r}; rule: {rule}; fix: correct the line"
        ) from None


def _bad_frame_name(names_path: str, number: int, name: str) -> DataError:
    return DataError(
        f"{names_path} line {number}: unparsable frame name {name!r}; rule: {_NAME_RULE}; "
        "fix: restore the name file from the info archive"
    )


def _tracklets(
    info: str, subset: str, frame_root: str, first_id: int, frames: FolderIndex, tally: Tally
) -> list[list[Sample]]:
    """One list of frames per row of ``track_<subset>_info.txt`` (empty for dropped rows)."""
    names_path = os.path.join(info, f"{subset}_name.txt")
    rows_path = os.path.join(info, f"track_{subset}_info.txt")
    with open(names_path, encoding="utf-8") as fh:
        names = [line.strip() for line in fh]
    out: list[list[Sample]] = []
    for row, (number, text) in enumerate(_lines(rows_path)):
        where = f"{rows_path} line {number}"
        values = _ints(rows_path, number, text, _ROW_RULE)
        if len(values) != 5:
            raise DataError(
                f"{where}: {len(values)} fields; rule: {_ROW_RULE}; fix: correct the line"
            )
        modality, start, end, pid, camera = values
        if modality not in _MODALITY or not 1 <= start <= end <= len(names):
            raise DataError(
                f"{where}: modality {modality}, frames {start}..{end} of {len(names)} in "
                f"{os.path.basename(names_path)}; rule: {_ROW_RULE}, frames within the name file; "
                "fix: correct the line or restore the name file"
            )
        if not 1 <= camera <= NUM_CAMERAS:
            raise DataError(
                f"{where}: camera {camera} out of range for HITSZ-VCM; rule: cameras are "
                f"1..{NUM_CAMERAS}; fix: correct the line"
            )
        if end - start + 1 < MIN_SEQ_LEN:
            tally.add(
                f"{subset} tracklets shorter than {MIN_SEQ_LEN} frames dropped "
                "(the published protocol's min_seq_len)",
                where,
            )
            out.append([])
            continue
        folder_name, _ = _MODALITY[modality]
        samples = []
        for index in range(start - 1, end):
            name = names[index]
            match = _NAME.match(name)
            if match is None:
                raise _bad_frame_name(names_path, index + 1, name)
            pid_text, m_text, d_text, _, picture = match.groups()
            if (int(pid_text), int(m_text), int(d_text)) != (pid, modality, camera):
                raise DataError(
                    f"{names_path} line {index + 1}: frame {name} (pid {int(pid_text)}, modality "
                    f"{m_text}, camera {d_text}) lies in the tracklet of {where} (pid {pid}, "
                    f"modality {modality}, camera {camera}); rule: a tracklet's frames share its "
                    "pid, modality and camera; fix: restore the info files from the archive"
                )
            frame = _FRAME.match(picture)
            if frame is None:
                raise _bad_frame_name(names_path, index + 1, name)
            folder = os.path.join(frame_root, pid_text, folder_name, f"D{d_text}")
            if not frames.exists(folder, picture):
                raise DataError(
                    f"{os.path.join(folder, picture)}: listed frame does not exist (named by "
                    f"{names_path} line {index + 1}); rule: every listed frame must be present; "
                    "fix: unpack the Train/Test archives completely"
                )
            samples.append(
                Sample(
                    os.path.join(folder, picture),
                    pid,
                    camera - 1,
                    first_id + row,
                    int(frame.group(1)),
                    _META[modality],
                )
            )
        out.append(samples)
    return out


def _query_rows(path: str, num_rows: int) -> set[int]:
    """0-based query rows from the 1-based indices of ``query_IDX.txt``."""
    rows: set[int] = set()
    for number, text in _lines(path):
        for index in _ints(path, number, text, "whitespace-separated 1-based row numbers"):
            if not 1 <= index <= num_rows:
                raise DataError(
                    f"{path} line {number}: row {index} out of range; rule: 1-based rows of "
                    f"track_test_info.txt (1..{num_rows}); fix: restore the file"
                )
            if index - 1 in rows:
                raise DataError(
                    f"{path} line {number}: row {index} listed twice; rule: each query row once; "
                    "fix: restore the file"
                )
            rows.add(index - 1)
    return rows


def read_hitsz_vcm(root: str | os.PathLike, *, seed: int = 0) -> ReidSplits:
    """HITSZ-VCM at ``root`` (or ``root/HITSZ-VCM``, ``VCM``, ``VCM-HITSZ``). ``seed`` is unused:
    the split is fixed by the info files."""
    base, info = _find(absolute(root))
    train_root = os.path.join(base, "Train")
    test_root = os.path.join(base, "Test")
    train_root = train_root if os.path.isdir(train_root) else base
    test_root = test_root if os.path.isdir(test_root) else base
    tally = Tally()
    frames = FolderIndex()
    train_rows = _tracklets(info, "train", train_root, 0, frames, tally)
    test_rows = _tracklets(info, "test", test_root, len(train_rows), frames, tally)
    query_rows = _query_rows(os.path.join(info, "query_IDX.txt"), len(test_rows))
    train = [s for samples in train_rows for s in samples]
    query = [s for row, samples in enumerate(test_rows) if row in query_rows for s in samples]
    gallery = [s for row, samples in enumerate(test_rows) if row not in query_rows for s in samples]
    return finish("hitsz-vcm", base, train, query, gallery, NUM_CAMERAS, tally, video=True)


__all__ = ["MIN_SEQ_LEN", "NUM_CAMERAS", "read_hitsz_vcm"]
