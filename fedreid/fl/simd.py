"""SAS's whole round for one tensor in one pass, 16 elements at a time (AVX-512).

When the coordinator holds every reply of a round (a small federation, or a batch of
replies that arrived together), there is no need for model-sized numerators: for each run
of 16 elements, every site's kept values are expanded from its packed values by its mask
bits (``vexpandps``), weighted into two numerators and a denominator held in registers,
combined and divided (the previous value where nobody kept the element), written to the
new global, and compressed back into each site's download (``vcompressps``), which keeps
exactly the site's kept positions. Memory traffic is one read of each reply and each mask,
one write of the global and of each download; the scalar path (:mod:`fedreid.fl.scatter`)
scatters into two model-sized numerators per site and gathers each download from the whole
global.

The float operations per element are the scalar path's, in the same order (site order,
multiply then add, no fused multiply-add), so both give bit-identical results.

Compiled by numba with the x86 AVX-512 intrinsics; ``AVAILABLE`` is False (and nothing is
compiled) where numba or AVX-512F is missing: the caller then takes the scalar path.
"""

from __future__ import annotations

import numpy as np

LANES = 16
# What a site's values are, by their array dtype: uint16 holds bfloat16 bits, as on the wire.
KINDS = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.uint16): 2}
_DOWNLOAD_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
                    "bfloat16": np.dtype(np.uint16)}
_AHEAD = 256  # floats: each site's streams are prefetched this far ahead (8 sites, ten 2.4 M-element
# tensors: 158 -> 113 ms in one run each way; the hardware prefetchers track fewer streams)


def _host_has_avx512() -> bool:
    try:
        import llvmlite.binding as llvm
        import numba
    except ImportError:
        return False
    if numba.config.CPU_NAME not in (None, "host"):  # compiling for another CPU (NUMBA_CPU_NAME)
        return False
    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:  # not x86, or features not reported
        return False
    return bool(features.get("avx512f"))


AVAILABLE = _host_has_avx512()

