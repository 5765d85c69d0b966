"""Scatter and gather at sorted, unique positions: the inner loops of the flat aggregator.

``fold`` adds weighted values into one or more flat buffers at a site's kept positions,
``add_at``/``fill_at`` put one scalar there, ``take`` reads them; ``divide_or_keep`` is the
dense finish (numerator over denominator, the previous value where nobody kept it);
``mark`` sets a site's bit in per-element membership codes and ``finish_coded`` is the same
finish with the denominator looked up per code (``member_lut``) and the numerators'
combination fused in: one pass instead of a scatter per site and four whole-model passes;
``quantise`` makes int8 differences with per-block scales (the codec's int8 uploads and
view steps).

Compiled with numba when it is installed (plain loops: one pass folds a value into every
numerator, ~1 ns per kept value); otherwise torch's ``index_add_``/``index_select`` on CPU
views of the arrays (1.5-2x slower per numerator, one pass each). Both give the same float32 arithmetic per element:
``t[p] += float32(w) * v`` (torch may fuse the multiply-add, a rounding difference of at
most one ulp). Positions must be unique (a site's mask), int32 or int64; values must have
the targets' dtype.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

try:
    from numba import njit
except ImportError:  # numba is optional: torch does the same work a little slower
    njit = None

BACKEND = "numba" if njit is not None else "torch"
_BLOCK = 2048  # elements per block of the compiled finishes (their scratch stays in L1)

if njit is not None:

    @njit(nogil=True, cache=True, boundscheck=False)
    def _fold1(t0, pos, v, w0):  # pragma: no cover - compiled
        for i in range(pos.size):
            t0[pos[i]] += w0 * v[i]

    @njit(nogil=True, cache=True, boundscheck=False)
    def _fold2(t0, t1, pos, v, w0, w1):  # pragma: no cover - compiled
        for i in range(pos.size):
            j = pos[i]
            x = v[i]
            t0[j] += w0 * x
            t1[j] += w1 * x

    @njit(nogil=True, cache=True, boundscheck=False)
    def _add_const(t, pos, w):  # pragma: no cover - compiled
        for i in range(pos.size):
            t[pos[i]] += w

    @njit(nogil=True, cache=True, boundscheck=False)
    def _fill_const(t, pos, w):  # pragma: no cover - compiled
        for i in range(pos.size):
            t[pos[i]] = w

    @njit(nogil=True, cache=True, boundscheck=False)
    def _take(out, src, pos):  # pragma: no cover - compiled
        for i in range(pos.size):
            out[i] = src[pos[i]]

    @njit(nogil=True, cache=True, boundscheck=False)
    def _divide_or_keep(num, den, previous):  # pragma: no cover - compiled
        for i in range(num.size):
            d = den[i]
            if d != 0:
                num[i] = num[i] / d
            else:
                num[i] = previous[i]
                den[i] = 1

    @njit(nogil=True, cache=True, boundscheck=False)
    def _mark(code, pos, bit):  # pragma: no cover - compiled
        for i in range(pos.size):
            code[pos[i]] |= bit

    # The finishes look the denominators up a block at a time, then divide in a second loop:
    # a lookup inside the dividing loop keeps it scalar, and its branch then mispredicts on
    # every randomly kept element (5x slower).
    @njit(nogil=True, cache=True, boundscheck=False)
    def _finish1(a, ca, code, lut, previous):  # pragma: no cover - compiled
        den = np.empty(_BLOCK, lut.dtype)
        for lo in range(0, a.size, _BLOCK):
            m = min(_BLOCK, a.size - lo)
            c, x, p = code[lo : lo + m], a[lo : lo + m], previous[lo : lo + m]
            for j in range(m):
                den[j] = lut[c[j]]
            for j in range(m):
                d = den[j]
                x[j] = (x[j] * ca) / d if d != 0 else p[j]

    @njit(nogil=True, cache=True, boundscheck=False)
    def _finish2(a, b, ca, cb, code, lut, previous):  # pragma: no cover - compiled
        den = np.empty(_BLOCK, lut.dtype)
        for lo in range(0, a.size, _BLOCK):
            m = min(_BLOCK, a.size - lo)
            c, x, y, p = code[lo : lo + m], a[lo : lo + m], b[lo : lo + m], previous[lo : lo + m]
            for j in range(m):
                den[j] = lut[c[j]]
            for j in range(m):
                d = den[j]
                x[j] = (x[j] * ca + y[j] * cb) / d if d != 0 else p[j]

    @njit(nogil=True, cache=True, boundscheck=False)
    def _exponent_all_ones(bits, exp):  # pragma: no cover - compiled
        hit = 0
        for i in range(bits.size):
            hit |= (bits[i] & exp) == exp  # an integer reduction: vectorised, no branch
        return hit != 0

    @njit(nogil=True, cache=True, boundscheck=False)
    def _quantise(x, block, q, scale):  # pragma: no cover - compiled
        for b in range(scale.size):
            lo = b * block
            hi = min(lo + block, x.size)
            m = np.float32(0.0)
            for i in range(lo, hi):
                a = abs(x[i])
                if not a <= m:  # a NaN lands here too and makes the scale NaN
                    m = a
            s = m / np.float32(127.0)
            scale[b] = s
            if not np.isfinite(s):
                return False
            for i in range(lo, hi):
                q[i] = np.int8(min(127.0, max(-127.0, np.rint(x[i] / s)))) if s > 0 else np.int8(0)
        return True

    @njit(nogil=True, cache=True, boundscheck=False)
    def _step(view, target, block, q, scale):  # pragma: no cover - compiled
        for b in range(scale.size):  # every scale first: a NaN leaves the view untouched
            m = np.float32(0.0)
            for i in range(b * block, min((b + 1) * block, view.size)):
                a = abs(target[i] - view[i])
                if not a <= m:
                    m = a
            scale[b] = m / np.float32(127.0)
            if not np.isfinite(scale[b]):
                return False
        for b in range(scale.size):
            s = scale[b]
            for i in range(b * block, min((b + 1) * block, view.size)):
                r = np.int8(min(127.0, max(-127.0, np.rint((target[i] - view[i]) / s)))) if s > 0 else np.int8(0)
                q[i] = r
                view[i] = view[i] + np.float32(r) * s
        return True


def tensor_view(a: np.ndarray) -> torch.Tensor:
    """A torch view of ``a``. Received arrays are read-only views of the wire bytes, which
    torch only reads where this is used, so its warning about non-writable arrays does not
    apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def fold(targets: Sequence[np.ndarray], pos: np.ndarray, values: np.ndarray,
         weights: Sequence[float], backend: str = BACKEND) -> None:
    """``targets[j][pos] += weights[j] * values`` for every j."""
    if backend == "numba":
        ws = [t.dtype.type(w) for t, w in zip(targets, weights, strict=True)]
        for j in range(0, len(targets) - 1, 2):
            _fold2(targets[j], targets[j + 1], pos, values, ws[j], ws[j + 1])
        if len(targets) % 2:
            _fold1(targets[-1], pos, values, ws[-1])
        return
    p, v = tensor_view(pos), tensor_view(values)
    for t, w in zip(targets, weights, strict=True):
        torch.from_numpy(t).index_add_(0, p, v, alpha=float(w))


