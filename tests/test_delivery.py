"""server.delivery: which nodes take part, bounded waits that say who is missing, and
replies counted honestly (a dead site is a failure), all named by site."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from fedreid.config import load_config
from fedreid.fl.admission import signature_of
from server.delivery import Delivery, parse_bound_sites
from server.strategy import FedReIDStrategy
from sims.inprocess_grid import InProcessGrid

pytestmark = pytest.mark.usefixtures("task_identity")
STATE = {"w": np.zeros((2, 3), np.float32)}
SIGNATURE = json.dumps({k: [list(v.shape), str(v.dtype)] for k, v in STATE.items()})


def site_app(claims: dict[int, str], errors: dict[int, int] = None, warnings: dict[int, str] = None):
    """A ClientApp stand-in: node → the site it claims; optional error codes and warnings."""
    def app(msg: Message, context) -> Message:
        node = context.node_id
        if node in (errors or {}):
            return Message(Error(code=errors[node], reason="gone"), reply_to=msg)
        meta = {"site": claims[node], "method": "capr", "arch": "resnet18", "signature": SIGNATURE}
        if node in (warnings or {}):
            meta["warnings"] = warnings[node]
        return Message(RecordDict({"meta": ConfigRecord(meta), "metrics": MetricRecord({"x": 1.0})}), reply_to=msg)
    return app


def delivery(sites, bound=None, node_wait=1.0, report_every=10.0) -> Delivery:
    return Delivery(run_sites=sites, min_sites=len(sites), node_wait_s=node_wait, signature=signature_of(STATE),
                    rng=np.random.default_rng(0), bound=bound, report_every_s=report_every)


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_only_the_runs_sites_take_part_and_keys_decide_the_site(caplog):
    """viper's key is registered for a site outside the run: left alone, never messaged. A
    node without a registered key is refused, and one claiming another site than its key's."""
    caplog.set_level(logging.INFO, logger="flwr")
    claims = {1: "market", 2: "viper", 3: "cuhk01", 4: "market"}
    grid = InProcessGrid(site_app(claims), {n: {} for n in claims})
    d = delivery(["market", "cuhk01"], bound={1: "market", 2: "viper", 4: "cuhk01"})
    node_site: dict[int, str] = {}
    picked = d.sample(grid, 1.0, node_site, 0)
    assert picked == [1] and node_site == {1: "market"}
    assert 2 not in {m.metadata.dst_node_id for m in grid.sent}  # left alone: no message at all
    assert d.left_out == {2: "viper"}
    assert "not registered for a site" in d.refused[3] and "fedreid keys register" in d.refused[3]
    assert "registered for site 'cuhk01' but it claims to be 'market'" in d.refused[4]
    said = lines(caplog)
    assert sum("viper" in s and "left alone" in s for s in said) == 1  # said once


def test_the_wait_reports_who_is_missing_at_most_every_interval(caplog):
    caplog.set_level(logging.INFO, logger="flwr")
    grid = InProcessGrid(site_app({1: "market"}), {1: {}})
    d = delivery(["market", "cuhk01"], node_wait=2.5, report_every=1.0)
    picked = d.sample(grid, 1.0, {}, 0)
    assert picked == [1]
    waiting = [s for s in lines(caplog) if s.startswith("waiting for sites")]
    assert 1 <= len(waiting) <= 3 and all("missing: cuhk01" in s and "fl.node_wait" in s for s in waiting)
    assert any("going on with 1 of 2 sites" in s and "missing: cuhk01" in s for s in lines(caplog))


def test_no_site_at_all_names_the_config_key():
    grid = InProcessGrid(site_app({}), {})
    with pytest.raises(RuntimeError, match=r"fl.node_wait=0 s.*raise fl.node_wait"):
        delivery(["market"], node_wait=0.0).sample(grid, 1.0, {}, 0)


def _instructions(nodes):
    return [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.TRAIN)
            for n in nodes]


def test_a_dead_site_is_counted_as_failed_not_as_replied(caplog):
    caplog.set_level(logging.INFO, logger="flwr")
    claims = {1: "market", 2: "cuhk01", 3: "ilids"}
    grid = InProcessGrid(site_app(claims, errors={2: int(ErrorCode.NODE_UNAVAILABLE)}), {n: {} for n in claims})
    d = delivery(list(claims.values()))
    replies = list(d.exchange(grid, _instructions(claims), 5.0, "round 1 train", claims))
    assert [int(r.metadata.src_node_id) for r in replies] == [2, 3, 1]  # site order: cuhk01, ilids, market
    said = lines(caplog)
    assert any("cuhk01 failed" in s and "went offline" in s for s in said)
    assert any(s.startswith("round 1 train: 2 of 3 site(s) replied, 1 failed (cuhk01) in ") for s in said)
    assert not any("3 of 3 site(s) replied" in s for s in said)
    assert any(s.endswith("(3 of 3 in, 1 failed)") for s in said)  # every line after the death counts it


def test_a_silent_site_fails_at_the_deadline_named_by_site(caplog):
    caplog.set_level(logging.INFO, logger="flwr")
    claims = {1: "market", 2: "cuhk01"}
    grid = InProcessGrid(site_app(claims), {n: {} for n in claims})
    grid.dead.add(2)
    replies = list(delivery(list(claims.values())).exchange(grid, _instructions(claims), 0.5, "round 2 train",
                                                            claims))
    failed = [r for r in replies if r.has_error()]
    assert len(failed) == 1 and "site cuhk01: no reply within the deadline" in failed[0].error.reason
    assert int(failed[0].metadata.src_node_id) == 2
    assert not any("node 2" in s for s in lines(caplog))


