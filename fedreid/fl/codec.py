"""Sparse wire codec for pruned model states, and the server-side validator of replies.

Flower sends every ``Array`` as the ``np.save`` bytes of a dense ndarray and neither
compresses nor exploits zeros (research/flower.md §5), so a pruned model costs as much as a
dense one unless it is encoded. ``encode_sparse`` turns a state plus masks into flat
ndarrays, one per key, ready for an ``ArrayRecord``:

- ``"<name>::bits"``   uint8, ``np.packbits`` of the flattened mask (big-endian bit order,
  first element in the most significant bit, unused bits of the last byte zero);
- ``"<name>::values"`` 1-D surviving values in row-major order, dtype ``value_dtype``
  (``"float32"``, exact, or ``"float16"``, half the bytes);
- ``"<name>::shape"``  int64 1-D array with the tensor's shape (empty for a scalar);
- ``"<name>::dense"``  unmasked tensors as they are (own dtype; BN parameters, running
  statistics and integer buffers such as ``num_batches_tracked``).

A masked float32 tensor at density d costs about ``n/8 + 4*d*n`` bytes instead of ``4*n``
(``n/8 + 2*d*n`` in float16), so sparse encoding pays off below a density of about 97 %.
Names must not contain ``"::"``. ``decode_sparse`` is the exact inverse; pruned positions
decode to +0.0 and float16 values decode to float32 (the training dtype; float16 is only a
transport format). ``split_encoded`` checks the structure without expanding anything, so the
server can fold replies into SAS straight from the sparse form (``SasAccumulator.add_encoded``)
and ``decode_masks`` gives it the masks alone.

``npy_view`` reads one Flower ``Array`` payload (``np.save`` bytes) as a read-only view of the
bytes: Flower's ``Array.numpy()`` goes through ``np.load``, which copies every array twice and
costs ~0.1 ms of header parsing per array, more than the rest of a server's work on a small
BN tensor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from io import BytesIO
from math import prod
from typing import NamedTuple

import numpy as np

SEP = "::"
SPARSE_PARTS = ("bits", "values", "shape")
VALUE_DTYPES = ("float32", "float16")
_FP16_MAX = float(np.finfo(np.float16).max)


_NPY_MAGIC = b"\x93NUMPY"
# The header np.save writes for a plain array (numpy.lib.format.header_data_from_array_1_0).
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|=][biuf][0-9]+)', 'fortran_order': (True|False), "
    rb"'shape': \(([0-9]+(?:, [0-9]+)*,?)?\), \} *\n"
)


class SparseTensor(NamedTuple):
    """One masked tensor as sent: packed bitmap, kept values (row-major), shape."""

    bits: np.ndarray
    values: np.ndarray
    shape: tuple[int, ...]


@lru_cache(maxsize=4096)
def _npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool] | None:
    """(dtype, shape, fortran order) of a plain numeric array's header; cached because every
    site sends the same headers round after round."""
    match = _NPY_HEADER.fullmatch(header)
    if match is None:
        return None
    descr, fortran, dims = match.groups()
    shape = tuple(int(d) for d in (dims or b"").split(b",") if d.strip())
    return np.dtype(descr.decode()), shape, fortran == b"True"


def npy_view(data: bytes) -> np.ndarray:
    """The array in ``np.save`` bytes, as a read-only view of ``data`` (no copy).

    Plain numeric arrays (bool, int, uint, float) take a fast path; anything else (other
    header layouts, structured dtypes) goes through ``np.load`` without pickles, as Flower's
    ``Array.numpy()`` does.
    """
    parsed = None
    version = data[6:7]
    if data[:6] == _NPY_MAGIC and version in (b"\x01", b"\x02", b"\x03"):
        start = 10 if version == b"\x01" else 12
        offset = start + int.from_bytes(data[8:start], "little")
        parsed = _npy_header(data[start:offset])
    if parsed is None:
        return np.load(BytesIO(data), allow_pickle=False)
    dtype, shape, fortran = parsed
    count = prod(shape)
    if len(data) < offset + count * dtype.itemsize:
        raise ValueError(
            f"npy payload: {len(data)} bytes, but its header needs {offset + count * dtype.itemsize}"
            f" for {dtype} {shape}; the array was truncated in transit"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def _popcount(bits: np.ndarray, n: int) -> int:
    """Set bits among the first ``n`` of a packed bitmap (padding bits are not counted)."""
    full = int(np.bitwise_count(bits[: n // 8]).sum())
    return full + (int(bits[n // 8] >> (8 - n % 8)).bit_count() if n % 8 else 0)


def _all_finite(values: np.ndarray) -> bool:
    """One pass in the common case: a finite sum proves every value finite (NaN and +-inf
    propagate through it); only a sum that overflowed falls back to min/max. Neither makes a
    temporary the size of the array (unlike ``np.isfinite(values).all()``)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if values.size == 0 or np.isfinite(values.sum()):
            return True
    return bool(np.isfinite(values.min()) and np.isfinite(values.max()))


