"""Downloads as int8 differences from a model both sides already hold (``codec.download=
difference-int8``).

The coordinator keeps a *view*: the model its sites hold, in float32. Each new global moves
the view by one *step*, the int8 difference ``global - view`` with a float32 scale per
:data:`~fedreid.fl.codec.DELTA_BLOCK` values (:func:`~fedreid.fl.codec.quantise_int8`), and
both sides add the same dequantised step, so they stay equal bit for bit. A site then
receives, per new global, one byte per weight (the whole model: the site cuts it with its
own mask, so pruning, restores and mask resyncs need nothing from the download); a site that
already holds the newest view (it was sent with the evaluation broadcast) receives nothing
but the token. Rounding never accumulates: each step is the difference to the *global*, so
the view trails the global by at most half a step's scale.

Tokens name views. A site that holds another one (it missed a round, lost its cache, or the
coordinator resumed) gets the whole view in ``codec.value_dtype`` instead (in float16 its copy
then differs from the coordinator's by that rounding, which later steps carry along; float32
is exact), and a site that
cannot apply a step fails with :data:`VIEW_MISMATCH`, which makes the coordinator send it
the whole view. The view on a site is a cache: losing it costs one whole download.

Wire keys besides the tensors' (``<name>::delta`` int8, ``::scale``, ``::shape``; ``::dense``
for integer buffers; a whole view as :func:`~fedreid.fl.codec.encode_dense` writes it):

- ``"::view"`` uint64 ``[from, to]``: the token the step applies to (0: a whole view) and the
  token it makes;
- ``"::held"`` uint8 (8,): :func:`masks_digest` of the site's masks the coordinator holds,
  so the site's upload sends digests instead of the bitmaps it already has.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping

import numpy as np

from fedreid.fl.codec import (
    DELTA_BLOCK,
    DIGEST_BYTES,
    SEP,
    decode_sparse,
    dequantise_int8,
    encode_dense,
    group_parts,
)
from fedreid.fl.scatter import step_towards

VIEW_KEY = f"{SEP}view"
HELD_KEY = f"{SEP}held"
# A site that cannot apply a step says so with an error holding this text; the coordinator
# then sends it the whole view (errors reach it as text only).
VIEW_MISMATCH = "view token differs"
NO_MASKS = bytes(DIGEST_BYTES)


def initial_token(initial_digest: str) -> int:
    """The token of the run's initial model: a site that rebuilt it from the seed holds it."""
    return _token(hashlib.blake2b(bytes.fromhex(initial_digest), digest_size=8).digest())


def fresh_token() -> int:
    """A token no site holds (a resumed coordinator starts its view afresh)."""
    return _token(secrets.token_bytes(8))


def _token(raw: bytes) -> int:
    return int.from_bytes(raw, "little") & (2**63 - 1) or 1  # never 0: 0 means a whole view


def masks_digest(digests: Mapping[str, bytes]) -> bytes:
    """One digest for a set of per-tensor mask digests (:func:`~fedreid.fl.codec.mask_digest`)."""
    if not digests:
        return NO_MASKS
    h = hashlib.blake2b(digest_size=DIGEST_BYTES, person=b"fedreid-masks")
    for name in sorted(digests):
        h.update(name.encode())
        h.update(digests[name])
    return h.digest()


