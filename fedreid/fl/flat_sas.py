"""SAS on flat buffers, folding each reply when it arrives: the coordinator's round maths.

Same result as :class:`fedreid.fl.sas.SasAccumulator` (within float32 rounding), but:

- the global model lives in one flat buffer per accumulator dtype (float32; float64 if the
  model has float64 tensors), in the global's key order; the new global is built in place
  and each site's download is a ``take`` of its kept positions from it;
- a reply is folded as it arrives and can be dropped at once: per masked tensor, one
  scatter-add of its values at its kept positions (cached per site by
  :class:`fedreid.fl.mask_store.MaskStore`, recomputed only when its mask changes); peak
  memory is the global plus one numerator per live weight basis, whatever the number of
  sites;
- weights that depend on every reply (KLPWA) are handled exactly without holding replies:
  one numerator per basis of the :class:`fedreid.fl.weight_rules.WeightRule`, combined with
  its coefficients at the end (see that module);
- replies that arrive while no more than ``MAX_STAGED`` (8) are in are held unfolded; when
  the round ends with only those, ``result`` builds the new global in one pass per tensor
  with the AVX-512 kernel of :mod:`fedreid.fl.simd` (no numerators; each held site's
  download in ``download_dtype``, when given, compressed out in the same pass).
  A ninth reply, one of differences, a CPU without AVX-512, DP noise or a model with
  tensors wider than float32 fold as below; the results are bit-identical either way;
- the denominator ``sum_k a_k m_k`` is looked up at the end: each element's membership code
  (bit k set when the k-th folded site kept it; one byte per element up to 8 sites, two up
  to 16, cached while the same sites fold with the same masks) indexes a table of the
  round's weight sums, in the same pass that combines the numerators and divides. With DP
  noise or more than 16 sites, it and DP's per-element noise scale are scattered site by
  site, tensor by tensor in a cache-sized scratch, from the masks the coordinator keeps;
- a reply may refer to a mask the coordinator holds by its digest instead of sending the
  bitmap; downloads never carry a bitmap (the site holds its own mask);
- a reply may send differences from its download (``::delta``): they are added to the
  float32 global the round started from, the coordinator's master copy, so an update
  survives even when it is smaller than the rounding of a half-precision download.

Elements no site with positive weight kept keep the previous global value. Float tensors
nobody masks get the plain weighted mean. Integer buffers: ``int_rule="mean"`` (weighted,
rounded half to even) or ``"max"``. ``mask_aware=False`` averages the zero-filled models
(FedAvg over pruned models, for ablation). DP noise (``noise``) goes on every released float
tensor (BN running statistics excluded) with standard deviation ``z C max_k e_kj``
(:mod:`fedreid.fl.dp`), drawn in the same order as :func:`fedreid.fl.dp.add_noise`.

Scatters and gathers are :mod:`fedreid.fl.scatter` (numba loops, or torch's ``index_add_``);
everything else is in-place NumPy on one tensor at a time, single-threaded.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from fedreid.fl import scatter, simd
from fedreid.fl.codec import (
    SEP,
    MaskMismatch,
    PackedMask,
    SparseTensor,
    encode_known,
    npy_alloc,
    npy_view,
    pack_bits,
    split_encoded,
    to_wire_values,
    values_f32,
    wire_dtype,
)
from fedreid.fl.dp import LOCAL_SUFFIXES, GaussianNoise, noise_in_place
from fedreid.fl.mask_store import MaskStore, kept_positions
from fedreid.fl.validate import CheckedReply
from fedreid.fl.weight_rules import FixedWeights, Signal, WeightRule

INT_RULES = ("mean", "max")
MAX_CODED_SITES = 16  # membership codes fit a uint16 and their lookup table 2**16 entries
MAX_STAGED = 8  # replies held unfolded for the one-pass finish (fedreid.fl.simd)


class _Slot(NamedTuple):
    """Where one float tensor lives: its group's flat buffer, offset, size, shape, dtype."""

    group: np.dtype
    start: int
    size: int
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class _Folded:
    site: str
    scores: np.ndarray
    masks: dict[str, PackedMask]  # the masks its sparse tensors were folded with


@dataclass(frozen=True)
class _Staged:
    """A reply held unfolded until ``result`` (the one-pass finish) or a flush."""

    site: str
    dense: Mapping[str, np.ndarray]
    sparse: Mapping[str, SparseTensor]
    scores: np.ndarray


