"""Downloads as int8 steps of a view both sides hold (codec.download=difference-int8)."""

from __future__ import annotations

import numpy as np
import pytest

from fedreid.fl.codec import DELTA_BLOCK, pack_mask
from fedreid.fl.view import (
    HELD_KEY,
    VIEW_KEY,
    VIEW_MISMATCH,
    SharedView,
    SiteView,
    initial_token,
    masks_digest,
)

F32 = np.float32


def model(rng, scale=1.0):
    return {"conv": (scale * rng.standard_normal((8, 4, 3, 3))).astype(F32),
            "bn": rng.standard_normal(8).astype(F32), "nbt": np.array(3, np.int64)}


def moved(rng, state, step=1e-3):
    out = {k: (v + step * rng.standard_normal(v.shape)).astype(F32) if v.dtype.kind == "f" else v + 1
           for k, v in state.items()}
    return out


def test_steps_keep_the_site_view_equal_to_the_coordinators_bit_for_bit():
    rng = np.random.default_rng(0)
    g = model(rng)
    token = initial_token("ab" * 16)
    server, site = SharedView(g, token), SiteView()
    site.reset(g, token)
    for _ in range(5):
        g = moved(rng, g)
        server.advance(g)
        arrays = server.download(site.token, "float16")
        assert arrays["conv::delta"].dtype == np.int8 and arrays["nbt::dense"] == g["nbt"]
        got = site.apply(arrays)
        for k in ("conv", "bn"):
            np.testing.assert_array_equal(got[k], server.view[k])
            # each step is to the global itself: the view trails it by half a scale step at most
            assert np.abs(got[k] - g[k]).max() <= arrays[f"{k}::scale"].max() / 2 + 1e-7
        assert got["nbt"] == g["nbt"] and site.token == server.token


def test_a_step_costs_a_byte_a_weight_and_a_held_view_costs_nothing():
    rng = np.random.default_rng(1)
    g = model(rng)
    server, site = SharedView(g, 7), SiteView(g, 7)
    server.advance(moved(rng, g))
    step = server.download(7, "float32")
    n = g["conv"].size
    assert step["conv::delta"].nbytes == n and step["conv::scale"].size == -(-n // DELTA_BLOCK)
    site.apply(step)
    held = server.download(site.token, "float32")
    assert set(held) == {VIEW_KEY}
    assert site.apply(held) is site.state  # nothing moves


def test_a_site_behind_or_without_a_view_gets_the_whole_view():
    rng = np.random.default_rng(2)
    g = model(rng)
    server = SharedView(g, 7)
    server.advance(moved(rng, g))
    server.advance(moved(rng, g))  # two steps on: a site holding 7 missed one
    whole = server.download(7, "float16")
    assert int(whole[VIEW_KEY][0]) == 0 and "conv::values" in whole and whole["conv::values"].dtype == np.float16
    site = SiteView()
    got = site.apply(whole)
    np.testing.assert_allclose(got["conv"], server.view["conv"], rtol=1e-3)
    assert site.token == server.token
    exact = SiteView().apply(server.download(None, "float32"))
    np.testing.assert_array_equal(exact["conv"], server.view["conv"])


def test_a_step_for_another_view_is_refused_and_changes_nothing():
    rng = np.random.default_rng(3)
    g = model(rng)
    server, site = SharedView(g, 7), SiteView(g, 8)
    server.advance(moved(rng, g))
    before = {k: v.copy() for k, v in site.state.items()}
    with pytest.raises(ValueError, match=VIEW_MISMATCH):
        site.apply(server.download(7, "float32"))
    with pytest.raises(ValueError, match=VIEW_MISMATCH):
        SiteView().apply(server.download(7, "float32"))  # no view at all
    assert site.token == 8 and all(np.array_equal(site.state[k], before[k]) for k in before)


def test_a_malformed_step_names_the_tensor():
    rng = np.random.default_rng(4)
    g = model(rng)
    server, site = SharedView(g, 7), SiteView(g, 7)
    server.advance(moved(rng, g))
    step = dict(server.download(7, "float32"))
    del step["conv::scale"]
    with pytest.raises(ValueError, match="conv: a view step needs"):
        site.apply(step)
    assert site.token == 7


def test_masks_digest_names_the_set_of_masks():
    rng = np.random.default_rng(5)
    masks = {"a": rng.random((4, 5)) < 0.5, "b": rng.random(9) < 0.5}
    def digest(ms):
        return masks_digest({k: pack_mask(m).digest for k, m in ms.items()})

    d = digest(masks)
    assert d == digest(dict(reversed(list(masks.items()))))
    flipped = {**masks, "b": ~masks["b"]}
    assert d != digest(flipped) and masks_digest({}) == bytes(8) and HELD_KEY == "::held"


def test_the_coordinator_steps_sites_that_replied_and_sends_the_rest_the_whole_view():
    from server.view_downloads import ViewDownloads

    rng = np.random.default_rng(6)
    g = model(rng)
    views = ViewDownloads(g, last_round=0, initial_digest="ab" * 16)
    views.seeded([1, 2])
    views.delivered(1, "a")
    views.delivered(2, "b")
    views.forget("b")  # e.g. its evaluation reply was an error
    views.advance(1, moved(rng, g))
    common: dict = {}
    step = views.record(1, "a", {}, "float32", common)
    whole = views.record(2, "b", {}, "float32", common)
    assert "conv::delta" in step and "conv::values" not in whole and "conv::dense" in whole
    assert int(np.asarray(step[VIEW_KEY].numpy())[0]) == initial_token("ab" * 16)
    assert HELD_KEY not in step  # no masks held for the site: it sends its bitmaps
    views.advance(1, g)  # the same round again: no new step
    views.delivered(1, "a")
    assert set(views.record(1, "a", {}, "float32", {})) == {VIEW_KEY}
