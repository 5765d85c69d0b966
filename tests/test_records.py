"""wire.records: the fast Array constructor leaves what Flower's constructor leaves."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from wire.records import numpy_array, record_of, to_array


@pytest.mark.parametrize("value", [np.arange(6, dtype=np.float32).reshape(2, 3), np.float16(1.5) * np.ones(4),
                                   np.array(7, dtype=np.int64), np.zeros((0, 3), dtype=np.uint8)])
def test_to_array_equals_flowers_constructor(value):
    """Same fields, same dirty flag, same content id, and it round-trips through a record."""
    ours, flowers = to_array(value), Array(np.asarray(value))
    assert (ours.dtype, ours.shape, ours.stype, ours.data) == (flowers.dtype, flowers.shape, flowers.stype,
                                                                flowers.data)
    assert ours.is_dirty and flowers.is_dirty
    assert ours.object_id == flowers.object_id
    np.testing.assert_array_equal(record_of({"x": ours})["x"].numpy(), np.asarray(value))


def test_numpy_array_marks_changes_like_flower():
    """Setting a field after construction clears the cached content id, as for Flower's."""
    a = numpy_array("float32", (1,), to_array(np.ones(1, np.float32)).data)
    first = a.object_id
    a.data = to_array(np.zeros(1, np.float32)).data
    assert a.object_id != first
    ArrayRecord()["k"] = a  # the record's value check accepts it


def test_record_of_equals_a_record_filled_item_by_item():
    """Same entries in the same order, dirty, same content id; wrong types refused."""
    arrays = {f"t{k}": to_array(np.full(k + 1, k, np.float32)) for k in range(5)}
    ours, flowers = record_of(arrays), ArrayRecord()
    for k, v in arrays.items():
        flowers[k] = v
    assert list(ours.items()) == list(flowers.items())
    assert ours.is_dirty and flowers.is_dirty
    assert ours.object_id == flowers.object_id
    with pytest.raises(TypeError, match="not str -> flwr Array"):
        record_of({"x": np.zeros(2)})
