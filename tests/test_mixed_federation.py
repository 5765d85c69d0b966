"""The method interface end to end: a method written here alone runs a federated round, and
one federation mixes methods — sites whose shared arrays match aggregate, others are refused
at the start with the reason."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from clients.app import make_client_app
from fedreid.config import load_config
from fedreid.config.presets import strategy_overrides
from fedreid.data.batch import Batch, BatchSpec
from fedreid.data.samplers import pk_batches
from fedreid.data.synth import generate_synthetic8
from fedreid.losses import TripletLoss
from fedreid.methods import METHODS, MethodOptions, ReidMethod, StepOutput
from fedreid.report import load_records
from server.app import run_server
from sims.inprocess_grid import InProcessGrid

pytestmark = pytest.mark.usefixtures("task_identity")
SITES = ["market", "cuhk01", "ilids"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate_synthetic8(root, scale=0.05, seed=0, size=(32, 16), sites=SITES, min_test_ids=6, workers=1)
    return root


def tiny_config(root, *extra):
    torch.set_num_threads(1)
    return load_config([
        *strategy_overrides("fedklpr"),
        f"data.root={root}", f"data.sites=[{','.join(SITES)}]", "data.height=32", "data.width=16",
        "fl.rounds=1", "train.batch_size=16", "train.max_batches=1", "eval.batch_size=64",
        "method.capr.eps=0.7", "method.capr.min_samples=2", "crr.delta=1.0", "device=cpu",
        "fl.round_timeout=60", "model.vit_depth=1", *extra,
    ])


def federation(cfg, state_dir, node_configs=None):
    app = make_client_app(cfg, state_dir=state_dir)
    return InProcessGrid(app, node_configs or {100 + i: {"partition-id": i} for i in range(len(SITES))})


@dataclass
class TripletOnlyOptions(MethodOptions):
    margin: float = 0.3


class TripletOnly(ReidMethod):
    """A whole method in a dozen lines: batch-hard triplet on the pooled feature."""

    name = "triplet_only"
    Options = TripletOnlyOptions
    batch_spec = BatchSpec(views=1, labels=True)

    def batches(self, rng):
        return pk_batches(self.train_store.pids, self.setup.batch_size, self.setup.num_instances, rng)

    def training_step(self, batch: Batch) -> StepOutput:
        global_feat, bn_feat = self.model(batch.images)
        loss = TripletLoss(margin=self.options.margin)(global_feat, batch.pids)
        return StepOutput(loss, {"loss_triplet": float(loss.detach())}, embedding=bn_feat)


def test_a_method_written_here_runs_a_federated_round(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, TripletOnly.name, TripletOnly)
    cfg = tiny_config(tiny_data, "method.name=triplet_only")
    run_server(federation(cfg, tmp_path / "s"), cfg, tmp_path / "run", node_wait_s=1)
    train = [r for r in load_records(tmp_path / "run") if r["kind"] == "train"][0]
    assert sorted(train["sites"]) == sorted(SITES) and not train["failures"]
    assert all(s["loss_triplet"] >= 0 and s["prune_ratio"] > 0 for s in train["sites"].values())


def test_sites_with_different_methods_on_one_backbone_aggregate(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, "sites.market.method=bot", "sites.cuhk01.method=scm")  # ilids: capr
    strategy = run_server(federation(cfg, tmp_path / "s"), cfg, tmp_path / "run", node_wait_s=1)
    records = load_records(tmp_path / "run")
    train = [r for r in records if r["kind"] == "train"][0]
    assert sorted(train["sites"]) == sorted(SITES) and not train["failures"]
    assert {s: m["method"] for s, m in train["sites"].items()} == {"market": "bot", "cuhk01": "scm", "ilids": "capr"}
    assert "loss_supcon" in train["sites"]["cuhk01"] and "loss_cap" in train["sites"]["ilids"]
    assert not [r for r in records if r["kind"] == "admission"]
    assert all(np.isfinite(v).all() for v in strategy.state.global_state.values())


def test_a_site_whose_shared_arrays_do_not_match_is_refused_at_the_start(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, "model.arch=auto", "method.name=bot", "sites.ilids.method=vitc")
    run_server(federation(cfg, tmp_path / "s"), cfg, tmp_path / "run", node_wait_s=1)
    records = load_records(tmp_path / "run")
    refused = [r for r in records if r["kind"] == "admission"]
    assert [r["site"] for r in refused] == ["ilids"]
    assert "vit_tiny_p16" in refused[0]["refused"] and "same backbone" in refused[0]["refused"]
    train = [r for r in records if r["kind"] == "train"][0]
    assert sorted(train["sites"]) == ["cuhk01", "market"] and not train["failures"]


def test_a_connected_site_outside_the_run_is_left_alone(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, "data.sites=[market,cuhk01]")
    nodes = {100: {"site": "market"}, 101: {"site": "cuhk01"}, 102: {"site": "ilids"}}
    for node in nodes.values():
        node["data-root"] = str(tiny_data / node["site"])
    run_server(federation(cfg, tmp_path / "s", nodes), cfg, tmp_path / "run", node_wait_s=1)
    records = load_records(tmp_path / "run")
    assert [r["site"] for r in records if r["kind"] == "admission"] == ["ilids"]
    for r in records:
        if r["kind"] in ("train", "evaluate"):
            assert sorted(r["sites"]) == ["cuhk01", "market"]


SETUP_METHODS = {"aerial": "giqt", "ir-video": "lsmrl", "clothes": "echo"}


def test_the_three_sensing_setups_federate_with_an_ordinary_site_on_one_vit(tmp_path):
    """aerial (giqt), ir-video (lsmrl) and clothes (echo) sites beside market (bot) on one
    ViT: each shares only the ViT and neck, every site is aggregated, and the run's summary
    reports each site's own protocol."""
    root = tmp_path / "data"
    generate_synthetic8(root, scale=0.05, seed=0, size=(32, 16), sites=["market"], kinds=list(SETUP_METHODS),
                        min_test_ids=6, workers=1)
    sites = ["market", *SETUP_METHODS]
    cfg = tiny_config(root, f"data.sites=[{','.join(sites)}]", "model.arch=vit_tiny_p16", "model.vit_depth=3",
                      "method.name=bot", "method.giqt.share=geometry-local", "method.lsmrl.share=frame-encoder",
                      *(f"sites.{s}.method={m}" for s, m in SETUP_METHODS.items()))
    run_server(InProcessGrid(make_client_app(cfg, state_dir=tmp_path / "s"),
                             {100 + i: {"partition-id": i} for i in range(len(sites))}), cfg, tmp_path / "run",
               node_wait_s=1)
    records = load_records(tmp_path / "run")
    assert not [r for r in records if r["kind"] == "admission"]
    train = [r for r in records if r["kind"] == "train"][0]
    assert {s: m["method"] for s, m in train["sites"].items()} == {"market": "bot", **SETUP_METHODS}
    assert not train["failures"]
    summary = (tmp_path / "run" / "summary.md").read_text()
    for protocol in ("aerial→ground", "ground→aerial", "infrared→visible", "visible→infrared",
                     "clothes: changing", "clothes: same"):
        assert protocol in summary


def test_a_setup_site_sharing_its_own_modules_is_told_the_narrower_share_rule(tmp_path):
    root = tmp_path / "data"
    generate_synthetic8(root, scale=0.05, seed=0, size=(32, 16), sites=["market"], kinds=["aerial"],
                        min_test_ids=6, workers=1)
    cfg = tiny_config(root, "data.sites=[market,aerial]", "model.arch=vit_tiny_p16", "model.vit_depth=3",
                      "method.name=bot", "sites.aerial.method=giqt")
    run_server(InProcessGrid(make_client_app(cfg, state_dir=tmp_path / "s"), {100: {"partition-id": 0},
                                                                              101: {"partition-id": 1}}),
               cfg, tmp_path / "run", node_wait_s=1)
    refused = [r for r in load_records(tmp_path / "run") if r["kind"] == "admission"]
    assert [r["site"] for r in refused] == ["aerial"]
    assert "method.giqt.share" in refused[0]["refused"] and "backbone.prompt" in refused[0]["refused"]