if AVAILABLE:
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    _F32 = ir.FloatType()
    _I16, _I32, _I64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
    _V16 = ir.VectorType(_F32, LANES)
    _M16 = ir.VectorType(ir.IntType(1), LANES)
    _ZERO = ir.Constant(_V16, None)
    _ALIGN = ir.Constant(_I32, 4)

    def _fn(builder, name: str, ret, args):
        return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)

    def _splat(builder, scalar):
        one = builder.insert_element(ir.Constant(_V16, ir.Undefined), scalar, ir.Constant(_I32, 0))
        return builder.shuffle_vector(one, ir.Constant(_V16, ir.Undefined),
                                      ir.Constant(ir.VectorType(_I32, LANES), None))

    def _low_lanes(builder, count):
        """The mask of the ``count`` lowest lanes (count in 0..16, an i32)."""
        ones = builder.shl(ir.Constant(_I32, 1), count)
        return builder.bitcast(builder.trunc(builder.sub(ones, ir.Constant(_I32, 1)), _I16), _M16)

    def _at(builder, base_ptr, index, elem):
        """Pointer to element ``index`` of an address held as int64."""
        ptr = builder.inttoptr(base_ptr, elem.as_pointer())
        return builder.gep(ptr, [index], inbounds=True)

    def _widened(builder, address, kind, cur, lanes, ahead):
        """The ``lanes`` values from element ``cur`` of a site's values as float32: loaded as
        float32, float16 (``fpext``, exact) or bfloat16 bits (shifted into the high half of
        a float32, exact) by ``kind``; the rest of the lanes 0."""
        slot = cgutils.alloca_once(builder, _V16)
        half, v16i16 = ir.HalfType(), ir.VectorType(_I16, LANES)
        with builder.if_else(builder.icmp_signed("==", kind, ir.Constant(kind.type, KINDS[np.dtype(np.float32)]))) as (f32, other):
            with f32:
                src = _at(builder, address, cur, _F32)
                ahead(src, 0)
                load = _fn(builder, "llvm.masked.load.v16f32.p0", _V16, [src.type, _I32, _M16, _V16])
                builder.store(builder.call(load, [src, _ALIGN, lanes, _ZERO]), slot)
            with other:
                src = _at(builder, address, cur, _I16)
                ahead(src, 0)
                load = _fn(builder, "llvm.masked.load.v16i16.p0", v16i16, [src.type, _I32, _M16, v16i16])
                raw = builder.call(load, [src, ir.Constant(_I32, 2), lanes, ir.Constant(v16i16, None)])
                fp16 = builder.fpext(builder.bitcast(raw, ir.VectorType(half, LANES)), _V16)
                wide = builder.zext(raw, ir.VectorType(_I32, LANES))
                bf16 = builder.bitcast(builder.shl(wide, ir.Constant(ir.VectorType(_I32, LANES), 16)), _V16)
                is_fp16 = builder.icmp_signed("==", kind, ir.Constant(kind.type, KINDS[np.dtype(np.float16)]))
                builder.store(builder.select(is_fp16, fp16, bf16), slot)
        return builder.load(slot)

    _FP16_MAX = 65504.0

    def _store_download(builder, packed, address, cur, lanes, kind, over_ptr, ahead):
        """The ``lanes`` lowest values of ``packed`` to a download from element ``cur``: as
        float32, or rounded to nearest even into float16 or bfloat16 bits (as torch
        converts); ``*over_ptr`` set when a value is beyond float16's largest or a bfloat16
        result is not finite (the caller then converts that download the checked way)."""
        v16i16, v16i32 = ir.VectorType(_I16, LANES), ir.VectorType(_I32, LANES)

        def flag(bad_lanes):
            hit = builder.and_(builder.bitcast(bad_lanes, _I16), builder.bitcast(lanes, _I16))
            with builder.if_then(builder.icmp_unsigned("!=", hit, ir.Constant(_I16, 0)), likely=False):
                builder.store(ir.Constant(_I64, 1), over_ptr)

        with builder.if_else(builder.icmp_signed("==", kind, ir.Constant(kind.type, KINDS[np.dtype(np.float32)]))) as (f32, half):
            with f32:
                dst = _at(builder, address, cur, _F32)
                ahead(dst, 1)
                store = _fn(builder, "llvm.masked.store.v16f32.p0", ir.VoidType(), [_V16, dst.type, _I32, _M16])
                builder.call(store, [packed, dst, _ALIGN, lanes])
            with half:
                dst = _at(builder, address, cur, _I16)
                ahead(dst, 1)
                fabs = _fn(builder, "llvm.fabs.v16f32", _V16, [_V16])
                fp16 = builder.bitcast(builder.fptrunc(packed, ir.VectorType(ir.HalfType(), LANES)), v16i16)
                bits = builder.bitcast(packed, v16i32)

                def splat32(value):
                    return ir.Constant(v16i32, [value] * LANES)

                lsb = builder.and_(builder.lshr(bits, splat32(16)), splat32(1))
                bf16 = builder.trunc(builder.lshr(builder.add(bits, builder.add(lsb, splat32(0x7FFF))), splat32(16)),
                                     v16i16)
                is_fp16 = builder.icmp_signed("==", kind, ir.Constant(kind.type, KINDS[np.dtype(np.float16)]))
                fp16_over = builder.fcmp_ordered(">", builder.call(fabs, [packed]),
                                                 ir.Constant(_V16, [_FP16_MAX] * LANES))
                exponent = ir.Constant(v16i16, [0x7F80] * LANES)
                bf16_over = builder.icmp_unsigned("==", builder.and_(bf16, exponent), exponent)
                flag(builder.select(is_fp16, fp16_over, bf16_over))
                store = _fn(builder, "llvm.masked.store.v16i16.p0", ir.VoidType(), [v16i16, dst.type, _I32, _M16])
                builder.call(store, [builder.select(is_fp16, fp16, bf16), dst, ir.Constant(_I32, 2), lanes])

    @intrinsic
    def _chunk(typingctx, out, prev, start, lanes, sites, bits, vals, kinds, downs, down_kind, cursor,
               w0, w1, wk, c0, c1, over):  # pragma: no cover - compiled
        """One run of ``lanes`` (<= 16) elements from ``start``: every site folded, the
        finish, each download compressed; each site's cursor advanced past its kept values.
        ``bits``/``vals``/``downs``: int64 addresses per site (of its little-endian mask
        bits as uint16, its values, its float32 download or 0 for none); ``kinds``: per site,
        what its values are (a key of :data:`KINDS`), widened to float32 exactly; downloads
        are written as ``down_kind`` (rounded to nearest even), and ``over[k]`` set where a
        value of site k's download is out of that dtype's range."""
        sig = types.void(out, prev, start, lanes, sites, bits, vals, kinds, downs, down_kind, cursor,
                         w0, w1, wk, c0, c1, over)

        def codegen(context, builder, signature, args):
            (out_a, prev_a, start, lanes, sites, bits_a, vals_a, kinds_a, downs_a, down_kind, cur_a,
             w0_a, w1_a, wk_a, c0, c1, over_a) = args

            def data(i, value):
                return context.make_array(signature.args[i])(context, builder, value).data

            out_p, prev_p = data(0, out_a), data(1, prev_a)
            bits_p, vals_p, kinds_p, downs_p, cur_p = (
                data(i, v) for i, v in ((5, bits_a), (6, vals_a), (7, kinds_a), (8, downs_a), (10, cur_a)))
            w0_p, w1_p, wk_p, over_p = data(11, w0_a), data(12, w1_a), data(13, wk_a), data(16, over_a)
            word = builder.ashr(start, ir.Constant(_I64, 4))
            ctpop = _fn(builder, "llvm.ctpop.i16", _I16, [_I16])
            load = _fn(builder, "llvm.masked.load.v16f32.p0", _V16, [_F32.as_pointer(), _I32, _M16, _V16])
            store = _fn(builder, "llvm.masked.store.v16f32.p0", ir.VoidType(),
                        [_V16, _F32.as_pointer(), _I32, _M16])
            expand = _fn(builder, "llvm.x86.avx512.mask.expand.v16f32", _V16, [_V16, _V16, _M16])
            compress = _fn(builder, "llvm.x86.avx512.mask.compress.v16f32", _V16, [_V16, _V16, _M16])
            acc = [cgutils.alloca_once_value(builder, _ZERO) for _ in range(3)]
            i8p = ir.IntType(8).as_pointer()
            prefetch = _fn(builder, "llvm.prefetch.p0", ir.VoidType(), [i8p, _I32, _I32, _I32])

            def ahead(ptr, write):
                far = builder.bitcast(builder.gep(ptr, [ir.Constant(_I64, _AHEAD)]), i8p)
                builder.call(prefetch, [far, ir.Constant(_I32, write), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])

            def site_mask(k):
                m16 = builder.load(_at(builder, builder.load(builder.gep(bits_p, [k])), word, _I16))
                return m16, builder.bitcast(m16, _M16), builder.zext(builder.call(ctpop, [m16]), _I32)

            with cgutils.for_range(builder, sites) as loop:
                k = loop.index
                m16, mask, pop = site_mask(k)
                cur = builder.load(builder.gep(cur_p, [k]))
                packed = _widened(builder, builder.load(builder.gep(vals_p, [k])),
                                  builder.load(builder.gep(kinds_p, [k])), cur, _low_lanes(builder, pop), ahead)
                x = builder.call(expand, [packed, _ZERO, mask])
                for j, w_p in enumerate((w0_p, w1_p)):
                    w = _splat(builder, builder.load(builder.gep(w_p, [k])))
                    builder.store(builder.fadd(builder.load(acc[j]), builder.fmul(x, w)), acc[j])
                wsel = builder.select(mask, _splat(builder, builder.load(builder.gep(wk_p, [k]))), _ZERO)
                builder.store(builder.fadd(builder.load(acc[2]), wsel), acc[2])

            live = _low_lanes(builder, builder.trunc(lanes, _I32))
            a0, a1, den = (builder.load(a) for a in acc)
            num = builder.fadd(builder.fmul(a0, _splat(builder, c0)), builder.fmul(a1, _splat(builder, c1)))
            old = builder.call(load, [builder.gep(prev_p, [start], inbounds=True), _ALIGN, live, _ZERO])
            kept = builder.fcmp_ordered("!=", den, _ZERO)
            new = builder.select(kept, builder.fdiv(num, den), old)
            builder.call(store, [new, builder.gep(out_p, [start], inbounds=True), _ALIGN, live])

            with cgutils.for_range(builder, sites) as loop:
                k = loop.index
                m16, mask, pop = site_mask(k)
                cur_ptr = builder.gep(cur_p, [k])
                cur = builder.load(cur_ptr)
                down = builder.load(builder.gep(downs_p, [k]))
                with builder.if_then(builder.icmp_signed("!=", down, ir.Constant(_I64, 0))):
                    packed = builder.call(compress, [new, _ZERO, mask])
                    _store_download(builder, packed, down, cur, _low_lanes(builder, pop), down_kind,
                                    builder.gep(over_p, [k]), ahead)
                builder.store(builder.add(cur, builder.zext(pop, _I64)), cur_ptr)

        return sig, codegen

    @njit(nogil=True, cache=True, boundscheck=False)
    def _fused(out, prev, bits, vals, kinds, downs, down_kind, w0, w1, wk, c0, c1):  # pragma: no cover - compiled
        cursor, over = np.zeros(bits.size, np.int64), np.zeros(bits.size, np.int64)
        sites = bits.size
        for start in range(0, out.size, LANES):
            _chunk(out, prev, start, min(LANES, out.size - start), sites, bits, vals, kinds, downs, down_kind,
                   cursor, w0, w1, wk, c0, c1, over)
        return over