def add_at(target: np.ndarray, pos: np.ndarray, value: float, backend: str = BACKEND) -> None:
    """``target[pos] += value``."""
    if backend == "numba":
        _add_const(target, pos, target.dtype.type(value))
        return
    t = torch.from_numpy(target)
    t.index_add_(0, tensor_view(pos), torch.full((pos.size,), value, dtype=t.dtype))


def fill_at(target: np.ndarray, pos: np.ndarray, value: float, backend: str = BACKEND) -> None:
    """``target[pos] = value``."""
    if backend == "numba":
        _fill_const(target, pos, target.dtype.type(value))
        return
    torch.from_numpy(target).index_fill_(0, tensor_view(pos).long(), value)  # index_fill_ needs int64


def divide_or_keep(num: np.ndarray, den: np.ndarray, previous: np.ndarray, empty: np.ndarray,
                   backend: str = BACKEND) -> None:
    """``num /= den`` where ``den != 0``, ``num = previous`` (and ``den = 1``) where it is 0:
    SAS's finish for one tensor. ``empty`` is bool scratch of ``num``'s size (NumPy path)."""
    if backend == "numba":
        _divide_or_keep(num, den, previous)
        return
    # Branch-free (a masked copy is 10x slower with scattered empties): num is exactly 0 where
    # den is, so num / (den + e) + previous * e.
    np.equal(den, 0, out=empty)
    np.add(den, empty, out=den)
    np.divide(num, den, out=num)
    if empty.any():
        num += previous * empty


def mark(code: np.ndarray, pos: np.ndarray, bit: int, backend: str = BACKEND) -> None:
    """``code[pos] |= bit`` (unsigned integer codes)."""
    if backend == "numba":
        _mark(code, pos, code.dtype.type(bit))
        return
    code[pos] |= code.dtype.type(bit)


def member_lut(weights: Sequence[float], dtype: np.dtype) -> np.ndarray:
    """Per membership code (bit k: site k kept the element), ``sum_k w_k`` over its bits,
    summed in ``dtype`` in site order, as a per-site scatter-add would sum them; sites with
    weight 0 add nothing."""
    n = len(weights)
    codes = np.arange(1 << n, dtype=np.int64)
    lut = np.zeros(1 << n, dtype=dtype)
    for k, w in enumerate(weights):
        if w != 0:
            sel = (codes >> k) & 1 == 1
            lut[sel] += dtype.type(w)
    return lut


