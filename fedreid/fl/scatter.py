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
numerator, ~1 ns per kept value), and then split over :func:`set_threads` threads;
otherwise torch's ``index_add_``/``index_select`` on CPU views of the arrays (1.5-2x slower
per numerator, one pass each). Both give the same float32 arithmetic per element:
``t[p] += float32(w) * v`` (torch may fuse the multiply-add, a rounding difference of at
most one ulp). Positions must be unique (a site's mask), int32 or int64; values must have
the targets' dtype.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

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
    def _step_scales(view, target, block, scale):  # pragma: no cover - compiled
        for b in range(scale.size):
            m = np.float32(0.0)
            for i in range(b * block, min((b + 1) * block, view.size)):
                a = abs(target[i] - view[i])
                if not a <= m:
                    m = a
            scale[b] = m / np.float32(127.0)
            if not np.isfinite(scale[b]):
                return False
        return True

    @njit(nogil=True, cache=True, boundscheck=False)
    def _step_apply(view, target, block, q, scale):  # pragma: no cover - compiled
        for b in range(scale.size):
            s = scale[b]
            for i in range(b * block, min((b + 1) * block, view.size)):
                r = np.int8(min(127.0, max(-127.0, np.rint((target[i] - view[i]) / s)))) if s > 0 else np.int8(0)
                q[i] = r
                view[i] = view[i] + np.float32(r) * s


# ---- threads -----------------------------------------------------------------------------
# A large call is split into contiguous ranges of positions (unique, so no two threads write
# one element) or of elements, one per thread; every element sees the same operations in the
# same order, so the result does not depend on the thread count. Only the compiled kernels
# split: they release the GIL.

_MIN_SPLIT = 1 << 18  # elements per thread below which handing work over costs more than it saves
_threads = 1
_pool: ThreadPoolExecutor | None = None


def set_threads(n: int) -> None:
    """Threads the compiled kernels may split a large call over (1: the calling thread only)."""
    global _threads, _pool
    if n < 1:
        raise ValueError(f"threads: {n} must be at least 1")
    if n == _threads:
        return
    if _pool is not None:
        _pool.shutdown(wait=True)
    _pool = ThreadPoolExecutor(n - 1, thread_name_prefix="fedreid-scatter") if n > 1 else None
    _threads = n


def threads() -> int:
    """The thread count :func:`set_threads` set."""
    return _threads


def _split(fn: Callable[[int, int], object], n: int, align: int = 1) -> list:
    """``fn(lo, hi)`` over contiguous ranges of ``[0, n)`` (bounds multiples of ``align``), the
    first on this thread and the rest on the pool; their results in range order."""
    parts = min(_threads, n // _MIN_SPLIT)
    if parts < 2:
        return [fn(0, n)]
    per = -(-n // parts)  # ceil(n / parts), rounded up to a multiple of align
    step = -(-per // align) * align
    ranges = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
    futures = [_pool.submit(fn, lo, hi) for lo, hi in ranges[1:]]
    first = fn(*ranges[0])
    return [first, *(f.result() for f in futures)]


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

        def part(lo: int, hi: int) -> None:
            p, v = pos[lo:hi], values[lo:hi]
            for j in range(0, len(targets) - 1, 2):
                _fold2(targets[j], targets[j + 1], p, v, ws[j], ws[j + 1])
            if len(targets) % 2:
                _fold1(targets[-1], p, v, ws[-1])

        _split(part, pos.size)
        return
    p, v = tensor_view(pos), tensor_view(values)
    for t, w in zip(targets, weights, strict=True):
        torch.from_numpy(t).index_add_(0, p, v, alpha=float(w))


def add_at(target: np.ndarray, pos: np.ndarray, value: float, backend: str = BACKEND) -> None:
    """``target[pos] += value``."""
    if backend == "numba":
        w = target.dtype.type(value)
        _split(lambda lo, hi: _add_const(target, pos[lo:hi], w), pos.size)
        return
    t = torch.from_numpy(target)
    t.index_add_(0, tensor_view(pos), torch.full((pos.size,), value, dtype=t.dtype))


def fill_at(target: np.ndarray, pos: np.ndarray, value: float, backend: str = BACKEND) -> None:
    """``target[pos] = value``."""
    if backend == "numba":
        w = target.dtype.type(value)
        _split(lambda lo, hi: _fill_const(target, pos[lo:hi], w), pos.size)
        return
    torch.from_numpy(target).index_fill_(0, tensor_view(pos).long(), value)  # index_fill_ needs int64


def divide_or_keep(num: np.ndarray, den: np.ndarray, previous: np.ndarray, empty: np.ndarray,
                   backend: str = BACKEND) -> None:
    """``num /= den`` where ``den != 0``, ``num = previous`` (and ``den = 1``) where it is 0:
    SAS's finish for one tensor. ``empty`` is bool scratch of ``num``'s size (NumPy path)."""
    if backend == "numba":
        _split(lambda lo, hi: _divide_or_keep(num[lo:hi], den[lo:hi], previous[lo:hi]), num.size)
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
        b = code.dtype.type(bit)
        _split(lambda lo, hi: _mark(code, pos[lo:hi], b), pos.size)
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
            _split(lambda lo, hi: _finish1(a[lo:hi], ca, code[lo:hi], lut, previous[lo:hi]), a.size)
        else:
            _split(lambda lo, hi: _finish2(a[lo:hi], b[lo:hi], ca, cb, code[lo:hi], lut, previous[lo:hi]),
                   a.size)
        return
    den = lut[code]
    a *= ca
    if b is not None:
        a += b * cb
    kept = den != 0
    np.divide(a, den, out=a, where=kept)
    np.copyto(a, previous, where=~kept)


def take(source: np.ndarray, pos: np.ndarray, backend: str = BACKEND,
         out: np.ndarray | None = None) -> np.ndarray:
    """``source[pos]``, into ``out`` when given, else a new array (a NumPy allocation:
    torch's faults in fresh pages)."""
    if out is None:
        out = np.empty(pos.size, dtype=source.dtype)
    if backend == "numba":
        _split(lambda lo, hi: _take(out[lo:hi], source, pos[lo:hi]), pos.size)
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

        def part(lo: int, hi: int) -> bool:
            return _quantise(x[lo:hi], block, q[lo:hi], scale[lo // block : -(-hi // block)])

        return (q, scale) if all(_split(part, n, block)) else None
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
        n = view.size
        q, scale = np.empty(n, dtype=np.int8), np.empty(-(-n // block), dtype=np.float32)
        target = np.ascontiguousarray(target, dtype=np.float32)

        def blocks(lo: int, hi: int) -> slice:
            return slice(lo // block, -(-hi // block))

        # every scale first: a NaN anywhere leaves the view untouched
        if not all(_split(lambda lo, hi: _step_scales(view[lo:hi], target[lo:hi], block,
                                                      scale[blocks(lo, hi)]), n, block)):
            return None
        _split(lambda lo, hi: _step_apply(view[lo:hi], target[lo:hi], block, q[lo:hi],
                                          scale[blocks(lo, hi)]), n, block)
        return q, scale
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
