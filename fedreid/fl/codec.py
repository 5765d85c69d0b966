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
transport format).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

SEP = "::"
SPARSE_PARTS = ("bits", "values", "shape")
VALUE_DTYPES = ("float32", "float16")
_FP16_MAX = float(np.finfo(np.float16).max)


def _popcount(bits: np.ndarray) -> int:
    return int(np.count_nonzero(np.unpackbits(bits)))


def _all_finite(values: np.ndarray) -> bool:
    """NaN propagates through min/max and +-inf shows up in them: two fast reductions, no
    temporary the size of the array (unlike ``np.isfinite(values).all()``)."""
    return values.size == 0 or bool(np.isfinite(values.min()) and np.isfinite(values.max()))


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


def _decode_one(name: str, parts: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
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
    mask = np.unpackbits(bits, count=n).view(np.bool_)
    idx = np.flatnonzero(mask)
    if idx.size != values.size:
        raise ValueError(
            f"{name!r}: bitmap keeps {idx.size} elements but {values.size} values were sent"
        )
    dense = np.zeros(n, dtype=np.promote_types(values.dtype, np.float32))
    dense[idx] = values
    return dense.reshape(shape), mask.reshape(shape)


def decode_sparse(
    arrays: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inverse of ``encode_sparse``: ``(state, masks)``; raises ValueError on bad structure."""
    groups, bad = _group(arrays)
    if bad:
        raise ValueError(f"unrecognised wire keys {bad}; expected '<name>{SEP}<part>'")
    state: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for name, parts in groups.items():
        if set(parts) == {"dense"}:
            state[name] = parts["dense"]
        elif set(parts) == set(SPARSE_PARTS):
            state[name], masks[name] = _decode_one(name, parts)
        else:
            raise ValueError(
                f"{name!r}: got parts {sorted(parts)}; expected 'dense' alone or "
                f"{list(SPARSE_PARTS)}"
            )
    return state, masks


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
    kept = _popcount(bits)
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
