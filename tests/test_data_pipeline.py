"""Batch augmentation, the P×K sampler and the in-memory image store."""

import numpy as np
import pytest
import torch
from PIL import Image

from fedreid.data.augment import normalize, random_erasing, train_augment
from fedreid.data.records import DataError, Sample
from fedreid.data.samplers import pk_batches
from fedreid.data.store import ImageStore


def test_train_augment_shape_and_determinism():
    x = torch.randint(0, 256, (8, 3, 32, 16), dtype=torch.uint8)
    a = train_augment(x, torch.Generator().manual_seed(1), pad=4)
    b = train_augment(x, torch.Generator().manual_seed(1), pad=4)
    assert a.shape == (8, 3, 32, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)


def test_no_augmentation_is_plain_normalisation():
    x = torch.randint(0, 256, (4, 3, 16, 8), dtype=torch.uint8)
    out = train_augment(x, torch.Generator().manual_seed(0), flip_p=0.0, pad=0, erasing_p=0.0)
    assert torch.allclose(out, normalize(x))
    # mean colour maps to ~0 after normalisation
    grey = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).mul(255).round().to(torch.uint8)
    assert normalize(grey.expand(1, 3, 2, 2)).abs().max() < 0.01


def test_random_erasing_zeroes_one_box_per_chosen_image():
    x = torch.ones(16, 3, 20, 10)
    out = random_erasing(x.clone(), torch.Generator().manual_seed(0), p=1.0)
    zeros = (out == 0).all(1)  # all channels erased together
    for i in range(16):
        ys, xs = torch.nonzero(zeros[i], as_tuple=True)
        assert len(ys) > 0
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert box == len(ys)  # a filled rectangle


def test_pk_batches_balanced_and_skip_outliers():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 5 + [3] * 4 + [-1] * 7)
    batches = pk_batches(labels, batch_size=8, num_instances=4, rng=np.random.default_rng(0))
    assert batches
    for b in batches:
        assert len(b) == 8
        lab, counts = np.unique(labels[b], return_counts=True)
        assert (lab >= 0).all() and (counts % 4 == 0).all()
    with pytest.raises(ValueError, match="multiple"):
        pk_batches(labels, 10, 4, np.random.default_rng(0))


def test_image_store_decodes_and_resizes(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (20, 40), (i * 50, 0, 0)).save(p)
        paths.append(Sample(str(p), pid=i, camid=0))
    store = ImageStore(paths, (32, 16))
    assert store.images.shape == (3, 3, 32, 16) and store.images.dtype == torch.uint8
    assert list(store.pids) == [0, 1, 2]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        ImageStore([Sample(str(bad), 0, 0)], (32, 16))
