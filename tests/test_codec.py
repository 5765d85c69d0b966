"""Sparse wire codec: round trips (property tests), validator, byte accounting."""

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from fedreid.fl.accounting import serialized_nbytes
from fedreid.fl.codec import (
    DELTA_BLOCK,
    INITIAL_KEY,
    MaskMismatch,
    decode_masks,
    decode_sparse,
    encode_dense,
    encode_initial,
    encode_sparse,
    initial_digest,
    mask_digests,
    npy_alloc,
    npy_payload,
    npy_view,
    pack_mask,
    quantise_int8,
    rounding_left_out,
    split_encoded,
    state_digest,
    to_wire_values,
    validate_encoded,
    values_f32,
    wire_dtype,
)

F32 = np.float32
shapes = array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)
mask_kinds = st.sampled_from(["all_false", "all_true", "random"])
seeds = st.integers(0, 2**32 - 1)
FAST = settings(max_examples=60, deadline=None)


def make(shape, kind, seed):
    rng = np.random.default_rng(seed)
    mask = {
        "all_false": np.zeros(shape, bool),
        "all_true": np.ones(shape, bool),
        "random": rng.random(shape) < 0.4,
    }[kind]
    values = (rng.standard_normal(shape) * 3).astype(F32)
    return values * mask, mask


def state_and_masks(shape, kind, seed):
    w, m = make(shape, kind, seed)
    state = {
        "conv.weight": w,
        "bn.weight": np.arange(3, dtype=F32),
        "bn.num_batches_tracked": np.array(5, np.int64),
    }
    return state, {"conv.weight": m}


def expected(state):
    return {k: v.shape for k, v in state.items()}


@FAST
@given(shape=shapes, kind=mask_kinds, seed=seeds)
def test_round_trip_fp32_exact(shape, kind, seed):
    state, masks = state_and_masks(shape, kind, seed)
    arrays = encode_sparse(state, masks)
    assert validate_encoded(arrays, expected(state)) == []
    out, out_masks = decode_sparse(arrays)
    assert set(out) == set(state) and set(out_masks) == {"conv.weight"}
    for k, v in state.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        np.testing.assert_array_equal(out[k], v)
    np.testing.assert_array_equal(out_masks["conv.weight"], masks["conv.weight"])
    assert not np.signbit(out["conv.weight"][~masks["conv.weight"]]).any()


@FAST
@given(shape=shapes, kind=mask_kinds, seed=seeds)
def test_round_trip_fp16_within_rounding(shape, kind, seed):
    state, masks = state_and_masks(shape, kind, seed)
    arrays = encode_sparse(state, masks, value_dtype="float16")
    assert arrays["conv.weight::values"].dtype == np.float16
    assert validate_encoded(arrays, expected(state)) == []
    out, out_masks = decode_sparse(arrays)
    w = state["conv.weight"]
    assert out["conv.weight"].dtype == F32
    np.testing.assert_array_equal(out["conv.weight"], w.astype(np.float16).astype(F32))
    np.testing.assert_allclose(out["conv.weight"], w, rtol=2**-10, atol=1e-7)
    np.testing.assert_array_equal(out["bn.weight"], state["bn.weight"])  # dense stays fp32
    np.testing.assert_array_equal(out_masks["conv.weight"], masks["conv.weight"])


@FAST
@given(shape=shapes, kind=mask_kinds, seed=seeds)
def test_serialized_nbytes_is_np_save_length(shape, kind, seed):
    state, masks = state_and_masks(shape, kind, seed)
    arrays = encode_sparse(state, masks)
    total = 0
    for arr in arrays.values():
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        total += len(buf.getvalue())
    assert serialized_nbytes(arrays) == total


def test_serialized_nbytes_equals_flower_array_payload():
    flwr_app = pytest.importorskip("flwr.app")
    state, masks = state_and_masks((4, 3, 3), "random", 0)
    arrays = encode_sparse(state, masks, value_dtype="float16")
    flower = sum(len(flwr_app.Array(a).data) for a in arrays.values())
    assert serialized_nbytes(arrays) == flower


