"""Sparse wire codec for pruned model states: send only what the receiver does not know.

Flower sends every ``Array`` as the ``np.save`` bytes of a dense ndarray and neither
compresses nor exploits zeros (research/flower.md §5), so a pruned model costs as much as a
dense one unless it is encoded. ``encode_sparse`` turns a state plus masks into flat
ndarrays, one per key, ready for an ``ArrayRecord``:

- ``"<name>::bits"``   uint8, ``np.packbits`` of the flattened mask (big-endian bit order,
  first element in the most significant bit, unused bits of the last byte zero);
- ``"<name>::digest"`` uint8 (8,), sent *instead of* the bitmap when the receiver already
  holds this mask (:func:`mask_digest` of it): the coordinator keeps every site's mask and
  a site keeps its own, so downloads never carry a bitmap and uploads carry one only in
  rounds where the mask changed. The receiver checks the digest against its copy and
  raises :class:`MaskMismatch` on a difference (never zero-fills); the repair is to resend
  with the full bitmap (see :class:`MaskMismatch`);
- ``"<name>::values"`` 1-D surviving values in row-major order, in ``value_dtype``:
  ``"float32"`` (exact), ``"float16"`` or ``"bfloat16"`` (half the bytes; bfloat16 keeps
  float32's range with 8 bits of mantissa). NumPy has no bfloat16, so it travels as the
  ``uint16`` top half of the float32 bit pattern, rounded to nearest even; a ``uint16``
  values array always means bfloat16 (values are otherwise float). Precision, not bytes,
  separates them: rounding a trained weight costs ~2**-12 of it in float16 but ~2**-9 in
  bfloat16, more than a typical round's update (``sims.bench.aggregation_speed``: RMS error
  0.21x the update in float16, 1.65x in bfloat16, at updates of 1e-3 of the weights); so
  bfloat16 is for values beyond float16's range only;
- ``"<name>::delta"`` instead of ``values`` (uploads, ``codec.upload=difference``): the kept
  values minus what the site received for them, in ``value_dtype``. The coordinator adds
  them to the float32 global it holds (its master copy), so neither the rounding of a
  half-precision download nor that of the upload loses an update smaller than half a
  float16 step of its weight; :func:`decode_sparse` adds them to a ``reference`` state;
- ``"<name>::delta"`` int8 with ``"<name>::scale"`` (``codec.upload=difference-int8``): the
  same differences in one byte each, ``delta * scale`` with one float32 scale per
  :data:`DELTA_BLOCK` values (the block's largest difference / 127; :func:`quantise_int8`).
  A round's update is ~1e-3 of its weight, so the rounding error (at most 1/254 of the
  block's largest update) is far below a float16 value's (2**-12 of the weight itself);
- ``"<name>::shape"``  int64 1-D array with the tensor's shape (empty for a scalar);
- ``"<name>::dense"``  unmasked tensors as they are (own dtype; BN parameters, running
  statistics and integer buffers such as ``num_batches_tracked``);
- ``"<name>::values"`` + ``"<name>::shape"`` alone: every element, row-major, in a half
  ``value_dtype`` (:func:`encode_dense`: the coordinator's evaluation broadcast of the global
  model in half the bytes). Downloads only: a reply sending it is rejected.

A download that is only ``{INITIAL_KEY: digest}`` (:func:`encode_initial`) carries no model:
the receiver builds the run's initial model from its seed and checks it against the
:func:`state_digest` sent (:func:`initial_digest` reads it); round one then costs no dense
download.

A masked float32 tensor at density d costs about ``n/8 + 4*d*n`` bytes with its bitmap and
``4*d*n`` without (``2*d*n`` in float16/bfloat16) instead of ``4*n``. Names must not contain
``"::"``. ``decode_sparse`` is the exact inverse; pruned positions decode to +0.0 and
half-precision values decode to float32 (the training dtype; halves are only a transport
format). ``split_encoded`` checks the structure without expanding anything, so a server can
fold replies straight from the sparse form, and ``decode_masks`` gives it the masks alone;
``inspect_encoded`` (``validate_encoded``: its problems only) checks everything a server must
check of a reply in one pass and splits it too.

``state_digest`` names a whole model state by a hash that is stable across processes and
machines, so a site that builds the initial model from the run's seed can prove it holds
the coordinator's round-one model without downloading it.

``npy_view`` reads one Flower ``Array`` payload (``np.save`` bytes) as a read-only view of the
bytes: Flower's ``Array.numpy()`` goes through ``np.load``, which copies every array twice and
costs ~0.1 ms of header parsing per array, more than the rest of a server's work on a small
BN tensor. ``npy_payload`` is the other direction: the ``np.save`` bytes of an array with one
copy (``np.save`` into a ``BytesIO`` makes two).
"""

from __future__ import annotations

import ctypes
import hashlib
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from io import BytesIO
from math import prod
from typing import NamedTuple

import numpy as np
import torch
from numpy.lib import format as npy_format