def _floats(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(float tensors as float32 copies, everything else as is)."""
    floats, other = {}, {}
    for k, v in state.items():
        a = np.asarray(v)
        if a.dtype.kind == "f":
            floats[k] = np.array(a, dtype=np.float32)
        else:
            other[k] = a
    return floats, other


class SharedView:
    """The coordinator's copy of what its sites hold, and the step to its newest global."""

    def __init__(self, state: Mapping[str, np.ndarray], token: int) -> None:
        self.view, self._other = _floats(state)
        self.token = token
        self._step: dict[str, np.ndarray] | None = None  # wire arrays of the last step
        self._whole: dict[str, dict[str, np.ndarray]] = {}  # by value dtype, built on demand

    def advance(self, global_state: Mapping[str, np.ndarray]) -> None:
        """Move the view one step towards ``global_state`` (a new token)."""
        step: dict[str, np.ndarray] = {}
        for key, target in global_state.items():
            t = np.asarray(target)
            if key not in self.view:
                self._other[key] = t
                step[f"{key}{SEP}dense"] = t
                continue
            v = self.view[key]
            moved = step_towards(v.reshape(-1), t.reshape(-1), DELTA_BLOCK)  # v += the step, as sites add it
            if moved is None:
                raise ValueError(f"{key!r}: the global model holds NaN or infinity; no step to send")
            q, scale = moved
            step.update({f"{key}{SEP}delta": q, f"{key}{SEP}scale": scale,
                         f"{key}{SEP}shape": np.asarray(v.shape, dtype=np.int64)})
        previous, self.token = self.token, _token(
            hashlib.blake2b(self.token.to_bytes(8, "little"), digest_size=8).digest())
        self._step = {**step, VIEW_KEY: np.array([previous, self.token], dtype=np.uint64)}
        self._whole = {}

    def download(self, held: int | None, value_dtype: str) -> dict[str, np.ndarray]:
        """What a site holding view ``held`` needs: nothing but the token when it holds this
        one, the last step when it holds the one before, else the whole view."""
        if held == self.token:
            return {VIEW_KEY: np.array([self.token, self.token], dtype=np.uint64)}
        if self._step is not None and held == int(self._step[VIEW_KEY][0]):
            return self._step
        return self.whole(value_dtype)

    def whole(self, value_dtype: str) -> dict[str, np.ndarray]:
        """The whole view in ``value_dtype`` (float32: exact)."""
        if value_dtype not in self._whole:
            arrays = encode_dense({**self.view, **self._other}, value_dtype)
            self._whole[value_dtype] = {**arrays, VIEW_KEY: np.array([0, self.token], dtype=np.uint64)}
        return self._whole[value_dtype]


class SiteView:
    """A site's copy of the coordinator's view (a cache: empty means 'send me all of it')."""

    def __init__(self, state: Mapping[str, np.ndarray] | None = None, token: int = 0) -> None:
        self.state: dict[str, np.ndarray] = dict(state or {})
        self.token = token if self.state else 0

    def reset(self, state: Mapping[str, np.ndarray], token: int) -> None:
        """Hold ``state`` as view ``token`` (e.g. the initial model rebuilt from the seed)."""
        floats, other = _floats(state)
        self.state, self.token = {**floats, **other}, token

    def apply(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The downloaded model: this view moved by the download's step, or the whole view it
        carries. Raises ValueError holding :data:`VIEW_MISMATCH` when the step is for
        another view (nothing is changed then)."""
        start, end = (int(x) for x in np.asarray(arrays[VIEW_KEY], dtype=np.uint64))
        body = {k: v for k, v in arrays.items() if k not in (VIEW_KEY, HELD_KEY)}
        if start == 0:
            state, _ = decode_sparse(body)
            self.reset(state, end)
            return self.state
        if start != self.token or not self.state:
            held = f"view {self.token}" if self.state else "no view"
            raise ValueError(f"{VIEW_MISMATCH}: the download is a step from view {start}, this site "
                             f"holds {held}; the coordinator sends the whole view instead")
        if start != end:
            self.state = self._stepped(body)
            self.token = end
        return self.state

    def _stepped(self, body: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A new state: this view plus the step (checked whole before anything changes)."""
        parts, bad = group_parts(body)
        if bad or set(parts) != set(self.state):
            raise ValueError(f"{VIEW_MISMATCH}: the step has tensors or keys "
                             f"{(sorted(set(parts) ^ set(self.state)) + bad)[:5]} this view lacks or misses; "
                             f"the coordinator sends the whole view instead")
        out: dict[str, np.ndarray] = {}
        for name, p in parts.items():
            held = self.state[name]
            if set(p) == {"dense"}:
                out[name] = p["dense"]
                continue
            if set(p) != {"delta", "scale", "shape"} or tuple(int(s) for s in p["shape"]) != held.shape:
                raise ValueError(f"{name}: a view step needs int8 'delta', 'scale' and the shape "
                                 f"{held.shape}, got parts {sorted(p)}")
            out[name] = held + dequantise_int8(p["delta"], p["scale"]).reshape(held.shape)
        return out