def test_sparse_layout_and_size():
    w, m = make((64, 32, 3, 3), "random", 1)
    arrays = encode_sparse({"w": w}, {"w": m})
    assert set(arrays) == {"w::bits", "w::values", "w::shape"}
    assert arrays["w::bits"].dtype == np.uint8 and arrays["w::bits"].size == w.size // 8
    assert arrays["w::values"].size == m.sum()
    assert arrays["w::shape"].dtype == np.int64 and arrays["w::shape"].tolist() == [64, 32, 3, 3]
    assert serialized_nbytes(arrays) < 0.6 * serialized_nbytes({"w": w})


def test_encode_errors():
    w = np.ones((2, 2), F32)
    with pytest.raises(ValueError, match="value_dtype"):
        encode_sparse({"w": w}, {}, value_dtype="int8")
    with pytest.raises(ValueError, match="'x' is not in the state"):
        encode_sparse({"w": w}, {"x": np.ones((2, 2), bool)})
    with pytest.raises(ValueError, match="bool of shape"):
        encode_sparse({"w": w}, {"w": np.ones(4, bool)})
    with pytest.raises(ValueError, match="reserves"):
        encode_sparse({"a::b": w}, {})
    with pytest.raises(ValueError, match="float16 range.*bfloat16"):
        encode_sparse({"w": w * 1e6}, {"w": np.ones((2, 2), bool)}, value_dtype="float16")
    with pytest.raises(ValueError, match="bfloat16 range"):
        encode_sparse({"w": w * 3.4e38}, {"w": np.ones((2, 2), bool)}, value_dtype="bfloat16")
    with pytest.raises(ValueError, match="only float"):
        encode_sparse({"n": np.ones(2, np.int64)}, {"n": np.ones(2, bool)})


def test_decode_errors():
    state, masks = state_and_masks((3, 5), "random", 3)
    arrays = encode_sparse(state, masks)
    with pytest.raises(ValueError, match="unrecognised"):
        decode_sparse({**arrays, "junk": np.zeros(1)})
    partial = dict(arrays)
    del partial["conv.weight::shape"]
    with pytest.raises(ValueError, match="expected 'dense' alone"):
        decode_sparse(partial)
    short = dict(arrays)
    short["conv.weight::values"] = np.append(arrays["conv.weight::values"], F32(1))
    with pytest.raises(ValueError, match="bitmap keeps"):
        decode_sparse(short)


# ----- validator: one corruption at a time on a valid reply (15 elements -> 1 padding bit) ---


def valid_reply():
    state, masks = state_and_masks((3, 5), "random", 7)
    arrays = encode_sparse(state, masks)
    declared = 1 - masks["conv.weight"].mean()
    return arrays, expected(state), declared


def corrupt(arrays, key, value):
    out = dict(arrays)
    if value is None:
        del out[key]
    else:
        out[key] = value
    return out


def test_validator_accepts_valid_reply():
    arrays, shapes_, declared = valid_reply()
    dtypes = {"conv.weight": F32, "bn.weight": F32, "bn.num_batches_tracked": np.int64}
    assert validate_encoded(arrays, shapes_, declared, max_norm=1e3, expected_dtypes=dtypes) == []


def _values(arrays, fn):
    v = arrays["conv.weight::values"].copy()
    fn(v)
    return v