from fedreid.fl.scatter import EXPONENT_BITS, all_finite, dequantise, quantise, tensor_view

SEP = "::"
SPARSE_PARTS = ("bits", "values", "delta", "scale", "shape", "digest")  # every part a sparse tensor may carry
FULL_PARTS = frozenset(("bits", "values", "shape"))  # mask sent
KNOWN_PARTS = frozenset(("digest", "values", "shape"))  # mask held by the receiver
DELTA_KINDS = {
    parts - {"values"} | delta: kind
    for parts, kind in ((FULL_PARTS, "full"), (KNOWN_PARTS, "known"))
    for delta in ({"delta"}, {"delta", "scale"})  # differences: in a value dtype, or int8 + scales
}
DELTA_BLOCK = 512  # int8 differences share one float32 scale per this many values (0.8 % more bytes)
ALL_PARTS = frozenset(("values", "shape"))  # every element kept, half precision (downloads)
INITIAL_KEY = f"{SEP}initial"  # no tensor name: cannot clash with a state key
# A site that cannot rebuild the initial model says so with an error holding this text; the
# coordinator then sends it the model (errors reach it as text only).
INITIAL_MISMATCH = "initial model digest differs"
VALUE_DTYPES = ("float32", "float16", "bfloat16")
UPLOADS = ("absolute", "difference", "difference-int8")  # codec.upload: what a site's masked values are
DOWNLOADS = ("values", "difference-int8")  # codec.download: what a download is (fedreid.fl.view)
DIGEST_BYTES = 8
_FP16_MAX = float(np.finfo(np.float16).max)
# Wire dtype of the values array -> the value dtype it carries.
_WIRE = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16",
         np.dtype(np.uint16): "bfloat16"}

_NPY_MAGIC = b"\x93NUMPY"
# The header np.save writes for a plain array (numpy.lib.format.header_data_from_array_1_0).
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|=][biuf][0-9]+)', 'fortran_order': (True|False), "
    rb"'shape': \(([0-9]+(?:, [0-9]+)*,?)?\), \} *\n"
)


class MaskMismatch(ValueError):
    """A tensor arrived without its bitmap, but the receiver's copy of the mask differs.

    ``names`` lists the tensors. The values cannot be placed, so nothing is decoded. The
    repair: the receiver forgets its copy of the sender's masks for these tensors and the
    sender sends the full bitmap again (a coordinator drops the site's stored masks, so its
    next download carries no digest and the site's next upload carries every bitmap; a site
    reports the failure, which makes the coordinator do the same).
    """

    def __init__(self, message: str, names: Iterable[str]) -> None:
        super().__init__(message)
        self.names = tuple(names)


class PackedMask(NamedTuple):
    """A mask as the coordinator stores it: packed bitmap, shape, kept count and digest."""

    bits: np.ndarray
    shape: tuple[int, ...]
    kept: int
    digest: bytes

    def unpack(self) -> np.ndarray:
        """The bool mask (True = kept)."""
        return np.unpackbits(self.bits, count=prod(self.shape)).view(np.bool_).reshape(self.shape)


class SparseTensor(NamedTuple):
    """One masked tensor as received: packed bitmap (sent, or the receiver's copy), kept
    values (row-major, wire dtype), shape, the digest when the bitmap was not sent, and
    whether the values are differences from what the sender received (``::delta``)."""

    bits: np.ndarray
    values: np.ndarray
    shape: tuple[int, ...]
    digest: bytes | None = None
    delta: bool = False


