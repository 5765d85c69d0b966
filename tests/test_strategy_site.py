"""The site's side of the wire: the seeded start, downloads cut with the site's own mask,
and uploads that send a bitmap only when the mask changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedreid.config import load_config
from fedreid.data.split_images import load_split_images
from fedreid.data.synth import generate_synthetic8
from fedreid.federated_client import FederatedClient
from fedreid.fl.codec import (
    INITIAL_MISMATCH,
    MaskMismatch,
    encode_initial,
    encode_sparse,
    state_digest,
)
from fedreid.fl.flat_sas import FlatSas
from fedreid.fl.validate import check_reply
from fedreid.fl.weight_rules import weight_rule
from fedreid.training import initial_shared_state


@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate_synthetic8(root, scale=0.05, seed=1, size=(32, 16), sites=["market"], min_test_ids=6, workers=1)
    return load_split_images(root / "market", "fedreid", (32, 16))


def config():
    torch.set_num_threads(1)
    return load_config(["method.name=bot", "model.arch=resnet18", "device=cpu", "train.batch_size=16",
                        "train.max_batches=1", "data.height=32", "data.width=16", "eval.batch_size=64",
                        "crr.enabled=false",
                        "prune.step=0.3", "prune.target=0.6", "prune.every=2", "codec.value_dtype=float16",
                        "codec.upload=difference"])


def test_seeded_start_two_rounds_and_changed_masks_only(tiny_site):
    cfg = config()
    init = initial_shared_state(cfg, "bot")
    shapes = {k: v.shape for k, v in init.items()}
    dtypes = {k: v.dtype for k, v in init.items()}
    server = FlatSas(init, weight_rule("klpwa"))

    # round 1: no model travels; the site rebuilds it and proves it by the digest
    site = FederatedClient(cfg, tiny_site)
    got = site.decode_download(encode_initial(state_digest(init)))
    assert state_digest(got) == state_digest(init)
    with pytest.raises(ValueError, match=INITIAL_MISMATCH):
        FederatedClient(cfg, tiny_site).decode_download(encode_initial("00" * 16))
    up1, metrics1 = site.train_round(encode_initial(state_digest(init)), 1)
    assert metrics1["pruned_this_round"] == 1.0
    assert any(k.endswith("::bits") for k in up1) and not any(k.endswith("::digest") for k in up1)
    reply = check_reply(up1, metrics1, shapes=shapes, dtypes=dtypes, known_masks=server.known_masks("market"))
    server.fold("market", reply, reply.metrics)
    server.result()

    # round 2: the download has no bitmap; pruning is not due, so the reply has none either
    down2 = server.download_for("market", "float16")
    assert not any(k.endswith("::bits") for k in down2) and any(k.endswith("::digest") for k in down2)
    site2 = FederatedClient(cfg, tiny_site, site.state)
    up2, metrics2 = site2.train_round(down2, 2)
    assert metrics2["pruned_this_round"] == 0.0
    assert not any(k.endswith("::bits") for k in up2) and any(k.endswith("::digest") for k in up2)
    # values go as differences from the download (codec.upload=difference)
    assert any(k.endswith("::delta") for k in up2) and not any(k.endswith("::values") for k in up2)
    reply = check_reply(up2, metrics2, shapes=shapes, dtypes=dtypes, known_masks=server.known_masks("market"))
    server.fold("market", reply, reply.metrics)
    new = server.result()
    for name, mask in site2.state.masks.items():  # nobody kept these: the previous global stays
        np.testing.assert_array_equal(new[name][~mask], init[name][~mask])
    assert sum(v.nbytes for v in up2.values()) < 0.5 * sum(v.nbytes for v in encode_sparse(init, {}).values())


def test_int8_uploads_carry_their_rounding_to_the_next_round(tiny_site):
    cfg = config()
    cfg.codec.upload = "difference-int8"
    init = initial_shared_state(cfg, "bot")
    shapes = {k: v.shape for k, v in init.items()}
    server = FlatSas(init, weight_rule("klpwa"))
    site = FederatedClient(cfg, tiny_site)
    up, metrics = site.train_round(encode_initial(state_digest(init)), 1)
    int8_names = {k[: -len("::scale")] for k in up if k.endswith("::scale")}
    assert int8_names and all(up[f"{k}::delta"].dtype == np.int8 for k in int8_names)
    left = site.state.upload_residual
    assert set(left) == int8_names and any(np.abs(v).max() > 0 for v in left.values())
    for name in int8_names:  # nothing is carried where the site pruned
        assert not left[name][~site.state.masks[name]].any()
    reply = check_reply(up, metrics, shapes=shapes, known_masks=server.known_masks("market"))
    server.fold("market", reply, reply.metrics)
    server.result()
    dense_bytes = sum(v.nbytes for v in encode_sparse(init, {}).values())
    assert sum(v.nbytes for v in up.values()) < 0.45 * dense_bytes  # a byte a kept value (+ bitmap)


def test_codec_upload_absolute_sends_the_values_themselves(tiny_site):
    cfg = config()
    cfg.codec.upload = "absolute"
    init = initial_shared_state(cfg, "bot")
    up, _ = FederatedClient(cfg, tiny_site).train_round(encode_initial(state_digest(init)), 1)
    assert any(k.endswith("::values") for k in up) and not any(k.endswith("::delta") for k in up)


def test_a_download_for_a_mask_the_site_does_not_hold_is_refused(tiny_site):
    cfg = config()
    init = initial_shared_state(cfg, "bot")
    server = FlatSas(init)
    name = next(k for k, v in init.items() if v.ndim == 4)
    server.set_site_masks("market", {name: np.random.default_rng(0).random(init[name].shape) < 0.5})
    site = FederatedClient(cfg, tiny_site)  # a site that lost its state
    with pytest.raises(MaskMismatch, match="does not hold"):
        site.decode_download(server.download_for("market"))