def encode_sparse(
    state: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    value_dtype: str = "float32",
) -> dict[str, np.ndarray]:
    """Flat wire arrays for ``state``; tensors named in ``masks`` are sent sparse."""
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"value_dtype: {value_dtype!r} is not one of {VALUE_DTYPES}")
    for name in masks:
        if name not in state:
            raise ValueError(f"masks: {name!r} is not in the state; masks must name state keys")
    out: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        if SEP in name:
            raise ValueError(f"state key {name!r} contains {SEP!r}, which the codec reserves")
        t = np.asarray(tensor)
        if name not in masks:
            out[f"{name}{SEP}dense"] = np.asarray(t, order="C")  # keeps 0-d shapes
            continue
        m = np.asarray(masks[name])
        if m.dtype != np.bool_ or m.shape != t.shape:
            raise ValueError(
                f"masks[{name!r}]: expected bool of shape {t.shape}, got {m.dtype} {m.shape}"
            )
        if t.dtype.kind != "f":
            raise ValueError(f"{name!r}: only float tensors can be masked, got {t.dtype}")
        flat_mask = m.reshape(-1)
        values = t.reshape(-1).take(np.flatnonzero(flat_mask))
        if (
            value_dtype == "float16"
            and values.size
            and max(-values.min(), values.max()) > _FP16_MAX
        ):
            raise ValueError(
                f"{name!r}: values exceed the float16 range ({_FP16_MAX}); use value_dtype="
                f"'float32'"
            )
        out[f"{name}{SEP}bits"] = np.packbits(flat_mask)
        out[f"{name}{SEP}values"] = values.astype(value_dtype)
        out[f"{name}{SEP}shape"] = np.asarray(t.shape, dtype=np.int64)
    return out


