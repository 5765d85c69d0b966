"""Cross-round recovery transitions and serialisation."""

import io

import numpy as np
import pytest

from fedreid.fl.crr import CrossRoundRecovery, restored_weights


def backup():
    return {"w": np.array([1.0, 2.0, 3.0, 4.0], np.float32)}, {"w": np.array([1, 1, 1, 0], bool)}


def test_accept_drops_backup_and_allows_next_step():
    crr = CrossRoundRecovery(delta=0.25)
    assert crr.can_prune(0.0, 0.6)
    w, m = backup()
    crr.record_before_pruning(0.75, w, m)
    assert crr.pending and not crr.can_prune(0.1, 0.6)  # unchecked step blocks pruning
    with pytest.raises(ValueError, match="not checked yet"):
        crr.record_before_pruning(0.75, w, m)
    d = crr.check_downloaded(0.5)  # drop 0.25 == delta: not more than delta -> accept
    assert (d.action, d.score, d.reference) == ("accept", 0.5, 0.75) and d.weights == {}
    assert not crr.pending and crr.can_prune(0.1, 0.6)
    assert crr.check_downloaded(0.1).action == "skip"  # nothing pending: no judgement


def test_restore_returns_backup_copy_and_halts_forever():
    crr = CrossRoundRecovery(delta=0.01)
    w, m = backup()
    crr.record_before_pruning(0.80, w, m)
    w["w"][:] = 0  # the caller's arrays change; the backup must not
    d = crr.check_downloaded(0.70)
    assert d.action == "restore" and d.reference == 0.80
    np.testing.assert_array_equal(d.weights["w"], [1, 2, 3, 4])
    np.testing.assert_array_equal(d.masks["w"], [True, True, True, False])
    assert crr.halted and crr.restores == 1
    for _ in range(5):
        assert crr.check_downloaded(0.9).action == "skip"
        assert not crr.can_prune(0.1, 0.6)


def test_pause_n_rounds_then_resume():
    crr = CrossRoundRecovery(delta=0.01, halt="pause", pause_rounds=2)
    w, m = backup()
    crr.record_before_pruning(0.80, w, m)
    crr.begin_round()
    assert crr.check_downloaded(0.50).action == "restore"  # round t
    assert not crr.halted and not crr.can_prune(0.1, 0.6)  # round t: paused
    crr.begin_round()  # round t+1: nothing pending, so nothing is checked; still paused
    assert not crr.can_prune(0.1, 0.6)
    crr.begin_round()  # round t+2: two rounds have been skipped
    assert crr.can_prune(0.1, 0.6)
    crr.record_before_pruning(0.56, w, m)
    assert crr.check_downloaded(0.56).action == "accept"


def test_can_prune_respects_target():
    crr = CrossRoundRecovery()
    assert crr.can_prune(0.59, 0.6)
    assert not crr.can_prune(0.6, 0.6)
    assert not crr.can_prune(0.7, 0.6)


def test_argument_errors():
    with pytest.raises(ValueError, match="delta"):
        CrossRoundRecovery(delta=-1)
    with pytest.raises(ValueError, match="halt"):
        CrossRoundRecovery(halt="never")
    with pytest.raises(ValueError, match="pause_rounds"):
        CrossRoundRecovery(halt="pause", pause_rounds=0)
    with pytest.raises(ValueError, match="score"):
        CrossRoundRecovery().check_downloaded(float("nan"))


def _through_npz(d):
    buf = io.BytesIO()
    np.savez(buf, **d)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("pending", [True, False])
def test_serialise_round_trip(pending):
    crr = CrossRoundRecovery(delta=0.05, halt="pause", pause_rounds=3)
    w, m = backup()
    if pending:
        crr.record_before_pruning(0.9, w, m)
    else:
        crr.pause_left = 2
    d = crr.to_dict()
    assert all(isinstance(v, (float, int, str, bool, np.ndarray)) for v in d.values())
    back = CrossRoundRecovery.from_dict(_through_npz(d))
    assert (back.delta, back.halt, back.pause_rounds) == (0.05, "pause", 3)
    assert (back.pending, back.pause_left, back.halted) == (pending, crr.pause_left, False)
    if pending:
        dec = back.check_downloaded(0.5)
        assert dec.action == "restore" and dec.reference == pytest.approx(0.9)
        np.testing.assert_array_equal(dec.weights["w"], w["w"])
        assert dec.masks["w"].dtype == bool
    with pytest.raises(ValueError, match="'delta' is missing"):
        CrossRoundRecovery.from_dict({})


def test_restored_weights_backup_and_refill():
    crr = CrossRoundRecovery(delta=0.0)
    w, m = backup()
    crr.record_before_pruning(1.0, w, m)
    d = crr.check_downloaded(0.5)
    downloaded = {"w": np.array([10, 0, 30, 0], np.float32), "b": np.array([7.0], np.float32)}
    current = {"w": np.array([1, 0, 1, 0], bool)}  # the undone step pruned element 1
    full = restored_weights(d, downloaded, current)
    np.testing.assert_array_equal(full["w"], [1, 2, 3, 4])
    np.testing.assert_array_equal(full["b"], [7])
    refill = restored_weights(d, downloaded, current, mode="refill")
    np.testing.assert_array_equal(refill["w"], [10, 2, 30, 0])
    np.testing.assert_array_equal(downloaded["w"], [10, 0, 30, 0])  # input untouched
    with pytest.raises(ValueError, match="mode"):
        restored_weights(d, downloaded, current, mode="mix")
    crr.record_before_pruning(0.5, w, m)
    with pytest.raises(ValueError, match="not 'restore'"):
        restored_weights(crr.check_downloaded(0.5), downloaded, current)