def mask_digest(bits: np.ndarray, shape: tuple[int, ...]) -> bytes:
    """64-bit BLAKE2b of a packed bitmap and its shape: equal masks, equal digests, in any
    process (a 2**-64 collision chance is far below any transport error rate)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES, person=b"fedreid-mask")
    h.update(np.asarray(shape, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(bits, dtype=np.uint8).data)
    return h.digest()


def _popcount(bits: np.ndarray, n: int) -> int:
    """Set bits among the first ``n`` of a packed bitmap (padding bits are not counted)."""
    full = int(np.bitwise_count(bits[: n // 8]).sum())
    return full + (int(bits[n // 8] >> (8 - n % 8)).bit_count() if n % 8 else 0)


def pack_bits(bits: np.ndarray, shape: tuple[int, ...]) -> PackedMask:
    """A :class:`PackedMask` from an already packed bitmap (e.g. one a site sent)."""
    shape = tuple(int(s) for s in shape)
    return PackedMask(bits, shape, _popcount(bits, prod(shape)), mask_digest(bits, shape))


def pack_mask(mask: np.ndarray) -> PackedMask:
    """A :class:`PackedMask` from a bool mask."""
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise ValueError(f"mask: expected a bool array, got {m.dtype}")
    return pack_bits(np.packbits(m.reshape(-1)), m.shape)


def _as_packed(mask: PackedMask | np.ndarray) -> PackedMask:
    return mask if isinstance(mask, PackedMask) else pack_mask(mask)


# ---- values ------------------------------------------------------------------------------
# Half-precision conversions go through torch: NumPy converts float16 element by element
# (~15 ns per value here), torch with vector instructions (~0.1 ns).


def _to_half(x: np.ndarray, dtype: torch.dtype, out: np.ndarray | None = None) -> np.ndarray:
    """float32 -> float16 or bfloat16 (as uint16 bits), rounded to nearest, ties to even,
    into ``out`` when given. The output is a NumPy allocation: torch's own (``.half()``)
    faults in fresh pages every time, 15x slower on a 9 MB tensor."""
    if out is None:
        out = np.empty(x.size, dtype=np.float16 if dtype == torch.float16 else np.uint16)
    target = torch.from_numpy(out if dtype == torch.float16 else out.view(np.int16))
    target.view(dtype).copy_(tensor_view(np.ascontiguousarray(x, dtype=np.float32).reshape(-1)))
    return out


def wire_dtype(value_dtype: str) -> np.dtype:
    """The NumPy dtype values travel in (bfloat16 as its uint16 bits)."""
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"value_dtype: {value_dtype!r} is not one of {VALUE_DTYPES}")
    return next(d for d, kind in _WIRE.items() if kind == value_dtype)


def to_wire_values(values: np.ndarray, value_dtype: str, name: str = "values",
                   out: np.ndarray | None = None) -> np.ndarray:
    """Kept values in their wire dtype (written into ``out``, of :func:`wire_dtype`, when
    given); raises ValueError where the dtype cannot hold them."""
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"value_dtype: {value_dtype!r} is not one of {VALUE_DTYPES}")
    if value_dtype == "float32":
        if out is None:
            return values.astype(np.float32, copy=False)
        np.copyto(out, values.reshape(-1))
        return out
    if value_dtype == "float16":
        if values.size and max(-values.min(), values.max()) > _FP16_MAX:
            raise ValueError(
                f"{name!r}: values exceed the float16 range ({_FP16_MAX}); use value_dtype="
                f"'bfloat16' or 'float32'"
            )
        return _to_half(values, torch.float16, out)
    out = _to_half(values, torch.bfloat16, out)
    if not _all_finite(out):
        raise ValueError(
            f"{name!r}: values exceed the bfloat16 range or are not finite; use value_dtype="
            f"'float32'"
        )
    return out


def values_f32(values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Wire values as float32 (into ``out`` when given; bfloat16 bits are widened exactly)."""
    if out is None:
        out = np.empty(values.size, dtype=np.float32)
    if values.dtype == np.uint16:
        wide = out.view(np.uint32)
        np.copyto(wide, values)
        np.left_shift(wide, 16, out=wide)
    elif values.dtype == np.float16:
        torch.from_numpy(out).copy_(tensor_view(values))
    else:
        np.copyto(out, values, casting="same_kind")
    return out


def quantise_int8(differences: np.ndarray, name: str = "values") -> tuple[np.ndarray, np.ndarray]:
    """``(q, scale)``: int8 ``q`` and one float32 ``scale`` per :data:`DELTA_BLOCK` values with
    ``q * scale`` the differences rounded to nearest (scale = the block's largest magnitude /
    127, 0 for an all-zero block). Raises ValueError on a non-finite difference."""
    out = quantise(differences, DELTA_BLOCK)
    if out is None:
        raise ValueError(f"{name!r}: differences contain NaN or infinity; nothing to send")
    return out