CORRUPTIONS = {
    "NaN": lambda a: corrupt(
        a, "conv.weight::values", _values(a, lambda v: v.__setitem__(0, np.nan))
    ),
    "infinity": lambda a: corrupt(a, "bn.weight::dense", np.array([0, np.inf, 1], F32)),
    "NaN or infinity": lambda a: corrupt(
        a, "conv.weight::values", _values(a, lambda v: v.__setitem__(-1, -np.inf))
    ),
    "keeps": lambda a: corrupt(a, "conv.weight::values", a["conv.weight::values"][:-1]),
    "padding bits": lambda a: corrupt(
        a, "conv.weight::bits", a["conv.weight::bits"] | np.array([0, 1], np.uint8)
    ),
    "shape array": lambda a: corrupt(a, "conv.weight::shape", np.array([5, 3], np.int64)),
    "bitmap": lambda a: corrupt(a, "conv.weight::bits", a["conv.weight::bits"].astype(np.int16)),
    "values must be": lambda a: corrupt(
        a, "conv.weight::values", a["conv.weight::values"].astype(np.float64)
    ),
    "dense shape": lambda a: corrupt(a, "bn.weight::dense", np.zeros(4, F32)),
    "missing": lambda a: corrupt(a, "bn.num_batches_tracked::dense", None),
    "expected 'dense' alone": lambda a: corrupt(a, "conv.weight::shape", None),
    "unexpected tensor": lambda a: corrupt(a, "fc.weight::dense", np.zeros(2, F32)),
    "unexpected key": lambda a: corrupt(a, "garbage", np.zeros(2, F32)),
}


@pytest.mark.parametrize("needle", sorted(CORRUPTIONS))
def test_validator_catches_corruption(needle):
    arrays, shapes_, declared = valid_reply()
    problems = validate_encoded(CORRUPTIONS[needle](arrays), shapes_, declared)
    assert problems and any(needle in p for p in problems), problems


def test_validator_declared_sparsity_norm_and_dtypes():
    arrays, shapes_, declared = valid_reply()
    assert validate_encoded(arrays, shapes_, declared + 0.1)[0].startswith("declared sparsity")
    assert validate_encoded(arrays, shapes_, declared + 1e-9) == []
    assert "exceeds max_norm" in validate_encoded(arrays, shapes_, max_norm=1e-3)[0]
    as_float = corrupt(arrays, "bn.num_batches_tracked::dense", np.array(5.0))
    problems = validate_encoded(
        as_float, shapes_, expected_dtypes={"bn.num_batches_tracked": "int64"}
    )
    assert problems == ["bn.num_batches_tracked: dense dtype float64 != expected int64"]
    sparse_int = validate_encoded(arrays, shapes_, expected_dtypes={"conv.weight": np.int64})
    assert sparse_int and "not float" in sparse_int[0]


def test_decode_rejects_bad_shape_array():
    state, masks = state_and_masks((3, 5), "random", 3)
    arrays = encode_sparse(state, masks)
    for bad in (np.array([-3, -5], np.int64), np.array([[3, 5]], np.int64), np.array([3.0, 5.0])):
        with pytest.raises(ValueError, match="shape must be"):
            decode_sparse({**arrays, "conv.weight::shape": bad})


# ----- npy_view: Flower's Array payload read without copies -------------------------------


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(6, dtype=F32).reshape(2, 3),
        np.array(5, np.int64),
        np.zeros((3, 0, 2), F32),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.arange(7, dtype=np.float16),
        np.array([True, False]),
        np.arange(5, dtype=">i4"),
        np.packbits(np.ones(13, bool)),
        np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),  # falls back to np.load
    ],
    ids=lambda a: f"{a.dtype}{a.shape}",
)
def test_npy_view_matches_np_load(arr):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    view = npy_view(data)
    want = np.load(io.BytesIO(data), allow_pickle=False)
    assert view.dtype == want.dtype and view.shape == want.shape
    np.testing.assert_array_equal(view, want)
    if arr.dtype.names is None:
        assert not view.flags.writeable  # a view of the payload, not a copy
    with pytest.raises(ValueError):
        npy_view(data[:-1] if arr.size else data[:20])