def _group(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Split wire keys into name -> {part: array}; also return keys that do not parse."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    bad: list[str] = []
    for key, arr in arrays.items():
        name, sep, part = key.rpartition(SEP)
        if not sep or not name or part not in (*SPARSE_PARTS, "dense"):
            bad.append(key)
            continue
        groups.setdefault(name, {})[part] = np.asarray(arr)
    return groups, bad


def _sparse_tensor(name: str, parts: Mapping[str, np.ndarray]) -> SparseTensor:
    shp = parts["shape"]
    if shp.ndim != 1 or shp.dtype.kind not in "iu" or (shp < 0).any():
        raise ValueError(f"{name!r}: shape must be a 1-D array of non-negative integers")
    shape = tuple(int(s) for s in shp)
    n = int(np.prod(shape, dtype=np.int64))
    bits, values = parts["bits"], parts["values"]
    if bits.dtype != np.uint8 or bits.shape != ((n + 7) // 8,):
        raise ValueError(f"{name!r}: bitmap must be uint8 of length {(n + 7) // 8} for {shape}")
    if values.ndim != 1 or values.dtype.kind != "f":
        raise ValueError(f"{name!r}: values must be a 1-D float array, got {values.dtype}")
    kept = _popcount(bits, n)
    if kept != values.size:
        raise ValueError(
            f"{name!r}: bitmap keeps {kept} elements but {values.size} values were sent"
        )
    return SparseTensor(bits, values, shape)


def split_encoded(
    arrays: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, SparseTensor]]:
    """``(dense tensors, sparse tensors)`` of an encoded state, nothing expanded.

    Checks what decoding needs (parts, shape array, bitmap length, kept count = number of
    values) and raises ValueError otherwise; the returned arrays are the inputs, not copies.
    """
    groups, bad = _group(arrays)
    if bad:
        raise ValueError(f"unrecognised wire keys {bad}; expected '<name>{SEP}<part>'")
    dense: dict[str, np.ndarray] = {}
    sparse: dict[str, SparseTensor] = {}
    for name, parts in groups.items():
        if set(parts) == {"dense"}:
            dense[name] = parts["dense"]
        elif set(parts) == set(SPARSE_PARTS):
            sparse[name] = _sparse_tensor(name, parts)
        else:
            raise ValueError(
                f"{name!r}: got parts {sorted(parts)}; expected 'dense' alone or "
                f"{list(SPARSE_PARTS)}"
            )
    return dense, sparse


def _unpack(t: SparseTensor) -> np.ndarray:
    n = int(np.prod(t.shape, dtype=np.int64))
    return np.unpackbits(t.bits, count=n).view(np.bool_).reshape(t.shape)


def decode_sparse(
    arrays: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inverse of ``encode_sparse``: ``(state, masks)``; raises ValueError on bad structure."""
    dense, sparse = split_encoded(arrays)
    state: dict[str, np.ndarray] = dict(dense)
    masks: dict[str, np.ndarray] = {}
    for name, t in sparse.items():
        mask = masks[name] = _unpack(t)
        full = np.zeros(mask.size, dtype=np.promote_types(t.values.dtype, np.float32))
        full[np.flatnonzero(mask)] = t.values  # an index scatter: 3x a boolean-mask assignment
        state[name] = full.reshape(t.shape)
    return state, masks


def decode_masks(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Only the masks of an encoded state (bool, True = kept); same checks as decoding."""
    return {name: _unpack(t) for name, t in split_encoded(arrays)[1].items()}


def _check_sparse(
    name: str, parts: Mapping[str, np.ndarray], shape: tuple[int, ...], problems: list[str]
) -> int | None:
    """Append the problems of one sparse tensor; return its kept count if it has none."""
    start = len(problems)
    shp = parts["shape"]
    if shp.dtype != np.int64 or shp.ndim != 1 or tuple(int(s) for s in shp) != shape:
        problems.append(f"{name}: shape array {shp.dtype} {shp.tolist()} != expected {shape}")
    n = int(np.prod(shape, dtype=np.int64))
    bits, values = parts["bits"], parts["values"]
    if bits.dtype != np.uint8 or bits.shape != ((n + 7) // 8,):
        problems.append(
            f"{name}: bitmap {bits.dtype} {bits.shape} != uint8 ({(n + 7) // 8},) for {shape}"
        )
        return None
    if n % 8 and bits[-1] & ((1 << (8 - n % 8)) - 1):
        problems.append(f"{name}: padding bits of the last bitmap byte are set")
    if values.dtype.name not in VALUE_DTYPES or values.ndim != 1:
        problems.append(
            f"{name}: values must be 1-D {'/'.join(VALUE_DTYPES)}, got {values.dtype} "
            f"{values.shape}"
        )
        return None
    if not _all_finite(values):
        problems.append(f"{name}: values contain NaN or infinity")
    kept = _popcount(bits, n)
    if kept != values.size:
        problems.append(f"{name}: bitmap keeps {kept} elements but {values.size} values sent")
    return kept if len(problems) == start else None


def validate_encoded(
    arrays: Mapping[str, np.ndarray],
    expected_shapes: Mapping[str, tuple[int, ...]],
    declared_sparsity: float | None = None,
    tol: float = 1e-6,
    max_norm: float | None = None,
    expected_dtypes: Mapping[str, np.dtype | str] | None = None,
) -> list[str]:
    """Problems with a site's encoded reply (empty list = acceptable).

    Checks: every expected tensor present exactly once (dense or sparse) and nothing else;
    shapes; dtypes (bitmap uint8, shape int64, values float32/float16, dense tensors equal
    to ``expected_dtypes`` when given); finite floats; bitmap popcount equal to the number
    of values; unused padding bits zero; ``declared_sparsity`` within ``tol`` of the actual
    pruned fraction over all masked tensors; the L2 norm of all float values at most
    ``max_norm`` (a cheap guard against exploding or malicious updates).
    """
    groups, bad = _group(arrays)
    problems = [f"{key}: unexpected key (not '<name>{SEP}<part>')" for key in bad]
    pruned = total = 0
    sq_norm = 0.0
    for name, parts in groups.items():
        if name not in expected_shapes:
            problems.append(f"{name}: unexpected tensor (not in the expected model)")
            continue
        shape = tuple(int(s) for s in expected_shapes[name])
        want = None
        if expected_dtypes is not None and name in expected_dtypes:
            want = np.dtype(expected_dtypes[name])
        if set(parts) == {"dense"}:
            d = parts["dense"]
            if d.shape != shape:
                problems.append(f"{name}: dense shape {d.shape} != expected {shape}")
            if want is not None and d.dtype != want:
                problems.append(f"{name}: dense dtype {d.dtype} != expected {want}")
            elif d.dtype.kind not in "fiub":
                problems.append(f"{name}: dense dtype {d.dtype} is not numeric")
            if d.dtype.kind == "f":
                if not _all_finite(d):
                    problems.append(f"{name}: dense values contain NaN or infinity")
                elif max_norm is not None:
                    sq_norm += float(np.linalg.norm(d.astype(np.float32, copy=False))) ** 2
        elif set(parts) == set(SPARSE_PARTS):
            if want is not None and want.kind != "f":
                problems.append(f"{name}: sent sparse but expected dtype {want} is not float")
            kept = _check_sparse(name, parts, shape, problems)
            if kept is not None:
                n = int(np.prod(shape, dtype=np.int64))
                pruned += n - kept
                total += n
                if max_norm is not None:
                    v = parts["values"].astype(np.float32, copy=False)
                    sq_norm += float(np.linalg.norm(v)) ** 2
        else:
            problems.append(
                f"{name}: parts {sorted(parts)}; expected 'dense' alone or {list(SPARSE_PARTS)}"
            )
    for name in expected_shapes:
        if name not in groups:
            problems.append(f"{name}: missing from the reply")
    if declared_sparsity is not None and not problems:
        actual = pruned / total if total else 0.0
        if abs(actual - declared_sparsity) > tol:
            problems.append(
                f"declared sparsity {declared_sparsity:.6f} != actual {actual:.6f} (tol {tol})"
            )
    if max_norm is not None and not problems and np.sqrt(sq_norm) > max_norm:
        problems.append(f"L2 norm {np.sqrt(sq_norm):.4g} exceeds max_norm {max_norm:.4g}")
    return problems