def finish_coded(a: np.ndarray, b: np.ndarray | None, ca: float, cb: float, code: np.ndarray,
                 lut: np.ndarray, previous: np.ndarray, backend: str = BACKEND) -> None:
    """``a = (ca a + cb b) / lut[code]`` in place, ``previous`` where that denominator is 0
    (nobody with positive weight kept the element); ``b`` None drops its term. The float
    operations are those of scaling, adding and dividing array by array."""
    ca, cb = a.dtype.type(ca), a.dtype.type(cb)
    if backend == "numba":
        if b is None:
            _finish1(a, ca, code, lut, previous)
        else:
            _finish2(a, b, ca, cb, code, lut, previous)
        return
    den = lut[code]
    a *= ca
    if b is not None:
        a += b * cb
    kept = den != 0
    np.divide(a, den, out=a, where=kept)
    np.copyto(a, previous, where=~kept)


# Per wire float format, the exponent field of its bits: all ones in inf and NaN. uint16 is
# bfloat16, which the codec sends as its bits.
EXPONENT_BITS = {np.dtype(np.float16): 0x7C00, np.dtype(np.uint16): 0x7F80, np.dtype(np.float32): 0x7F800000,
                 np.dtype(np.float64): 0x7FF0000000000000}
_UNSIGNED = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def all_finite(values: np.ndarray) -> bool | None:
    """No NaN or infinity in a contiguous array of a dtype in :data:`EXPONENT_BITS`: one
    integer pass over the bits. None where the numba kernels are missing, the array is not
    contiguous or its dtype is another; the caller then checks another way."""
    exponent = EXPONENT_BITS.get(values.dtype)
    if njit is None or exponent is None or not values.flags.c_contiguous:
        return None
    bits = values.reshape(-1).view(_UNSIGNED[values.dtype.itemsize])
    return not _exponent_all_ones(bits, bits.dtype.type(exponent))


def take(source: np.ndarray, pos: np.ndarray, backend: str = BACKEND,
         out: np.ndarray | None = None) -> np.ndarray:
    """``source[pos]``, into ``out`` when given, else a new array (a NumPy allocation:
    torch's faults in fresh pages)."""
    if out is None:
        out = np.empty(pos.size, dtype=source.dtype)
    if backend == "numba":
        _take(out, source, pos)
    else:
        torch.index_select(torch.from_numpy(source), 0, tensor_view(pos), out=torch.from_numpy(out))
    return out


def quantise(x: np.ndarray, block: int, backend: str = BACKEND) -> tuple[np.ndarray, np.ndarray] | None:
    """``(q, scale)``: int8 ``q = rint(x / scale)`` with one float32 ``scale`` per ``block``
    values (the block's largest magnitude / 127; 0 and q = 0 for an all-zero block). None when
    ``x`` has a NaN or infinity. Compiled: two passes per block; torch: a padded copy and
    five whole-array passes (10x slower on a ResNet-50)."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    n = x.size
    blocks = -(-n // block)
    if backend == "numba":
        q, scale = np.empty(n, dtype=np.int8), np.empty(blocks, dtype=np.float32)
        return (q, scale) if _quantise(x, block, q, scale) else None
    padded = torch.zeros(blocks * block)
    padded[:n] = torch.from_numpy(x)
    padded = padded.view(blocks, block)
    scale = padded.abs().amax(dim=1) / 127 if n else torch.zeros(0)
    if not bool(torch.isfinite(scale).all()):
        return None
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(padded / divisor[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.view(-1)[:n].numpy().copy(), scale.numpy()


def step_towards(view: np.ndarray, target: np.ndarray, block: int,
                 backend: str = BACKEND) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`quantise` ``target - view`` and add the dequantised step to ``view`` (flat
    float32, in place): ``view += q * scale`` in float32, as a receiver adds it. None (view
    untouched) when the difference has a NaN or infinity. Compiled: two passes."""
    if backend == "numba":
        q, scale = np.empty(view.size, dtype=np.int8), np.empty(-(-view.size // block), dtype=np.float32)
        return (q, scale) if _step(view, np.ascontiguousarray(target, dtype=np.float32), block, q, scale) else None
    out = quantise(np.asarray(target, dtype=np.float32) - view, block, backend)
    if out is None:
        return None
    q, scale = out
    view += dequantise(q, scale, block)
    return q, scale


def dequantise(q: np.ndarray, scale: np.ndarray, block: int) -> np.ndarray:
    """float32 ``q * scale`` of :func:`quantise` (one scale per ``block`` values)."""
    padded = np.zeros(scale.size * block, dtype=np.float32)
    padded[: q.size] = q
    blocks = padded.reshape(scale.size, block)
    blocks *= scale.astype(np.float32, copy=False)[:, None]
    return padded[: q.size]