def test_split_encoded_and_decode_masks():
    state, masks = state_and_masks((3, 5), "random", 3)
    arrays = encode_sparse(state, masks)
    dense, sparse = split_encoded(arrays)
    assert set(dense) == {"bn.weight", "bn.num_batches_tracked"} and set(sparse) == {"conv.weight"}
    sp = sparse["conv.weight"]
    assert sp.shape == (3, 5) and sp.values is arrays["conv.weight::values"]
    np.testing.assert_array_equal(decode_masks(arrays)["conv.weight"], masks["conv.weight"])
    # Decoding ignores the padding bits (the validator reports them), as it always did.
    padded = {
        **arrays,
        "conv.weight::bits": arrays["conv.weight::bits"] | np.array([0, 1], np.uint8),
    }
    np.testing.assert_array_equal(decode_masks(padded)["conv.weight"], masks["conv.weight"])
    with pytest.raises(ValueError, match="bitmap keeps"):
        split_encoded({**arrays, "conv.weight::values": arrays["conv.weight::values"][1:]})


def test_validator_accepts_finite_values_whose_sum_overflows():
    arrays, shapes_, declared = valid_reply()
    v = np.full(arrays["conv.weight::values"].size, 3e38, F32)
    with np.errstate(over="ignore"):
        assert not np.isfinite(v.sum())  # the one-pass check overflows, falls back to min/max
    assert validate_encoded({**arrays, "conv.weight::values": v}, shapes_, declared) == []


# ----- bfloat16 values, bitmaps the receiver holds, whole-state digests -------------------


@FAST
@given(shape=shapes, kind=mask_kinds, seed=seeds)
def test_round_trip_bfloat16_is_torch_rounding(shape, kind, seed):
    torch = pytest.importorskip("torch")
    state, masks = state_and_masks(shape, kind, seed)
    arrays = encode_sparse(state, masks, value_dtype="bfloat16")
    assert arrays["conv.weight::values"].dtype == np.uint16  # bfloat16 bit patterns
    assert validate_encoded(arrays, expected(state)) == []
    out, _ = decode_sparse(arrays)
    w = torch.from_numpy(np.asarray(state["conv.weight"]))
    np.testing.assert_array_equal(out["conv.weight"], w.to(torch.bfloat16).float().numpy())
    np.testing.assert_allclose(out["conv.weight"], state["conv.weight"], rtol=2**-8, atol=0)


def test_bfloat16_rounds_half_to_even():
    # 1 + 2**-8 lies halfway between bfloat16 neighbours 1 and 1 + 2**-7: ties go to even (1).
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8)], np.float32)
    bits = to_wire_values(x, "bfloat16")
    np.testing.assert_array_equal(bits, np.array([0x3F80, 0x3F82, 0xBF80], np.uint16))


def test_held_masks_travel_as_digests():
    state, masks = state_and_masks((64, 32), "random", 11)
    held = pack_mask(masks["conv.weight"])
    full = encode_sparse(state, masks)
    known = encode_sparse(state, masks, receiver_digests={"conv.weight": held.digest})
    assert "conv.weight::bits" not in known and known["conv.weight::digest"].tobytes() == held.digest
    # The 256-byte bitmap becomes an 8-byte digest (a bitmap under 8 bytes would not pay).
    assert serialized_nbytes(full) - serialized_nbytes(known) == 256 - 8
    assert mask_digests(full) == mask_digests(known) == {"conv.weight": held.digest}
    out, out_masks = decode_sparse(known, known_masks={"conv.weight": masks["conv.weight"]})
    np.testing.assert_array_equal(out["conv.weight"], state["conv.weight"])
    np.testing.assert_array_equal(out_masks["conv.weight"], masks["conv.weight"])
    assert validate_encoded(known, expected(state), known_masks={"conv.weight": held}) == []
    # A changed mask is sent in full even if the receiver held the old one.
    changed = {"conv.weight": ~masks["conv.weight"]}
    assert "conv.weight::bits" in encode_sparse(state, changed,
                                                receiver_digests={"conv.weight": held.digest})


def test_out_of_step_masks_raise_never_zero_fill():
    state, masks = state_and_masks((6, 5), "random", 12)
    held = pack_mask(masks["conv.weight"])
    known = encode_sparse(state, masks, receiver_digests={"conv.weight": held.digest})
    other = masks["conv.weight"].copy()
    other.flat[0] = not other.flat[0]
    for bad in ({}, {"conv.weight": other}):
        with pytest.raises(MaskMismatch, match="full bitmap") as err:
            decode_sparse(known, known_masks=bad)
        assert err.value.names == ("conv.weight",)
    problems = validate_encoded(known, expected(state), known_masks={"conv.weight": other})
    assert problems and "mask digest" in problems[0]
    assert "no mask is held" in validate_encoded(known, expected(state))[0]