@dataclass(frozen=True)
class RoundSummary:
    """What a round's ``result`` used: normalised weight per site, largest DP noise std."""

    weights: dict[str, float]
    noise_std_max: float | None


def _acc_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.result_type(dtype, np.float32))


def _combine(out: np.ndarray, coef: float, others: list[tuple[np.ndarray, float]]) -> None:
    """``out = coef * out + sum(c * other)`` in ``out``'s dtype, array by array; each
    ``other`` is scaled in place (a numerator the round retires next)."""
    out *= out.dtype.type(coef)
    for other, c in others:
        other *= out.dtype.type(c)
        out += other


class FlatSas:
    """The coordinator's SAS across rounds: ``fold`` each reply, ``result``, ``download_for``.

    ``rule`` turns each site's ``signal`` (its metrics, or a number for
    :class:`~fedreid.fl.weight_rules.FixedWeights`, the default) into weights. ``store``
    holds the sites' masks across rounds (a new one with the default cache if omitted).
    ``download_dtype``: the value dtype downloads will be asked in, which lets the one-pass
    finish write them. ``one_pass=False`` always folds into numerators.
    """

    def __init__(
        self,
        global_state: Mapping[str, np.ndarray],
        rule: WeightRule | None = None,
        *,
        mask_aware: bool = True,
        int_rule: str = "mean",
        noise: GaussianNoise | None = None,
        store: MaskStore | None = None,
        backend: str = scatter.BACKEND,
        download_dtype: str | None = None,
        one_pass: bool = True,
    ) -> None:
        if int_rule not in INT_RULES:
            raise ValueError(f"int_rule: {int_rule!r} is not one of {INT_RULES}")
        self.rule = rule or FixedWeights()
        self.mask_aware = mask_aware
        self.int_rule = int_rule
        self.noise = noise
        self.store = store or MaskStore()
        self.backend = backend
        self.download_dtype = download_dtype
        self.summary: RoundSummary | None = None
        self._slots: dict[str, _Slot] = {}
        self._ints: dict[str, np.ndarray] = {}
        floats: dict[str, np.ndarray] = {}
        for key, value in global_state.items():
            if SEP in key:
                raise ValueError(f"global_state: key {key!r} contains {SEP!r}, which the codec reserves")
            v = np.asarray(value)
            if v.dtype.kind == "f":
                floats[key] = v
            elif v.dtype.kind in "iub":
                self._ints[key] = v.copy()
            else:
                raise ValueError(f"global_state[{key!r}]: unsupported dtype {v.dtype}")
        # Layout: weight tensors first, then the small ones (BN parameters and statistics) in
        # one contiguous tail per group, which a reply sending them dense folds in one add.
        sizes: dict[np.dtype, int] = {}
        self._tail: dict[np.dtype, tuple[int, list[str]]] = {}
        for small in (False, True):
            for key, v in floats.items():
                if (v.ndim <= 1) != small:
                    continue
                group = _acc_dtype(v.dtype)
                start = sizes.get(group, 0)
                if small and group not in self._tail:
                    self._tail[group] = (start, [])
                if small:
                    self._tail[group][1].append(key)
                self._slots[key] = _Slot(group, start, v.size, v.shape, v.dtype)
                sizes[group] = start + v.size
        self._keys = list(global_state)
        self._global = {g: np.empty(n, dtype=g) for g, n in sizes.items()}
        for key in self._slots:
            self._flat(self._global, key)[:] = np.asarray(global_state[key]).reshape(-1)
        tails = [sum(self._slots[k].size for k in keys) for _, keys in self._tail.values()]
        largest = max([s.size for s in self._slots.values()] + tails, default=0)
        # Per accumulator dtype, cache-sized scratch for one tensor at a time.
        self._scratch, self._den, self._top = ({g: np.empty(largest, g) for g in sizes}
                                               for _ in range(3))
        self._empty = np.empty(largest, np.bool_)
        self._pool: list[np.ndarray] = []  # retired model-sized buffers, reused when unshared
        self._codes: dict[np.dtype, np.ndarray] = {}
        self._codes_for: tuple | None = None  # the folded sites and masks the codes describe
        # The one-pass finish needs the compiled AVX-512 kernel and a float32 model, and does
        # not add DP noise.
        self._one_pass = (one_pass and simd.AVAILABLE and backend == "numba" and noise is None and mask_aware
                          and set(self._global) <= {np.dtype(np.float32)})
        self._site_scratch: list[np.ndarray] = []  # float32 values of a staged site, per tensor
        self._all_kept: dict[int, np.ndarray] = {}  # lane bits of an all-kept mask, per size
        self._ready: dict[str, dict[str, np.ndarray]] = {}  # downloads the finish wrote
        self._new_round()

    # ---- views -------------------------------------------------------------------------------
    def _flat(self, buffers: Mapping[np.dtype, np.ndarray], key: str) -> np.ndarray:
        s = self._slots[key]
        return buffers[s.group][s.start : s.start + s.size]

    def global_state(self) -> dict[str, np.ndarray]:
        """The current global model: views of the flat buffers (ints copied), global order.
        A later ``result`` builds a new buffer, so these views stay as they are."""
        out: dict[str, np.ndarray] = {}
        for key in self._keys:
            if key in self._ints:
                out[key] = self._ints[key].copy()
            else:
                s = self._slots[key]
                out[key] = self._flat(self._global, key).reshape(s.shape).astype(s.dtype, copy=False)
        return out

    # ---- masks -------------------------------------------------------------------------------
    def known_masks(self, site: str) -> dict[str, PackedMask]:
        """The masks held for ``site`` (what its digest-only tensors refer to)."""
        return self.store.get(site)

    def site_masks(self, site: str) -> dict[str, np.ndarray]:
        """``site``'s masks as bool arrays (for a checkpoint)."""
        return {name: m.unpack() for name, m in self.store.get(site).items()}

    def set_site_masks(self, site: str, masks: Mapping[str, np.ndarray]) -> None:
        """Restore ``site``'s masks (bool arrays, e.g. from a checkpoint)."""
        for name, m in masks.items():
            if name not in self._slots or np.shape(m) != self._slots[name].shape:
                raise ValueError(f"masks[{name!r}]: not a float tensor of the global model's shape")
        self.store.set_bool(site, masks)
        self._ready.pop(site, None)

    def forget(self, site: str) -> None:
        """Drop ``site``'s masks: its next download is dense and its next reply must carry
        every bitmap (call it when the site's round failed or a mask did not match)."""
        self.store.forget(site)
        self._ready.pop(site, None)

    # ---- folding -----------------------------------------------------------------------------
    @property
    def live_numerators(self) -> int:
        """Numerator buffers this round holds now (one model copy each)."""
        return sum(num is not None for num in self._num)

    def _zeros(self, like: np.ndarray) -> np.ndarray:
        """A zeroed buffer like ``like`` (:meth:`_spare`, zeroed)."""
        buf = self._spare(like)
        buf[:] = 0
        return buf

    def _spare(self, like: np.ndarray) -> np.ndarray:
        """A buffer like ``like``, contents undefined: a retired one nobody else references
        (reusing it is ~10x cheaper than faulting in fresh pages), else a new one."""
        for i in range(len(self._pool)):
            buf = self._pool[i]
            # References: the pool, ``buf`` and getrefcount's argument; each view adds one.
            if buf.dtype == like.dtype and buf.size == like.size and sys.getrefcount(buf) <= 3:
                del self._pool[i]
                return buf
        return np.empty_like(like)

    def _retire(self, buffers: dict[np.dtype, np.ndarray] | None) -> None:
        if buffers is not None:
            self._pool.extend(buffers.values())
            del self._pool[: -2 * len(self.rule.bases) * len(self._global)]  # bounded

    def _new_round(self) -> None:
        self._folded: list[_Folded] = []
        self._staged: list[_Staged] = []
        self._totals = np.zeros(len(self.rule.bases))
        self._num: list[dict[np.dtype, np.ndarray] | None] = [None] * len(self.rule.bases)
        self._int_acc: list[dict[str, np.ndarray] | None] = [None] * len(self.rule.bases)
        self._int_max: dict[str, np.ndarray] = {}

    def _split(self, site: str, reply: CheckedReply | Mapping[str, np.ndarray]
               ) -> tuple[dict[str, np.ndarray], dict[str, SparseTensor]]:
        """The reply's dense and sparse tensors, checked against the global's layout."""
        if isinstance(reply, CheckedReply):
            dense, sparse = reply.dense, reply.sparse
        else:
            try:
                dense, sparse = split_encoded(reply, self.store.get(site))
            except MaskMismatch as exc:
                raise MaskMismatch(f"site {site}: {exc}", exc.names) from None
            except ValueError as exc:
                raise ValueError(f"site {site}: {exc}") from None
        keys = set(dense) | set(sparse)
        missing = [k for k in self._keys if k not in keys]
        unexpected = sorted(keys - set(self._keys))
        if missing or unexpected:
            raise ValueError(f"site {site}: keys missing {missing[:5]}, unexpected {unexpected[:5]}; "
                             f"the site must send exactly the global model's tensors")
        for key, t in dense.items():
            want = self._slots[key].shape if key in self._slots else self._ints[key].shape
            float_key = key in self._slots
            if t.shape != want or (t.dtype.kind == "f") != float_key or t.dtype.kind not in "fiub":
                raise ValueError(f"site {site}: key {key!r} is {t.dtype} {t.shape}, the global "
                                 f"model's is {'float' if float_key else 'integer'} {want}")
        for key, t in sparse.items():
            if key not in self._slots:
                raise ValueError(f"site {site}: mask on non-float tensor {key!r}")
            if t.shape != self._slots[key].shape:
                raise ValueError(f"site {site}: key {key!r} has shape {t.shape}, the global "
                                 f"model's is {self._slots[key].shape}")
        return dense, sparse

    def fold(self, site: str, reply: CheckedReply | Mapping[str, np.ndarray],
             signal: Signal = 1.0) -> None:
        """Fold one site's reply into this round (once per site per round); the caller can
        drop the reply afterwards (up to MAX_STAGED replies stay referenced here, held for
        the one-pass finish). ``reply``: a :class:`CheckedReply` or wire arrays; ``signal``:
        what ``rule`` weighs (the site's metrics, or its weight for FixedWeights). Raises
        ValueError, leaving the round untouched, on a malformed reply."""
        if any(f.site == site for f in self._folded):
            raise ValueError(f"site {site}: already folded into this round")
        dense, sparse = self._split(site, reply)
        try:
            scores = self.rule.scores(signal)
        except ValueError as exc:
            raise ValueError(f"site {site}: {exc}") from None
        held = self.store.get(site)
        masks = {name: held[name] if t.digest is not None else pack_bits(t.bits.copy(), t.shape)
                 for name, t in sparse.items()}
        self.store.set(site, masks)
        self._totals += scores
        active = self._active(scores)
        for j in active:
            if self._int_acc[j] is None:
                self._int_acc[j] = {k: np.zeros(v.shape, np.float64) for k, v in self._ints.items()}
        for key in self._ints:
            t = dense[key]
            if self.int_rule == "max":
                cur = self._int_max.get(key)
                self._int_max[key] = t.copy() if cur is None else np.maximum(cur, t)
            else:
                for j in active:
                    self._int_acc[j][key] += t.astype(np.float64) * scores[j]
        if self._stages(sparse):
            self._staged.append(_Staged(site, dense, sparse, scores))
        else:
            self._flush()
            self._fold_floats(site, dense, sparse, scores, active)
        self._folded.append(_Folded(site, scores, masks))

    def _active(self, scores: np.ndarray) -> list[int]:
        """The bases a site with these scores adds to: alive at the totals so far (dead
        bases' numerators retired) and scored above 0."""
        alive = self.rule.alive(self._totals)
        for j in np.flatnonzero(~alive):
            self._retire(self._num[j])
            self._num[j] = None
            self._int_acc[j] = None
        return [int(j) for j in np.flatnonzero(alive & (scores > 0))]

    def _stages(self, sparse: Mapping[str, SparseTensor]) -> bool:
        """Hold this reply for the one-pass finish: possible while nothing was folded into
        numerators, fewer than MAX_STAGED are held, and it sends no differences."""
        return (self._one_pass and len(self._staged) < MAX_STAGED and self.live_numerators == 0
                and not any(t.delta for t in sparse.values()))

    def _flush(self) -> None:
        """Fold the held replies into numerators (more replies came than may be held)."""
        for staged in self._staged:
            self._fold_floats(staged.site, staged.dense, staged.sparse, staged.scores,
                              self._active(staged.scores))
        self._staged = []

    def _fold_floats(self, site: str, dense: Mapping[str, np.ndarray], sparse: Mapping[str, SparseTensor],
                     scores: np.ndarray, active: list[int]) -> None:
        for j in active:
            if self._num[j] is None:
                self._num[j] = {g: self._zeros(b) for g, b in self._global.items()}
        batched = self._fold_tails(dense, sparse, scores, active)
        for key, slot in self._slots.items():
            if key in sparse:
                self._fold_sparse(site, key, slot, sparse[key], scores, active)
            elif key not in batched:
                self._fold_dense(key, slot, dense[key], scores, active)

    def _fold_sparse(self, site: str, key: str, slot: _Slot, t: SparseTensor,
                     scores: np.ndarray, active: list[int]) -> None:
        if not active or t.values.size == 0:
            return
        values = t.values
        positions = self.store.positions(site, key)
        if values.dtype != slot.group or t.delta:  # half precision, a float64 model, differences
            values = self._scratch[slot.group][: values.size]
            if slot.group == np.float32:
                values_f32(t.values, out=values)
            else:
                values[:] = values_f32(t.values)
            if t.delta:  # differences from the download: added to the global this round started from
                values += scatter.take(self._flat(self._global, key), positions, self.backend)
        scatter.fold([self._flat(self._num[j], key) for j in active], positions,
                     values, [scores[j] for j in active], self.backend)

    def _fold_tails(self, dense: Mapping[str, np.ndarray], sparse: Mapping[str, SparseTensor],
                    scores: np.ndarray, active: list[int]) -> set[str]:
        """Fold each group's tail of small tensors in one block when the reply sent them all
        dense (one call per tensor costs ~4 ms per ResNet-50 reply); returns the keys folded."""
        done: set[str] = set()
        for group, (start, keys) in self._tail.items():
            if not active or any(k in sparse for k in keys):
                continue
            src = np.concatenate([dense[k].reshape(-1) for k in keys], dtype=group)
            self._axpy(group, start, src, scores, active)
            done.update(keys)
        return done

    def _fold_dense(self, key: str, slot: _Slot, t: np.ndarray, scores: np.ndarray,
                    active: list[int]) -> None:
        if active and slot.size:
            src = np.asarray(t, dtype=slot.group).reshape(-1)
            self._axpy(slot.group, slot.start, src, scores, active)

    def _axpy(self, group: np.dtype, start: int, src: np.ndarray, scores: np.ndarray,
              active: list[int]) -> None:
        """``num_j[start:start+len(src)] += s_j * src`` for every active numerator."""
        tmp = self._scratch[group][: src.size]
        for j in active:
            np.multiply(src, group.type(scores[j]), out=tmp)
            seg = self._num[j][group][start : start + src.size]
            np.add(seg, tmp, out=seg)

    # ---- the new global ----------------------------------------------------------------------
    def _positions(self, folded: _Folded, key: str) -> np.ndarray:
        """Kept positions of the mask ``folded`` used for ``key`` (cached when still held)."""
        held = self.store.mask(folded.site, key)
        if held is not None and held.digest == folded.masks[key].digest:
            return self.store.positions(folded.site, key)
        return kept_positions(folded.masks[key])

    def result(self) -> dict[str, np.ndarray]:
        """The new global state (same keys, shapes and dtypes as the global), which
        ``download_for`` then serves; ``summary`` says which weights were used."""
        if not self._folded:
            raise ValueError("FlatSas.result: no site was folded into this round")
        coefs = self.rule.coefficients(self._totals, len(self._folded))
        weights = np.array([f.scores @ coefs for f in self._folded])
        total = float(weights.sum())
        if not total > 0:
            raise ValueError("site weights sum to 0; give at least one site a positive weight")
        self._ready = {}
        live = [j for j in range(len(coefs)) if coefs[j] != 0 and (
            self._num[j] is not None or any(st.scores[j] > 0 for st in self._staged))]
        if self._staged and self.live_numerators == 0 and len(live) <= 2:
            self._finish_one_pass(live, coefs, weights, total)
            return self._end_round(None, coefs, weights, total)
        self._flush()
        live = [j for j in range(len(coefs)) if self._num[j] is not None and coefs[j] != 0]
        new = self._num[live[0]]
        if self.noise is None and self.mask_aware and len(self._folded) <= MAX_CODED_SITES and len(live) <= 2:
            other = self._num[live[1]] if len(live) > 1 else None
            self._finish_coded(new, other, [coefs[j] for j in live], weights, total)
            top = None
        else:
            for g, buf in new.items():
                _combine(buf, coefs[live[0]], [(self._num[j][g], coefs[j]) for j in live[1:]])
            top = self._finish_floats(new, weights, total)
        for j in range(len(self._num)):
            if j != live[0]:
                self._retire(self._num[j])
                self._num[j] = None
        self._retire(self._global)
        self._global = new
        return self._end_round(top, coefs, weights, total)

    def _end_round(self, top: float | None, coefs: np.ndarray, weights: np.ndarray,
                   total: float) -> dict[str, np.ndarray]:
        self._ints = self._finish_ints(coefs, total)
        self.summary = RoundSummary(
            weights={f.site: float(w / total) for f, w in zip(self._folded, weights, strict=True)},
            noise_std_max=top,
        )
        self._new_round()
        return self.global_state()

    def _finish_one_pass(self, live: list[int], coefs: np.ndarray, weights: np.ndarray,
                         total: float) -> None:
        """Every reply is held: the new global in one pass per tensor (:mod:`fedreid.fl.simd`),
        no numerators; each held site's download is written in the same pass.
        Bit-identical to folding the replies and the coded finish."""
        g = np.dtype(np.float32)
        staged = self._staged
        w = [np.array([st.scores[j] for st in staged], dtype=g) for j in live]
        w1 = w[1] if len(w) > 1 else np.zeros_like(w[0])
        wk = weights.astype(g)
        c0, c1 = coefs[live[0]], (coefs[live[1]] if len(live) > 1 else 0.0)
        new = {g: self._spare(self._global[g])}
        done = self._tails_one_pass(new, live, coefs, total)
        for key, slot in self._slots.items():
            out = self._flat(new, key)
            if not self._masked(key):
                if key not in done:
                    self._mean_one_pass(out, [st.dense[key] for st in staged], live, coefs, total)
                continue
            bits, values, downloads = [], [], []
            for k, st in enumerate(staged):
                t = st.sparse.get(key)
                if t is None:  # sent dense: every element kept
                    bits.append(self._all_kept_bits(slot.size))
                    values.append(self._kernel_values(k, st.dense[key]))
                    downloads.append(None)
                else:
                    bits.append(self.store.lane_bits(st.site, key))
                    values.append(self._kernel_values(k, t.values))
                    downloads.append(self._ready_values(st.site, key, t.values.size, slot))
            # Checked: split_encoded matched each bitmap's kept count to its values.
            over = simd.fused_round(out, self._flat(self._global, key), bits, values, downloads, w[0], w1, wk,
                                    c0, c1, download_dtype=self.download_dtype or "float32", checked=True)
            for st, beyond in zip(staged, over, strict=True):
                if beyond:  # out of the wire dtype's range: download_for converts it, and refuses
                    self._ready[st.site].pop(key, None)
        self._retire(self._global)
        self._global = new

    def _tails_one_pass(self, new: dict[np.dtype, np.ndarray], live: list[int], coefs: np.ndarray,
                        total: float) -> set[str]:
        """Each group's tail of small tensors in one block when every reply sent it dense."""
        done: set[str] = set()
        for group, (start, keys) in self._tail.items():
            if any(self._masked(k) for k in keys):
                continue
            srcs = [np.concatenate([st.dense[k].reshape(-1) for k in keys], dtype=group) for st in self._staged]
            self._mean_one_pass(new[group][start : start + srcs[0].size], srcs, live, coefs, total)
            done.update(keys)
        return done

    def _mean_one_pass(self, out: np.ndarray, srcs: list[np.ndarray], live: list[int],
                       coefs: np.ndarray, total: float) -> None:
        """Dense tensors' weighted mean as folding computes it: ``num_j = sum_k s_jk x_k``
        (each product rounded, added in site order), ``c_0 num_0 + c_1 num_1``, / total."""
        group = out.dtype
        tmp, other = self._scratch[group][: out.size], self._den[group][: out.size]
        for idx, j in enumerate(live):
            acc = out if idx == 0 else other
            acc[:] = 0
            for st, src in zip(self._staged, srcs, strict=True):
                if st.scores[j] > 0:
                    np.multiply(np.asarray(src, dtype=group).reshape(-1), group.type(st.scores[j]), out=tmp)
                    acc += tmp
        _combine(out, coefs[live[0]], [(other, coefs[live[1]])] if len(live) > 1 else [])
        out /= group.type(total)

    def _kernel_values(self, k: int, values: np.ndarray) -> np.ndarray:
        """Staged site k's values of one tensor as the kernel reads them: float32, float16
        or bfloat16 bits as they are (it widens them), other floats converted to float32
        into that site's scratch."""
        flat = values.reshape(-1)
        if flat.dtype in simd.KINDS and flat.flags.c_contiguous:
            return flat
        while len(self._site_scratch) <= k:
            self._site_scratch.append(np.empty(self._scratch[np.dtype(np.float32)].size, np.float32))
        out = self._site_scratch[k][: flat.size]
        out[:] = flat
        return out

    def _all_kept_bits(self, size: int) -> np.ndarray:
        bits = self._all_kept.get(size)
        if bits is None:
            bits = self._all_kept[size] = simd.le_bits(np.packbits(np.ones(size, np.bool_)))
        return bits

    def _ready_values(self, site: str, key: str, kept: int, slot: _Slot) -> np.ndarray | None:
        """Where the one-pass finish writes ``site``'s download of ``key`` in
        ``download_dtype`` (a fresh payload, :func:`~fedreid.fl.codec.npy_alloc`); None
        when no download dtype was given or the tensor is not float32."""
        if self.download_dtype is None or slot.dtype != np.float32:
            return None
        payload, wire = npy_alloc((kept,), wire_dtype(self.download_dtype))
        self._ready.setdefault(site, {})[key] = payload
        return wire

    def _masked(self, key: str) -> bool:
        """SAS applies to ``key``: some folded site sent it masked."""
        return self.mask_aware and any(key in f.masks for f in self._folded)

    def _finish_coded(self, new: dict[np.dtype, np.ndarray], other: dict[np.dtype, np.ndarray] | None,
                      coefs: list[float], weights: np.ndarray, total: float) -> None:
        """Without DP noise: ``(c_0 num_0 + c_1 num_1) / den`` in one pass per tensor, the
        denominator looked up from each element's membership code (which folded sites kept
        it) instead of scattered site by site."""
        codes = self._member_codes()
        luts = {g: scatter.member_lut(weights, g) for g in new}
        cb = coefs[1] if other is not None else 0.0
        for key, slot in self._slots.items():
            out = self._flat(new, key)
            b = None if other is None else self._flat(other, key)
            if self._masked(key):
                scatter.finish_coded(out, b, coefs[0], cb, self._flat(codes, key), luts[slot.group],
                                     self._flat(self._global, key), self.backend)
                continue
            _combine(out, coefs[0], [] if b is None else [(b, cb)])
            out /= slot.group.type(total)

    def _member_codes(self) -> dict[np.dtype, np.ndarray]:
        """Per element, bit k set when the k-th folded site kept it (or sent its tensor
        dense); cached while the same sites fold with the same masks, as once pruning has
        reached its target."""
        key = tuple((f.site, tuple((n, m.digest) for n, m in f.masks.items())) for f in self._folded)
        if key == self._codes_for:
            return self._codes
        dtype = np.dtype(np.uint8 if len(self._folded) <= 8 else np.uint16)
        codes = {g: np.zeros(b.size, dtype) for g, b in self._global.items()}
        for k, f in enumerate(self._folded):
            bit = 1 << k
            for name in self._slots:
                target = self._flat(codes, name)
                if name in f.masks:
                    scatter.mark(target, self._positions(f, name), bit, self.backend)
                else:
                    target |= dtype.type(bit)
        self._codes, self._codes_for = codes, key
        return codes

    def _finish_floats(self, new: dict[np.dtype, np.ndarray], weights: np.ndarray,
                       total: float) -> float | None:
        """num/den per tensor (previous value where nobody kept it), then DP noise."""
        top = None if self.noise is None else 0.0
        for key in self._keys:  # global order: the noise is drawn as add_noise draws it
            slot = self._slots.get(key)
            if slot is None:
                continue
            num = self._flat(new, key)
            masked = self._masked(key)
            if masked:
                den = self._denominator(key, slot, weights)
                scatter.divide_or_keep(num, den, self._flat(self._global, key),
                                       self._empty[: slot.size], self.backend)
            else:
                num /= slot.group.type(total)
            if self.noise is not None and not key.endswith(LOCAL_SUFFIXES):
                if masked:
                    scale = self._largest_weight(key, slot, weights)
                    np.divide(scale, den, out=scale)  # 0 where nobody kept it (den is 1 there)
                else:
                    scale = np.full(slot.size, weights.max() / total, dtype=slot.group)
                top = max(top, noise_in_place(num, scale.astype(np.float32, copy=False), self.noise))
        return top

    def _denominator(self, key: str, slot: _Slot, weights: np.ndarray) -> np.ndarray:
        """``sum_k a_k m_k`` for one tensor, in the group's scratch."""
        den = self._den[slot.group][: slot.size]
        den[:] = 0
        for f, w in zip(self._folded, weights, strict=True):
            if w == 0:
                continue
            if key in f.masks:
                scatter.add_at(den, self._positions(f, key), float(w), self.backend)
            else:
                den += slot.group.type(w)
        return den

    def _largest_weight(self, key: str, slot: _Slot, weights: np.ndarray) -> np.ndarray:
        """``max_k a_k m_k`` per element, in the group's scratch: weights written in
        ascending order, so the last write at an element is the largest of those kept it."""
        top = self._top[slot.group][: slot.size]
        top[:] = 0
        for k in np.argsort(weights, kind="stable"):
            f, w = self._folded[k], float(weights[k])
            if w == 0:
                continue
            if key in f.masks:
                scatter.fill_at(top, self._positions(f, key), w, self.backend)
            else:
                np.maximum(top, slot.group.type(w), out=top)
        return top

    def _finish_ints(self, coefs: np.ndarray, total: float) -> dict[str, np.ndarray]:
        if self.int_rule == "max":
            return {k: self._int_max[k].astype(g.dtype) for k, g in self._ints.items()}
        out = {}
        for key, g in self._ints.items():
            acc = sum(coefs[j] * self._int_acc[j][key] for j in range(len(coefs))
                      if self._int_acc[j] is not None and coefs[j] != 0)
            out[key] = np.asarray(np.rint(acc / total)).astype(g.dtype)
        return out

    # ---- downloads ---------------------------------------------------------------------------
    def _download_values(self, site: str, key: str, value_dtype: str) -> np.ndarray:
        """``site``'s kept values of ``key`` in the wire dtype, written straight into their
        payload (:func:`~fedreid.fl.codec.npy_alloc`): taken there when the model is float32
        and so are the values, else taken into scratch and converted there."""
        slot = self._slots[key]
        ready = self._ready.get(site, {}).pop(key, None)
        if ready is not None and value_dtype == self.download_dtype:
            return npy_view(ready)
        pos = self.store.positions(site, key)
        payload, wire = npy_alloc((pos.size,), wire_dtype(value_dtype))
        src = self._flat(self._global, key)
        if value_dtype == "float32" and slot.dtype == np.float32:
            scatter.take(src, pos, self.backend, out=wire)
        else:
            values = scatter.take(src, pos, self.backend, out=self._scratch[slot.group][: pos.size])
            to_wire_values(values.astype(slot.dtype, copy=False), value_dtype, key, out=wire)
        return npy_view(payload)

    def download_for(self, site: str, value_dtype: str = "float32") -> dict[str, np.ndarray]:
        """``site``'s personalised download (global ⊙ its mask) as wire arrays: masked tensors
        as values taken from the flat global plus the mask's digest (no bitmap: the site
        holds its mask), everything else dense. A site without held masks gets the dense
        global."""
        held = self.store.get(site)
        out: dict[str, np.ndarray] = {}
        for key in self._keys:
            if key in held:
                out.update(encode_known(key, self._download_values(site, key, value_dtype), held[key]))
            elif key in self._ints:
                out[f"{key}{SEP}dense"] = self._ints[key]
            else:
                s = self._slots[key]
                out[f"{key}{SEP}dense"] = (
                    self._flat(self._global, key).reshape(s.shape).astype(s.dtype, copy=False))
        return out

