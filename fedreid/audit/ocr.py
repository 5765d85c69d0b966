"""OCR engines that run without a download: text lines and where they are in the image.

- ``tesseract``: the Debian/Ubuntu ``tesseract-ocr`` binary (with ``tesseract-ocr-eng``)
  through ``pytesseract``. Person crops are small, so the image is enlarged before reading
  (``scale``, Lanczos) and read as sparse text (``--psm 11``: no page layout assumed).
- ``rapidocr``: ``rapidocr-onnxruntime``, whose wheel carries its detection, orientation and
  recognition ONNX models (PP-OCRv4). Its recogniser was trained on Chinese and English and
  often drops the spaces between words.

Both return :class:`TextLine` s in the input image's pixel coordinates, so redaction can blur
exactly what was read.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

# In the order "auto" tries them: RapidOCR reads text on busy person crops far better
# (sims/bench/audit_quality measures both).
ENGINES = ("rapidocr", "tesseract")


@dataclass(frozen=True)
class TextLine:
    """One line of text: what it says, the engine's confidence in [0, 1], and its box
    ``(x0, y0, x1, y1)`` in pixels of the image that was read."""

    text: str
    confidence: float
    box: tuple[int, int, int, int]


class OcrEngine(Protocol):
    """Reads the text lines of one RGB uint8 image ``[H, W, 3]``."""

    name: str

    def read(self, image: np.ndarray) -> list[TextLine]: ...


def engine_problem(name: str) -> str | None:
    """Why engine ``name`` cannot run here (with the install command), or None if it can."""
    if name == "tesseract":
        if importlib.util.find_spec("pytesseract") is None:
            return "the Python package pytesseract is missing: pip install 'fedreid[audit]'"
        if shutil.which("tesseract") is None:
            return ("the tesseract binary is not on PATH: apt-get install tesseract-ocr "
                    "tesseract-ocr-eng (Debian/Ubuntu)")
        return None
    if name == "rapidocr":
        if importlib.util.find_spec("rapidocr_onnxruntime") is None:
            return "rapidocr-onnxruntime is missing: pip install 'fedreid[audit]'"
        return None
    raise ValueError(f"OCR engine {name!r} is not one of {', '.join(ENGINES)}")


class TesseractOcr:
    """Tesseract via pytesseract; one tesseract process per image, one thread each (the
    audit runs several images at once instead)."""

    name = "tesseract"

    def __init__(self, *, scale: float = 3.0, min_confidence: float = 0.5, psm: int = 11) -> None:
        problem = engine_problem("tesseract")
        if problem:
            raise ValueError(f"OCR engine tesseract: {problem}")
        if scale < 1.0 or not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"scale={scale}, min_confidence={min_confidence}: the scale must be "
                             ">= 1 and the confidence in [0, 1]")
        import pytesseract

        os.environ.setdefault("OMP_THREAD_LIMIT", "1")
        self._tesseract = pytesseract
        self.scale, self.min_confidence, self.psm = scale, min_confidence, psm

    def read(self, image: np.ndarray) -> list[TextLine]:
        gray = Image.fromarray(image).convert("L")
        if self.scale > 1.0:
            gray = gray.resize((round(gray.width * self.scale), round(gray.height * self.scale)),
                               Image.LANCZOS)
        data = self._tesseract.image_to_data(
            gray, config=f"--oem 1 --psm {self.psm}", output_type=self._tesseract.Output.DICT)
        lines: dict[tuple[int, int, int], list[int]] = {}
        for i, word in enumerate(data["text"]):
            if word.strip() and float(data["conf"][i]) / 100.0 >= self.min_confidence:
                key = (data["block_num"][i], data["par_num"][i], data["line_num"][i])
                lines.setdefault(key, []).append(i)
        out = []
        for members in lines.values():
            x0 = min(data["left"][i] for i in members)
            y0 = min(data["top"][i] for i in members)
            x1 = max(data["left"][i] + data["width"][i] for i in members)
            y1 = max(data["top"][i] + data["height"][i] for i in members)
            text = " ".join(data["text"][i].strip() for i in members)
            confidence = min(float(data["conf"][i]) for i in members) / 100.0
            box = tuple(int(round(v / self.scale)) for v in (x0, y0, x1, y1))
            out.append(TextLine(text, round(confidence, 3), box))
        return out


class RapidOcr:
    """RapidOCR with its bundled ONNX models, one thread per image.

    A small image is enlarged ``scale`` times (never past ``limit_side`` px, the detector's
    input cap; RapidOCR's own default enlarges *every* image to 736 px, seconds per crop), and
    detected boxes are widened (``unclip_ratio`` 2.0, RapidOCR's 1.6 cuts first letters off).
    On planted text both find more than RapidOCR's defaults, at about a third of the speed."""

    name = "rapidocr"

    def __init__(self, *, min_confidence: float = 0.5, limit_side: int = 960, scale: float = 2.0,
                 unclip_ratio: float = 2.0, box_thresh: float = 0.5) -> None:
        problem = engine_problem("rapidocr")
        if problem:
            raise ValueError(f"OCR engine rapidocr: {problem}")
        from rapidocr_onnxruntime import RapidOCR

        self.min_confidence, self.scale, self.limit_side = min_confidence, scale, limit_side
        self.unclip_ratio, self.box_thresh = unclip_ratio, box_thresh
        self._ocr = RapidOCR(det_limit_side_len=limit_side, det_limit_type="max",
                             intra_op_num_threads=1, inter_op_num_threads=1)

    def read(self, image: np.ndarray) -> list[TextLine]:
        picture = Image.fromarray(image)
        scale = max(1.0, min(self.scale, self.limit_side / max(picture.size)))
        if scale != 1.0:
            picture = picture.resize((round(picture.width * scale), round(picture.height * scale)),
                                     Image.LANCZOS)
        bgr = np.ascontiguousarray(np.asarray(picture)[:, :, ::-1])  # it expects OpenCV's BGR
        result, _ = self._ocr(bgr, unclip_ratio=self.unclip_ratio, box_thresh=self.box_thresh,
                              text_score=self.min_confidence)
        out = []
        for quad, text, score in result or []:
            if not text.strip() or float(score) < self.min_confidence:
                continue
            xs = [p[0] / scale for p in quad]
            ys = [p[1] / scale for p in quad]
            box = (int(min(xs)), int(min(ys)), int(np.ceil(max(xs))), int(np.ceil(max(ys))))
            out.append(TextLine(text.strip(), round(float(score), 3), box))
        return out


def resolve_engine(name: str) -> str:
    """``name`` itself, or for ``"auto"`` the first of ``ENGINES`` that can run here. Raises
    ValueError naming what to install when the engine (or every engine) cannot run."""
    if name == "auto":
        problems = {engine: engine_problem(engine) for engine in ENGINES}
        usable = [engine for engine, problem in problems.items() if problem is None]
        if not usable:
            raise ValueError("no OCR engine can run: " + "; ".join(
                f"{engine}: {problem}" for engine, problem in problems.items()))
        return usable[0]
    if name not in ENGINES:
        raise ValueError(f"--ocr {name!r} is not auto or one of {', '.join(ENGINES)}")
    problem = engine_problem(name)
    if problem:
        raise ValueError(f"--ocr {name}: {problem}")
    return name


def make_ocr(name: str, *, min_confidence: float = 0.5) -> OcrEngine:
    """An engine by name (``ENGINES`` or ``"auto"``, see :func:`resolve_engine`)."""
    name = resolve_engine(name)
    if name == "tesseract":
        return TesseractOcr(min_confidence=min_confidence)
    return RapidOcr(min_confidence=min_confidence)


def join_lines(lines: list[TextLine], *, max_gap: float = 1.2) -> list[TextLine]:
    """Merge boxes that continue one line: OCR detectors cut a phone number at a wide space
    (``+1`` | ``415 555 0724``), and a recogniser reads each piece alone. Two boxes join when
    they overlap vertically by half the lower one's height and the horizontal gap is at most
    ``max_gap`` times that height. The joined line keeps the lower confidence."""
    pending = sorted(lines, key=lambda line: (line.box[0], line.box[1]))
    merged: list[TextLine] = []
    for line in pending:
        x0, y0, x1, y1 = line.box
        for k, other in enumerate(merged):
            a0, b0, a1, b1 = other.box
            height = min(y1 - y0, b1 - b0)
            overlap = min(y1, b1) - max(y0, b0)
            if height > 0 and overlap >= 0.5 * height and -height <= x0 - a1 <= max_gap * height:
                merged[k] = TextLine(f"{other.text} {line.text}", min(other.confidence, line.confidence),
                                     (a0, min(y0, b0), max(x1, a1), max(y1, b1)))
                break
        else:
            merged.append(line)
    return merged