def dequantise_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 ``q * scale`` of :func:`quantise_int8` (one scale per :data:`DELTA_BLOCK`)."""
    return dequantise(q, scale, DELTA_BLOCK)


def _int8_problem(name: str, q: np.ndarray, scale: np.ndarray) -> str | None:
    """What is wrong with an int8 ``::delta`` and its ``::scale`` (None when nothing)."""
    if q.dtype != np.int8 or q.ndim != 1:
        return f"{name}: int8 differences must be 1-D int8, got {q.dtype} {q.shape}"
    blocks = -(-q.size // DELTA_BLOCK)
    if scale.dtype != np.float32 or scale.shape != (blocks,):
        return (f"{name}: scales must be float32 ({blocks},) for {q.size} int8 differences "
                f"(one per {DELTA_BLOCK}), got {scale.dtype} {scale.shape}")
    if scale.size and not (np.isfinite(scale).all() and scale.min() >= 0):
        return f"{name}: scales contain NaN, infinity or a negative value"
    return None


def value_dtype_of(values: np.ndarray) -> str | None:
    """The value dtype a wire values array carries (None for anything else)."""
    return _WIRE.get(values.dtype)


def _half_finite(bits16: np.ndarray) -> bool:
    """No inf/NaN among float16/bfloat16 (uint16) bit patterns: an all-ones exponent marks them."""
    if bits16.size == 0:
        return True
    top = int(np.bitwise_and(bits16.view(np.uint16), 0x7FFF).max())
    return top < EXPONENT_BITS[bits16.dtype]


def _all_finite(values: np.ndarray) -> bool:
    """The compiled check of the exponent bits (:func:`~fedreid.fl.scatter.all_finite`),
    else one pass in the common case: a finite sum proves every value finite (NaN and +-inf
    propagate through it); only a sum that overflowed falls back to min/max. Neither makes a
    temporary the size of the array (unlike ``np.isfinite(values).all()``)."""
    compiled = all_finite(values)
    if compiled is not None:
        return compiled
    if values.dtype.itemsize == 2:
        return _half_finite(values)
    with np.errstate(over="ignore", invalid="ignore"):
        if values.size == 0 or np.isfinite(values.sum()):
            return True
    return bool(np.isfinite(values.min()) and np.isfinite(values.max()))


# ---- encoding ----------------------------------------------------------------------------


def encode_sparse(
    state: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    value_dtype: str = "float32",
    receiver_digests: Mapping[str, bytes] | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
    reference_masks: Mapping[str, np.ndarray] | None = None,
    int8_differences: bool = False,
) -> dict[str, np.ndarray]:
    """Flat wire arrays for ``state``; tensors named in ``masks`` are sent sparse.

    ``receiver_digests`` maps names to the digest of the mask the receiver holds (a site
    takes them from its download, :func:`mask_digests`); a tensor whose mask has that digest
    is sent with the digest instead of its bitmap.

    ``reference`` (a site's decoded download) sends a masked tensor as ``::delta``, its
    values minus the reference's, when every kept position held a value in the reference:
    ``reference_masks`` gives the download's own masks (positions outside them arrived as 0,
    not as the global's value, so a tensor keeping one of them is sent as plain values).
    ``int8_differences`` sends those differences as int8 with per-block scales.
    """
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"value_dtype: {value_dtype!r} is not one of {VALUE_DTYPES}")
    for name in masks:
        if name not in state:
            raise ValueError(f"masks: {name!r} is not in the state; masks must name state keys")
    held = receiver_digests or {}
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
        bits = np.packbits(flat_mask)
        if name in held and held[name] == mask_digest(bits, t.shape):
            out[f"{name}{SEP}digest"] = np.frombuffer(held[name], dtype=np.uint8).copy()
        else:
            out[f"{name}{SEP}bits"] = bits
        base = _reference_values(name, flat_mask, t.shape, reference, reference_masks)
        if base is None:
            out[f"{name}{SEP}values"] = to_wire_values(values, value_dtype, name)
        elif int8_differences:
            out[f"{name}{SEP}delta"], out[f"{name}{SEP}scale"] = quantise_int8(values - base, name)
        else:
            out[f"{name}{SEP}delta"] = to_wire_values(values - base, value_dtype, name)
        out[f"{name}{SEP}shape"] = np.asarray(t.shape, dtype=np.int64)
    return out


def _reference_values(name: str, flat_mask: np.ndarray, shape: tuple[int, ...],
                      reference: Mapping[str, np.ndarray] | None,
                      reference_masks: Mapping[str, np.ndarray] | None) -> np.ndarray | None:
    """The reference's values at the kept positions, or None when the tensor goes as plain
    values (no reference for it, or it keeps a position the reference did not carry)."""
    if reference is None or name not in reference:
        return None
    ref = np.asarray(reference[name])
    if ref.shape != shape:
        raise ValueError(f"reference[{name!r}] has shape {ref.shape}, the state's is {shape}")
    if reference_masks is not None and name in reference_masks:
        held = np.asarray(reference_masks[name], dtype=np.bool_).reshape(-1)
        if (flat_mask & ~held).any():
            return None
    return ref.reshape(-1).take(np.flatnonzero(flat_mask)).astype(np.float32, copy=False)


def encode_dense(state: Mapping[str, np.ndarray], value_dtype: str = "float32") -> dict[str, np.ndarray]:
    """Every tensor whole: float32 weight tensors (2-D and up) as ``values`` in ``value_dtype``
    when it is a half dtype, everything else ``dense`` (BN vectors and buffers stay exact)."""
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"value_dtype: {value_dtype!r} is not one of {VALUE_DTYPES}")
    out: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        if SEP in name:
            raise ValueError(f"state key {name!r} contains {SEP!r}, which the codec reserves")
        t = np.asarray(tensor)
        if value_dtype == "float32" or t.dtype != np.float32 or t.ndim < 2:
            out[f"{name}{SEP}dense"] = np.asarray(t, order="C")
            continue
        out[f"{name}{SEP}values"] = to_wire_values(t.reshape(-1), value_dtype, name)
        out[f"{name}{SEP}shape"] = np.asarray(t.shape, dtype=np.int64)
    return out


def encode_initial(digest: str) -> dict[str, np.ndarray]:
    """A download without a model: the :func:`state_digest` of the run's initial model,
    which the receiver rebuilds from the seed (see the module doc)."""
    return {INITIAL_KEY: np.frombuffer(bytes.fromhex(digest), dtype=np.uint8).copy()}


def initial_digest(arrays: Mapping[str, np.ndarray]) -> str | None:
    """The digest an :func:`encode_initial` download carries; None for any other download."""
    if set(arrays) != {INITIAL_KEY}:
        return None
    d = np.asarray(arrays[INITIAL_KEY])
    if d.dtype != np.uint8 or d.ndim != 1:
        raise ValueError(f"{INITIAL_KEY!r}: expected a uint8 digest, got {d.dtype} {d.shape}")
    return d.tobytes().hex()


def encode_known(name: str, values: np.ndarray, mask: PackedMask) -> dict[str, np.ndarray]:
    """One masked tensor's wire arrays when the receiver holds ``mask``: no bitmap."""
    return {
        f"{name}{SEP}digest": np.frombuffer(mask.digest, dtype=np.uint8).copy(),
        f"{name}{SEP}values": values,
        f"{name}{SEP}shape": np.asarray(mask.shape, dtype=np.int64),
    }


# ---- decoding ----------------------------------------------------------------------------


def group_parts(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
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


def _parts_kind(parts: Mapping[str, np.ndarray]) -> str | None:
    """"dense", "full", "known" or "all" for a tensor's set of parts; None when it is none."""
    keys = frozenset(parts)
    if keys == {"dense"}:
        return "dense"
    return {FULL_PARTS: "full", KNOWN_PARTS: "known", ALL_PARTS: "all", **DELTA_KINDS}.get(keys)


def _parts_error(name: str, parts: Mapping[str, np.ndarray]) -> str:
    return (
        f"{name}: got parts {sorted(parts)}; expected 'dense' alone, {sorted(FULL_PARTS)}, "
        f"{sorted(KNOWN_PARTS)} ('delta', or int8 'delta' and 'scale', in place of 'values' in "
        f"uploads) or (downloads only) "
        f"{sorted(ALL_PARTS)}"
    )


def _values_part(name: str, parts: Mapping[str, np.ndarray]) -> tuple[np.ndarray, bool]:
    """A sparse tensor's kept values and whether they are differences (``delta``); int8
    differences come back as float32 (raises ValueError when they or their scales are bad)."""
    if "scale" in parts:
        problem = _int8_problem(name, parts["delta"], parts["scale"])
        if problem:
            raise ValueError(problem)
        return dequantise_int8(parts["delta"], parts["scale"]), True
    return (parts["delta"], True) if "delta" in parts else (parts["values"], False)


def _digest_of(parts: Mapping[str, np.ndarray]) -> bytes | None:
    d = parts["digest"]
    if d.dtype != np.uint8 or d.shape != (DIGEST_BYTES,):
        return None
    return d.tobytes()


def _shape_of(name: str, shp: np.ndarray) -> tuple[int, ...]:
    if shp.ndim != 1 or shp.dtype.kind not in "iu" or (shp < 0).any():
        raise ValueError(f"{name!r}: shape must be a 1-D array of non-negative integers")
    return tuple(int(s) for s in shp)


def _resolve_known(
    name: str, parts: Mapping[str, np.ndarray], shape: tuple[int, ...],
    known_masks: Mapping[str, PackedMask | np.ndarray] | None,
) -> PackedMask:
    """The receiver's copy of the mask a digest-only tensor refers to; raises otherwise."""
    digest = _digest_of(parts)
    if digest is None:
        raise ValueError(f"{name!r}: digest must be uint8 of length {DIGEST_BYTES}")
    held = None if known_masks is None or name not in known_masks else _as_packed(known_masks[name])
    if held is None:
        raise MaskMismatch(
            f"{name!r}: sent without a bitmap, but the receiver holds no mask for it; the "
            f"sender must send the full bitmap", [name])
    if held.shape != shape or held.digest != digest:
        raise MaskMismatch(
            f"{name!r}: mask digest {digest.hex()} != the receiver's copy {held.digest.hex()}; "
            f"the masks are out of step: the sender must send the full bitmap", [name])
    return held


def split_encoded(
    arrays: Mapping[str, np.ndarray],
    known_masks: Mapping[str, PackedMask | np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, SparseTensor]]:
    """``(dense tensors, sparse tensors)`` of an encoded state, nothing expanded.

    A tensor sent with a digest instead of its bitmap takes the bitmap from ``known_masks``
    (bool masks or :class:`PackedMask`; :class:`MaskMismatch` when missing or different).
    Checks what decoding needs (parts, shape array, bitmap length, kept count = number of
    values) and raises ValueError otherwise; the returned arrays are the inputs, not copies.
    """
    groups, bad = group_parts(arrays)
    if bad:
        raise ValueError(f"unrecognised wire keys {bad}; expected '<name>{SEP}<part>'")
    dense: dict[str, np.ndarray] = {}
    sparse: dict[str, SparseTensor] = {}
    mismatched: list[str] = []
    for name, parts in groups.items():
        kind = _parts_kind(parts)
        if kind == "dense":
            dense[name] = parts["dense"]
            continue
        if kind is None:
            raise ValueError(_parts_error(name, parts))
        shape = _shape_of(name, parts["shape"])
        n = prod(shape)
        values, delta = _values_part(name, parts)
        if values.ndim != 1 or (values.dtype.kind != "f" and values.dtype != np.uint16):
            raise ValueError(f"{name!r}: values must be a 1-D float array, got {values.dtype}")
        if kind == "all":
            if values.size != n:
                raise ValueError(f"{name!r}: {values.size} values sent for a whole {shape} tensor")
            dense[name] = values_f32(values).reshape(shape)
            continue
        if kind == "known":
            try:
                held = _resolve_known(name, parts, shape, known_masks)
            except MaskMismatch:
                mismatched.append(name)
                continue
            bits, kept, digest = held.bits, held.kept, held.digest
        else:
            bits, digest = parts["bits"], None
            if bits.dtype != np.uint8 or bits.shape != ((n + 7) // 8,):
                raise ValueError(f"{name!r}: bitmap must be uint8 of length {(n + 7) // 8} for {shape}")
            kept = _popcount(bits, n)
        if kept != values.size:
            raise ValueError(
                f"{name!r}: bitmap keeps {kept} elements but {values.size} values were sent"
            )
        sparse[name] = SparseTensor(bits, values, shape, digest, delta)
    if mismatched:
        raise MaskMismatch(
            f"tensors {mismatched} were sent without a bitmap but the receiver's copy of "
            f"their mask is missing or differs; the sender must send full bitmaps", mismatched)
    return dense, sparse


def _unpack(t: SparseTensor) -> np.ndarray:
    return np.unpackbits(t.bits, count=prod(t.shape)).view(np.bool_).reshape(t.shape)


def resolve_delta(t: SparseTensor, reference: np.ndarray, positions: np.ndarray | None = None
                  ) -> SparseTensor:
    """``t`` with its ``::delta`` differences made float32 values: added to ``reference``
    (the whole tensor the sender received, or the coordinator's global) at the kept
    ``positions`` (from the bitmap when not given)."""
    if positions is None:
        positions = np.flatnonzero(_unpack(t).reshape(-1))
    base = np.asarray(reference, dtype=np.float32).reshape(-1)[positions]
    return t._replace(values=base + values_f32(t.values), delta=False)


def decode_sparse(
    arrays: Mapping[str, np.ndarray],
    known_masks: Mapping[str, PackedMask | np.ndarray] | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inverse of ``encode_sparse``: ``(state, masks)``; raises ValueError on bad structure
    and :class:`MaskMismatch` when a digest-only tensor's mask is not the one held.
    ``reference``: what ``::delta`` values are added to (the state the sender received)."""
    dense, sparse = split_encoded(arrays, known_masks)
    state: dict[str, np.ndarray] = dict(dense)
    masks: dict[str, np.ndarray] = {}
    for name, t in sparse.items():
        mask = masks[name] = _unpack(t)
        positions = np.flatnonzero(mask)
        if t.delta:
            if reference is None or name not in reference:
                raise ValueError(f"{name!r}: sent as differences ('delta'), but no reference "
                                 f"state was given to add them to")
            t = resolve_delta(t, reference[name], positions)
        full = np.zeros(mask.size, dtype=np.promote_types(
            np.float32 if t.values.dtype == np.uint16 else t.values.dtype, np.float32))
        kept = values_f32(t.values) if t.values.dtype in (np.uint16, np.float16) else t.values
        full[positions] = kept  # an index scatter: 3x a boolean-mask assignment
        state[name] = full.reshape(t.shape)
    return state, masks


def rounding_left_out(
    state: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray], encoded: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """For each tensor ``encoded`` sends as int8 differences: ``state`` minus what the
    receiver decodes (zero where pruned). A site adds it to its next upload (error
    feedback), so an update too small for this round's scale still arrives later."""
    sent, _ = decode_sparse(encoded, known_masks=masks, reference=reference)
    return {name: np.where(masks[name], np.asarray(state[name]) - sent[name], 0).astype(np.float32)
            for name in masks if f"{name}{SEP}scale" in encoded}


def decode_masks(
    arrays: Mapping[str, np.ndarray],
    known_masks: Mapping[str, PackedMask | np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Only the masks of an encoded state (bool, True = kept); same checks as decoding."""
    return {name: _unpack(t) for name, t in split_encoded(arrays, known_masks)[1].items()}


def mask_digests(arrays: Mapping[str, np.ndarray]) -> dict[str, bytes]:
    """The digest of every mask an encoded state refers to (sent, or computed from the sent
    bitmap). A site passes its download's to ``encode_sparse(receiver_digests=...)``."""
    groups, _ = group_parts(arrays)
    out: dict[str, bytes] = {}
    for name, parts in groups.items():
        kind = _parts_kind(parts)
        if kind == "known" and (digest := _digest_of(parts)) is not None:
            out[name] = digest
        elif kind == "full":
            out[name] = mask_digest(parts["bits"], tuple(int(s) for s in parts["shape"]))
    return out


# ---- validation --------------------------------------------------------------------------


def _check_sparse(
    name: str, parts: Mapping[str, np.ndarray], shape: tuple[int, ...], problems: list[str],
    known: PackedMask | None,
) -> SparseTensor | None:
    """Append the problems of one sparse tensor; return it (bitmap resolved) if it has none."""
    start = len(problems)
    shp = parts["shape"]
    if shp.dtype != np.int64 or shp.ndim != 1 or tuple(int(s) for s in shp) != shape:
        problems.append(f"{name}: shape array {shp.dtype} {shp.tolist()} != expected {shape}")
    n = prod(shape)
    if "digest" in parts:
        digest = _digest_of(parts)
        if digest is None:
            problems.append(f"{name}: digest must be uint8 of length {DIGEST_BYTES}")
            return None
        if known is None:
            problems.append(f"{name}: sent without a bitmap, but no mask is held for it; "
                            f"the site must send the full bitmap")
            return None
        if known.shape != shape or known.digest != digest:
            problems.append(f"{name}: mask digest {digest.hex()} != the held mask's "
                            f"{known.digest.hex()}; the site must send the full bitmap")
            return None
        kept, bits = known.kept, known.bits
    else:
        bits = parts["bits"]
        if bits.dtype != np.uint8 or bits.shape != ((n + 7) // 8,):
            problems.append(
                f"{name}: bitmap {bits.dtype} {bits.shape} != uint8 ({(n + 7) // 8},) for {shape}"
            )
            return None
        if n % 8 and bits[-1] & ((1 << (8 - n % 8)) - 1):
            problems.append(f"{name}: padding bits of the last bitmap byte are set")
        kept, digest = _popcount(bits, n), None
    try:
        values, delta = _values_part(name, parts)
    except ValueError as err:
        problems.append(str(err))
        return None
    if value_dtype_of(values) is None or values.ndim != 1:
        problems.append(
            f"{name}: values must be 1-D float32/float16/bfloat16 (uint16 bits), got "
            f"{values.dtype} {values.shape}"
        )
        return None
    if not _all_finite(values):
        problems.append(f"{name}: values contain NaN or infinity")
    if kept != values.size:
        problems.append(f"{name}: bitmap keeps {kept} elements but {values.size} values sent")
    return SparseTensor(bits, values, shape, digest, delta) if len(problems) == start else None


class Inspection(NamedTuple):
    """What :func:`inspect_encoded` found: every problem, and (when there are none) the
    reply split like :func:`split_encoded` (bitmaps resolved, nothing expanded)."""

    problems: list[str]
    dense: dict[str, np.ndarray]
    sparse: dict[str, SparseTensor]


def validate_encoded(
    arrays: Mapping[str, np.ndarray],
    expected_shapes: Mapping[str, tuple[int, ...]],
    declared_sparsity: float | None = None,
    tol: float = 1e-6,
    max_norm: float | None = None,
    expected_dtypes: Mapping[str, np.dtype | str] | None = None,
    known_masks: Mapping[str, PackedMask | np.ndarray] | None = None,
) -> list[str]:
    """Problems with a site's encoded reply (empty list = acceptable); see
    :func:`inspect_encoded` for the checks."""
    return inspect_encoded(arrays, expected_shapes, declared_sparsity, tol, max_norm,
                           expected_dtypes, known_masks).problems


def inspect_encoded(
    arrays: Mapping[str, np.ndarray],
    expected_shapes: Mapping[str, tuple[int, ...]],
    declared_sparsity: float | None = None,
    tol: float = 1e-6,
    max_norm: float | None = None,
    expected_dtypes: Mapping[str, np.dtype | str] | None = None,
    known_masks: Mapping[str, PackedMask | np.ndarray] | None = None,
) -> Inspection:
    """Check a site's encoded reply in one pass and split it.

    Checks: every expected tensor present exactly once (dense, sparse with its bitmap, or
    sparse with the digest of a mask in ``known_masks``) and nothing else; shapes; dtypes
    (bitmap uint8, shape int64, values float32/float16/bfloat16, dense tensors equal to
    ``expected_dtypes`` when given); finite floats; bitmap popcount equal to the number of
    values; unused padding bits zero; digests equal to the held masks'; ``declared_sparsity``
    within ``tol`` of the actual pruned fraction over all masked tensors; the L2 norm of all
    float values at most ``max_norm`` (a cheap guard against exploding or malicious updates).
    """
    groups, bad = group_parts(arrays)
    problems = [f"{key}: unexpected key (not '<name>{SEP}<part>')" for key in bad]
    dense: dict[str, np.ndarray] = {}
    sparse: dict[str, SparseTensor] = {}
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
        kind = _parts_kind(parts)
        if kind == "dense":
            d = dense[name] = parts["dense"]
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
        elif kind == "all":
            problems.append(f"{name}: sent as whole values without a mask, which only downloads "
                            f"use; a site sends 'dense' or a masked tensor")
        elif kind is not None:
            if want is not None and want.kind != "f":
                problems.append(f"{name}: sent sparse but expected dtype {want} is not float")
            held = None
            if known_masks is not None and name in known_masks:
                held = _as_packed(known_masks[name])
            t = _check_sparse(name, parts, shape, problems, held)
            if t is not None:
                sparse[name] = t
                n = prod(shape)
                pruned += n - t.values.size
                total += n
                if max_norm is not None:
                    sq_norm += float(np.linalg.norm(values_f32(t.values))) ** 2
        else:
            problems.append(_parts_error(name, parts))
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
    return Inspection(problems, dense, sparse)


# ---- npy payloads and whole-state digests ------------------------------------------------


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


@lru_cache(maxsize=4096)
def _npy_prefix(descr: str, shape: tuple[int, ...]) -> bytes:
    buf = BytesIO()
    npy_format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def npy_payload(array: np.ndarray) -> bytes:
    """``np.save(array, allow_pickle=False)``'s bytes for a plain numeric array, copied once
    (headers are cached per dtype and shape), or not at all for a whole-payload view
    (:func:`npy_view` of those bytes, e.g. filled through :func:`npy_alloc`). A
    Fortran-ordered array is written C-ordered: other bytes than ``np.save``'s, the same
    array after ``np.load``."""
    a = np.asarray(array)
    if a.dtype.kind not in "biuf" or a.dtype.names is not None:
        raise ValueError(f"npy_payload: only plain numeric arrays, got {a.dtype}")
    a = np.ascontiguousarray(a) if not a.flags.c_contiguous else a
    prefix = _npy_prefix(npy_format.dtype_to_descr(a.dtype), a.shape)
    whole = _viewed_payload(a, prefix)
    if whole is not None:
        return whole
    return b"".join((prefix, a.reshape(-1).view(np.uint8).data))


def _viewed_payload(a: np.ndarray, prefix: bytes) -> bytes | None:
    """The bytes ``a`` views when they are exactly ``prefix`` then ``a``'s data."""
    base = a.base
    while isinstance(base, (np.ndarray, _Writable)):
        base = base.base
    if (isinstance(base, bytes) and len(base) == len(prefix) + a.nbytes
            and a.__array_interface__["data"][0] == _address(base) + len(prefix)
            and base.startswith(prefix)):
        return base
    return None


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.argtypes, _new_bytes.restype = (ctypes.c_void_p, ctypes.c_ssize_t), ctypes.py_object


def _address(data: bytes) -> int:
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value


class _Writable:
    """NumPy's view of a fresh payload's data as writable memory; holds the payload (``base``)."""

    def __init__(self, payload: bytes, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.base = payload
        self.__array_interface__ = {"data": (_address(payload) + offset, False), "shape": shape,
                                    "typestr": dtype.str, "version": 3}


def npy_alloc(shape: tuple[int, ...], dtype: np.dtype) -> tuple[bytes, np.ndarray]:
    """A new npy payload for a C-ordered ``dtype`` array of ``shape`` (header written, data
    not initialised) and a writable array over its data. Fill the array before the bytes
    are used or shared, then keep only ``npy_view(payload)``: :func:`npy_payload` hands
    those bytes on without copying them. Saves the copy from a scratch array into the
    payload (~4 ms per ResNet-50 download at 60 % sparsity). The bytes object is
    ``PyBytes_FromStringAndSize(NULL, n)``, which CPython leaves for its creator to fill."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    prefix = _npy_prefix(npy_format.dtype_to_descr(dtype), shape)
    payload = _new_bytes(None, len(prefix) + prod(shape) * dtype.itemsize)
    ctypes.memmove(_address(payload), prefix, len(prefix))
    return payload, np.asarray(_Writable(payload, len(prefix), dtype, shape))


def state_digest(state: Mapping[str, np.ndarray]) -> str:
    """Hex BLAKE2b-128 of a model state (names, dtypes, shapes, little-endian values).

    Keys are sorted, so the dict order does not matter; the same weights give the same
    digest in every process and on every machine (torch tensors on the CPU work too).
    """
    h = hashlib.blake2b(digest_size=16, person=b"fedreid-state")
    for name in sorted(state):
        a = np.asarray(state[name])
        if a.dtype.kind not in "biuf":
            raise ValueError(f"state[{name!r}]: dtype {a.dtype} is not a plain number type")
        le = a.astype(a.dtype.newbyteorder("<"), copy=False)
        h.update(f"{name}|{le.dtype.str}|{a.shape}\n".encode())
        h.update(np.ascontiguousarray(le).reshape(-1).view(np.uint8).data)
    return h.hexdigest()
