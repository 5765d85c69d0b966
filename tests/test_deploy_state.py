"""A deployed site's state belongs to its run: a new run starts fresh, a resumed run finds its
own committed state, and a round the coordinator never committed never replaces it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from clients.runtime import commit_through, identify, save_state, state_for_round
from fedreid.client_state import ClientState
from fedreid.config import load_config


def context(run_id: int = 7, state_dir: Path | None = None, site: str = "market") -> Context:
    """A deployed node's context: a fresh one is what a new Flower run (or a restart) gets."""
    node = {"site": site, "data-root": "/data/market"}
    if state_dir is not None:
        node["state-dir"] = str(state_dir)
    return Context(run_id=run_id, node_id=1, node_config=node, state=RecordDict(), run_config={})


def trained(rnd: int) -> ClientState:
    """The state a site keeps after training round ``rnd`` (its mask records the round)."""
    return ClientState(masks={"w": np.full(4, rnd % 2, bool)}, rounds_trained=rnd, last_round=rnd)


def cfg(run_name: str):
    return load_config([f"fl.run_name={run_name}"] if run_name else [])


def test_each_run_has_its_own_state_folder(tmp_path):
    one = identify(cfg("run-a"), context(state_dir=tmp_path), None)
    two = identify(cfg("run-b"), context(state_dir=tmp_path), None)
    assert one.state_file == tmp_path / "run-a" / "market.pt"
    assert two.state_dir == tmp_path / "run-b"
    unnamed = identify(cfg(""), context(run_id=42, state_dir=tmp_path), None)
    assert unnamed.state_dir == tmp_path / "flwr-42"  # a plain `flwr run`: Flower's run id
    sim = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                  run_config={})
    assert identify(load_config(["data.sites=[market]"]), sim, tmp_path).state_dir == tmp_path
    with pytest.raises(ValueError, match="cannot name a folder"):
        identify(cfg("../x"), context(state_dir=tmp_path), None)


def test_a_new_run_starts_fresh_even_where_another_run_left_state(tmp_path):
    ctx = context(state_dir=tmp_path)
    first = identify(cfg("run-a"), ctx, None)
    for rnd in (1, 2):
        state, _, _ = state_for_round(ctx, first, rnd)
        save_state(ctx, first, trained(rnd), rnd)
    commit_through(first, 2)
    assert ClientState.load(first.state_file).last_round == 2
    second = identify(cfg("run-b"), context(state_dir=tmp_path), None)
    state, redone, warnings = state_for_round(context(state_dir=tmp_path), second, 1)
    assert state.last_round == 0 and not state.masks and not redone and not warnings


def test_an_uncommitted_round_never_replaces_committed_state(tmp_path):
    """Round 3 trained, then the coordinator stopped (--timeout) or crashed before committing
    it: the committed state stays round 2; resumed, round 3 is redone from round 2's state."""
    ctx = context(state_dir=tmp_path)
    site = identify(cfg("run-a"), ctx, None)
    for rnd in (1, 2, 3):
        state_for_round(ctx, site, rnd)
        save_state(ctx, site, trained(rnd), rnd)
    assert ClientState.load(site.state_file).last_round == 2  # round 3 is only pending
    assert [r for r, _ in site.pending()] == [3]
    resumed = context(run_id=8, state_dir=tmp_path)  # a new Flower run of the same fedreid run
    state, redone, warnings = state_for_round(resumed, site, 3)
    assert state.last_round == 2 and redone
    assert "round 3 is being redone" in warnings[0] and "after round 2" in warnings[0]
    assert site.pending() == []


def test_without_a_resume_nothing_is_called_redone(tmp_path):
    """A site restarted within a run (no resume) continues from its newest state silently."""
    ctx = context(state_dir=tmp_path)
    site = identify(cfg("run-a"), ctx, None)
    state_for_round(ctx, site, 1)
    save_state(ctx, site, trained(1), 1)
    restarted = context(state_dir=tmp_path)
    state, redone, warnings = state_for_round(restarted, site, 2)
    assert state.last_round == 1 and not redone and not warnings


def test_evaluation_commits_the_round_it_evaluates(tmp_path):
    ctx = context(state_dir=tmp_path)
    site = identify(cfg("run-a"), ctx, None)
    save_state(ctx, site, trained(1), 1)
    commit_through(site, 1)
    assert ClientState.load(site.state_file).last_round == 1 and site.pending() == []
    save_state(ctx, site, trained(2), 2)
    commit_through(site, 2)
    assert ClientState.load(site.previous_file).last_round == 1  # kept for a redo