def test_state_digest_is_stable_and_sensitive():
    import subprocess
    import sys

    state = {"b": np.arange(5, dtype=np.int64), "a": np.linspace(0, 1, 7, dtype=F32).reshape(7, 1)}
    d = state_digest(state)
    assert state_digest(dict(reversed(list(state.items())))) == d
    assert state_digest({**state, "a": state["a"].astype(">f4")}) == d  # byte order normalised
    code = ("import numpy as np; from fedreid.fl.codec import state_digest; "
            "print(state_digest({'a': np.linspace(0, 1, 7, dtype=np.float32).reshape(7, 1), "
            "'b': np.arange(5, dtype=np.int64)}))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == d
    changed = {**state, "a": state["a"].copy()}
    changed["a"][3, 0] = np.nextafter(changed["a"][3, 0], F32(2))
    assert state_digest(changed) != d
    assert state_digest({**state, "a": state["a"].astype(np.float64)}) != d
    assert state_digest({**state, "a": state["a"].reshape(1, 7)}) != d
    assert state_digest({"c": state["a"], "b": state["b"]}) != d


@pytest.mark.parametrize(
    "arr",
    [np.arange(6, dtype=F32).reshape(2, 3), np.array(5, np.int64), np.zeros((3, 0, 2), F32),
     np.arange(7, dtype=np.float16), np.array([True, False]), np.arange(5, dtype=">i4"),
     np.arange(3, dtype=np.uint16)],
    ids=lambda a: f"{a.dtype}{a.shape}",
)
def test_npy_payload_is_np_save(arr):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    assert npy_payload(arr) == buf.getvalue()
    np.testing.assert_array_equal(npy_view(npy_payload(arr)), arr)


@pytest.mark.parametrize("shape", [(2, 3), (0,), (7,)])
@pytest.mark.parametrize("value_dtype", ["float32", "float16", "bfloat16"])
def test_a_payload_filled_in_place_is_np_save_and_handed_on_without_a_copy(shape, value_dtype):
    values = np.random.default_rng(0).standard_normal(shape).astype(F32)
    payload, out = npy_alloc(shape, wire_dtype(value_dtype))
    assert out.flags.writeable and out.shape == shape
    to_wire_values(values, value_dtype, out=out.reshape(-1))
    want = to_wire_values(values.reshape(-1), value_dtype).reshape(shape)
    buf = io.BytesIO()
    np.save(buf, want, allow_pickle=False)
    assert payload == buf.getvalue()
    view = npy_view(payload)
    assert npy_payload(view) is payload  # the same bytes object: no copy
    part = view[:1]  # a view of part of the payload gets its own bytes
    if part.shape != view.shape:
        assert npy_payload(part) is not payload
        np.testing.assert_array_equal(npy_view(npy_payload(part)), part)
    assert npy_payload(view.copy()) == payload


@pytest.mark.parametrize("value_dtype", ["float32", "float16", "bfloat16"])
def test_whole_downloads_in_half_precision_decode_and_are_refused_as_replies(value_dtype):
    rng = np.random.default_rng(0)
    state = {"w": rng.standard_normal((8, 3, 3, 3)).astype(F32), "b": rng.standard_normal(8).astype(F32),
             "n": np.array(4, np.int64)}
    enc = encode_dense(state, value_dtype)
    assert ("w::values" in enc) == (value_dtype != "float32") and "b::dense" in enc and "n::dense" in enc
    got, masks = decode_sparse(enc)
    assert not masks and got["w"].dtype == F32 and got["n"] == 4
    want = values_f32(to_wire_values(state["w"].reshape(-1), value_dtype)).reshape(8, 3, 3, 3)
    np.testing.assert_array_equal(got["w"], want)
    if value_dtype != "float32":
        shapes = {k: v.shape for k, v in state.items()}
        assert any("only downloads" in p for p in validate_encoded(enc, shapes))


def test_initial_download_carries_only_the_digest():
    digest = state_digest({"w": np.ones(3, F32)})
    enc = encode_initial(digest)
    assert set(enc) == {INITIAL_KEY} and enc[INITIAL_KEY].nbytes == 16
    assert initial_digest(enc) == digest
    assert initial_digest(encode_sparse({"w": np.ones(3, F32)}, {})) is None
    with pytest.raises(ValueError, match="unrecognised"):
        decode_sparse(enc)  # never silently an empty model


# ---- uploads as differences from the download ------------------------------------------------
def _download_and_update(seed: int, step: float):
    rng = np.random.default_rng(seed)
    download = {"w": rng.uniform(0.5, 1.0, (40, 9)).astype(F32), "b": rng.standard_normal(9).astype(F32)}
    masks = {"w": rng.random((40, 9)) < 0.6}
    download["w"] *= masks["w"]
    trained = {k: (v + step * rng.standard_normal(v.shape).astype(F32)) for k, v in download.items()}
    trained["w"] *= masks["w"]
    return download, trained, masks


def test_differences_travel_as_delta_and_decode_back_onto_the_reference():
    download, trained, masks = _download_and_update(0, 1e-2)
    arrays = encode_sparse(trained, masks, reference=download, reference_masks=masks)
    assert "w::delta" in arrays and "w::values" not in arrays and "b::dense" in arrays
    state, got_masks = decode_sparse(arrays, reference=download)
    np.testing.assert_allclose(state["w"], trained["w"], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(got_masks["w"], masks["w"])
    with pytest.raises(ValueError, match="no reference"):
        decode_sparse(arrays)
    assert split_encoded(arrays)[1]["w"].delta and not split_encoded(encode_sparse(trained, masks))[1]["w"].delta


def test_a_kept_position_the_download_did_not_carry_goes_as_plain_values():
    """A restored mask can keep positions the download sent as 0: there the difference from the
    download is not a difference from the global, so the tensor goes as values."""
    download, trained, masks = _download_and_update(1, 1e-2)
    grown = {"w": masks["w"].copy()}
    grown["w"][0, :] = True
    arrays = encode_sparse(trained, grown, reference=download, reference_masks=masks)
    assert "w::values" in arrays and "w::delta" not in arrays


def test_half_precision_differences_keep_updates_smaller_than_the_rounding():
    """Weights in [0.5, 1) have a float16 step of 2**-11 ~ 4.9e-4: updates of 1e-5 vanish when
    the values themselves are rounded, and survive as rounded differences."""
    download, trained, masks = _download_and_update(2, 1e-5)
    kept = masks["w"]
    update = (trained["w"] - download["w"])[kept]
    plain, _ = decode_sparse(encode_sparse(trained, masks, value_dtype="float16"))
    delta, _ = decode_sparse(encode_sparse(trained, masks, value_dtype="float16", reference=download,
                                           reference_masks=masks), reference=download)
    lost = np.abs((plain["w"] - download["w"])[kept] - update).mean() / np.abs(update).mean()
    kept_error = np.abs((delta["w"] - download["w"])[kept] - update).mean() / np.abs(update).mean()
    assert lost > 0.5 and kept_error < 1e-3


def test_validation_accepts_differences_and_rejects_non_finite_ones():
    download, trained, masks = _download_and_update(3, 1e-2)
    shapes = {k: v.shape for k, v in trained.items()}
    arrays = encode_sparse(trained, masks, value_dtype="float16", reference=download, reference_masks=masks)
    assert validate_encoded(arrays, shapes) == []
    arrays["w::delta"] = arrays["w::delta"].copy()
    arrays["w::delta"][0] = np.inf
    assert any("NaN or infinity" in p for p in validate_encoded(arrays, shapes))


# ---- int8 differences (codec.upload=difference-int8) -----------------------------------------
def test_int8_differences_cost_a_byte_each_and_round_within_half_a_scale_step():
    download, trained, masks = _download_and_update(4, 1e-3)
    arrays = encode_sparse(trained, masks, value_dtype="float16", reference=download,
                           reference_masks=masks, int8_differences=True)
    kept = int(masks["w"].sum())
    assert arrays["w::delta"].dtype == np.int8 and arrays["w::delta"].size == kept
    assert arrays["w::scale"].dtype == np.float32 and arrays["w::scale"].size == -(-kept // DELTA_BLOCK)
    state, got_masks = decode_sparse(arrays, reference=download)
    update = (trained["w"] - download["w"])[masks["w"]]
    error = np.abs(state["w"][masks["w"]] - trained["w"][masks["w"]])
    assert error.max() <= np.abs(update).max() / 254 + 1e-7  # + float32 rounding of the sum
    np.testing.assert_array_equal(got_masks["w"], masks["w"])
    assert validate_encoded(arrays, {k: v.shape for k, v in trained.items()}) == []


def test_int8_blocks_keep_their_own_scale_so_one_large_update_spares_the_others():
    x = np.full(3 * DELTA_BLOCK, 1e-6, dtype=np.float32)
    x[0] = 1.0  # one large difference in the first block only
    q, scale = quantise_int8(x)
    assert scale.size == 3 and scale[0] == np.float32(1.0 / 127)
    assert (q[:DELTA_BLOCK][1:] == 0).all() and (q[DELTA_BLOCK:] == 127).all()


def test_rounding_left_out_arrives_with_the_next_upload():
    """Error feedback: an update below this round's rounding step is carried, not lost."""
    download, trained, masks = _download_and_update(5, 1e-3)
    trained["w"][masks["w"]] += 1e-7  # far below 1/254 of the largest difference
    arrays = encode_sparse(trained, masks, reference=download, reference_masks=masks,
                           int8_differences=True)
    left = rounding_left_out(trained, masks, download, arrays)
    sent, _ = decode_sparse(arrays, reference=download)
    np.testing.assert_allclose(sent["w"] + left["w"], trained["w"], rtol=0, atol=1e-7)
    assert not left["w"][~masks["w"]].any() and set(left) == {"w"}
    # the next round sends the same model plus what was left: nothing of this round is lost
    carried = {"w": trained["w"] + left["w"], "b": trained["b"]}
    again = encode_sparse(carried, masks, reference=download, reference_masks=masks,
                          int8_differences=True)
    second, _ = decode_sparse(again, reference=download)
    assert np.abs(second["w"] - trained["w"]).mean() < np.abs(sent["w"] - trained["w"]).mean() * 2


@pytest.mark.parametrize(("part", "bad", "message"), [
    ("w::scale", lambda s: np.where(np.arange(s.size) == 0, np.nan, s).astype(np.float32), "NaN"),
    ("w::scale", lambda s: -s, "negative"),
    ("w::scale", lambda s: s[:-1], "one per"),
    ("w::scale", lambda s: s.astype(np.float64), "float32"),
    ("w::delta", lambda q: q.astype(np.int16), "int8"),
])
def test_validation_rejects_bad_int8_differences(part, bad, message):
    download, trained, masks = _download_and_update(6, 1e-3)
    arrays = encode_sparse(trained, masks, reference=download, reference_masks=masks,
                           int8_differences=True)
    arrays[part] = bad(arrays[part])
    problems = validate_encoded(arrays, {k: v.shape for k, v in trained.items()})
    assert any(message in p and "w" in p for p in problems), problems
    with pytest.raises(ValueError, match=message):
        split_encoded(arrays)


def test_a_non_finite_difference_is_refused_at_the_site():
    download, trained, masks = _download_and_update(7, 1e-3)
    trained["w"][masks["w"]] = np.nan
    with pytest.raises(ValueError, match="'w'.*NaN"):
        encode_sparse(trained, masks, reference=download, reference_masks=masks, int8_differences=True)