class TrickleGrid(InProcessGrid):
    """Each pull hands over one reply, the highest node's first: ilids (3) overtakes cuhk01 (2)."""

    def pull_messages(self, message_ids):
        node_of = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in self.sent}
        ready = sorted((m for m in message_ids if m in self._replies), key=node_of.get)
        return [self._replies.pop(ready[-1])] if ready else []


def test_replies_are_yielded_in_site_order_as_soon_as_their_turn_comes():
    """A reply is handed to the caller (folded, dropped) while later ones are still on the
    way; one that overtook an earlier site waits for it, so the fold order is the sites'."""
    claims = {1: "market", 2: "cuhk01", 3: "ilids"}
    grid = TrickleGrid(site_app(claims), {n: {} for n in claims})
    d = delivery(list(claims.values()))
    d.sleep = lambda s: None
    seen = []
    for reply in d.exchange(grid, _instructions(claims), 5.0, "round 1 train", claims):
        seen.append((int(reply.metadata.src_node_id), len(grid._replies)))
    assert [node for node, _ in seen] == [2, 3, 1]  # cuhk01, ilids, market
    assert seen[0][1] > 0  # cuhk01 was yielded before every reply had been pulled


def test_instructions_the_superlink_refused_fail_in_their_site_order():
    claims = {1: "market", 2: "cuhk01"}
    grid = InProcessGrid(site_app(claims), {n: {} for n in claims})
    grid.push_messages = lambda msgs: []  # nothing accepted (both offline)
    d = delivery(list(claims.values()), node_wait=0.0)
    replies = list(d.exchange(grid, _instructions(claims), 1.0, "round 1 train", claims))
    assert [int(r.metadata.src_node_id) for r in replies] == [2, 1]
    assert all("did not accept the instruction" in r.error.reason for r in replies)


class SlowPullGrid(InProcessGrid):
    """The first pull blocks past the deadline and returns nothing (a SuperLink holding the
    pull while another site's upload is incomplete); the replies are there afterwards."""

    def __init__(self, *args, block_s: float):
        super().__init__(*args)
        self.block_s, self.pulls = block_s, 0

    def pull_messages(self, message_ids):
        self.pulls += 1
        if self.pulls == 1:
            time.sleep(self.block_s)
            return []
        return super().pull_messages(message_ids)


def test_replies_that_arrived_during_a_slow_pull_are_not_failed():
    claims = {1: "market", 2: "cuhk01"}
    grid = SlowPullGrid(site_app(claims), {n: {} for n in claims}, block_s=0.6)
    replies = list(delivery(list(claims.values())).exchange(grid, _instructions(claims), 0.3, "round 1 train",
                                                            claims))
    assert [r.has_error() for r in replies] == [False, False] and grid.pulls == 2


def test_a_sites_warnings_reach_the_coordinators_log(caplog):
    caplog.set_level(logging.INFO, logger="flwr")
    claims = {1: "market"}
    grid = InProcessGrid(site_app(claims, warnings={1: "round 2 is being redone"}), {1: {}})
    list(delivery(["market"]).exchange(grid, _instructions(claims), 5.0, "round 2 train", claims))
    assert "site market: round 2 is being redone" in lines(caplog)


def test_the_node_wait_is_a_config_key():
    cfg = load_config(["fl.node_wait=7", "data.sites=[a,b]"])
    assert FedReIDStrategy(cfg, STATE, num_sites=2).delivery.node_wait_s == 7
    with pytest.raises(ValueError, match="fl.node_wait=-1"):
        FedReIDStrategy(load_config(["fl.node_wait=-1"]), STATE, num_sites=2)


def test_bound_sites_parse_and_reject_garbage():
    assert parse_bound_sites(["12=market", " 3 = cuhk01 "]) == {12: "market", 3: "cuhk01"}
    for bad in (["market"], ["x=market"], ["12="]):
        with pytest.raises(ValueError, match="NODE_ID=SITE"):
            parse_bound_sites(bad)


def test_a_refused_site_is_asked_again_and_the_same_reason_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="flwr")
    claims = {1: "market", 4: "market"}  # node 4 holds cuhk01's key but was started as market
    grid = InProcessGrid(site_app(claims), {n: {} for n in claims})
    d = delivery(["market", "cuhk01"], bound={1: "market", 4: "cuhk01"}, node_wait=0.0)
    node_site: dict[int, str] = {}
    for _ in range(2):
        d.sample(grid, 1.0, node_site, 0)
    assert sum("refused" in s for s in lines(caplog)) == 1
    claims[4] = "cuhk01"  # restarted with --site cuhk01
    assert d.sample(grid, 1.0, node_site, 1) == [1, 4] and node_site[4] == "cuhk01" and 4 not in d.refused


def test_a_refused_site_restarted_during_the_wait_is_admitted_in_that_wait(monkeypatch):
    """The impostor is replaced by the real site (same key, same node id) while the run
    waits for its sites: it is asked again and admitted, not left out until fl.node_wait ends."""
    monkeypatch.setattr("server.delivery.REASK_REFUSED_S", 0.0)
    claims = {1: "market", 4: "cuhk01-impostor"}
    grid = InProcessGrid(site_app(claims), {n: {} for n in claims})
    d = delivery(["market", "cuhk01"], bound={1: "market", 4: "cuhk01"}, node_wait=60.0)
    waits = []

    def restart_after_first_wait(seconds: float) -> None:
        waits.append(seconds)
        claims[4] = "cuhk01"

    d.sleep = restart_after_first_wait
    node_site: dict[int, str] = {}
    assert d.sample(grid, 1.0, node_site, 0) == [1, 4] and node_site[4] == "cuhk01"
    assert len(waits) == 1