_BIT_REVERSED = np.array([int(f"{b:08b}"[::-1], 2) for b in range(256)], dtype=np.uint8)


def le_bits(mask_bits: np.ndarray) -> np.ndarray:
    """A mask's packed bits (``np.packbits`` order: first element in a byte's high bit) as
    uint16 words whose bit i is element i of the word's 16 (the kernel's lane order; x86 is
    little-endian), zero-padded to whole words."""
    words = np.zeros(-(-mask_bits.size // 2) * 2, dtype=np.uint8)
    np.take(_BIT_REVERSED, mask_bits, out=words[: mask_bits.size])
    return words.view(np.uint16)


def fused_round(out: np.ndarray, previous: np.ndarray, bits: list[np.ndarray], values: list[np.ndarray],
                downloads: list[np.ndarray | None], w0: np.ndarray, w1: np.ndarray, wk: np.ndarray,
                c0: float, c1: float, *, download_dtype: str = "float32", checked: bool = False) -> np.ndarray:
    """``out = (c0 sum_k w0_k m_k x_k + c1 sum_k w1_k m_k x_k) / sum_k wk_k m_k`` (``previous``
    where the denominator is 0), summed in site order; then ``downloads[k] = out[m_k]``
    where given, in ``download_dtype`` (float32, float16 or bfloat16 as uint16 bits, rounded
    to nearest even). Returns, per site, whether its download had a value beyond that
    dtype's range (float16: above its largest; bfloat16: not finite once rounded): that
    download is then incomplete and must be converted the checked way.
    ``bits[k]``: :func:`le_bits` of site k's mask; ``values[k]``: its kept
    values, float32, float16 or bfloat16 bits as uint16 (widened exactly in the kernel);
    weights float32 arrays, one entry per site; every array contiguous, the rest float32.
    ``checked=True``: the caller vouches that each mask covers ``out`` and keeps as many
    elements as its values and download have (else they are counted: a mismatch would read
    or write out of bounds)."""
    if not AVAILABLE:
        raise RuntimeError("fused_round needs numba and an AVX-512 CPU (simd.AVAILABLE is False)")
    if not checked:
        for k, (b, v, d) in enumerate(zip(bits, values, downloads, strict=True)):
            kept = int(np.bitwise_count(b).sum())
            if b.size * LANES < out.size or v.size != kept or (d is not None and d.size != kept):
                raise ValueError(f"site {k}: {b.size} mask words, {v.size} values, "
                                 f"{None if d is None else d.size} download values for a tensor "
                                 f"of {out.size} elements whose mask keeps {kept}")
    try:
        kinds = np.array([KINDS[v.dtype] for v in values], dtype=np.int64)
    except KeyError:
        raise ValueError(f"values: dtypes {sorted({v.dtype.name for v in values})}; the kernel reads "
                         f"{sorted(d.name for d in KINDS)} (uint16 = bfloat16 bits)") from None
    wire = _DOWNLOAD_DTYPES.get(download_dtype)
    if wire is None:
        raise ValueError(f"download_dtype: {download_dtype!r} is not one of {sorted(_DOWNLOAD_DTYPES)}")
    wrong = sorted({d.dtype.name for d in downloads if d is not None and d.dtype != wire})
    if wrong:
        raise ValueError(f"downloads: dtypes {wrong}; {download_dtype} downloads are {wire.name} arrays")
    addresses = np.array([[b.ctypes.data for b in bits], [v.ctypes.data for v in values],
                          [0 if d is None else d.ctypes.data for d in downloads]], dtype=np.int64)
    over = _fused(out, previous, addresses[0], addresses[1], kinds, addresses[2], KINDS[wire], w0, w1, wk,
                  np.float32(c0), np.float32(c1))
    return over.astype(bool)
