"""A whole federation in one process: server strategy ⇄ ClientApp over three tiny sites.

Uses the real ClientApp and strategy through an in-process Grid (no Ray, no sockets), so the
round flow, private state, failures and resume are exercised in seconds.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from clients.app import make_client_app
from fedreid.config import load_config
from fedreid.config.presets import strategy_overrides
from fedreid.data.synth import generate_synthetic8
from fedreid.report import load_records
from server.app import run_server
from server.checkpoint import load_checkpoint
from sims.inprocess_grid import InProcessGrid

pytestmark = pytest.mark.usefixtures("task_identity")
SITES = ["market", "cuhk01", "ilids"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate_synthetic8(root, scale=0.05, seed=0, size=(32, 16), sites=SITES, min_test_ids=6, workers=1)
    return root


def tiny_config(root, strategy="fedklpr", rounds=2, extra=()):
    torch.set_num_threads(1)
    return load_config([
        *strategy_overrides(strategy),
        f"data.root={root}", f"data.sites=[{','.join(SITES)}]", "data.height=32", "data.width=16",
        f"fl.rounds={rounds}", "train.batch_size=16", "train.max_batches=2", "eval.batch_size=64",
        "method.capr.eps=0.7", "method.capr.min_samples=2", "prune.step=0.3", "prune.target=0.5",
        "crr.delta=1.0", "device=cpu", "sim.client_cpus=1", "fl.round_timeout=60", *extra,
    ])


def federation(cfg, state_dir):
    app = make_client_app(cfg, state_dir=state_dir)
    return InProcessGrid(app, {100 + i: {"partition-id": i, "num-partitions": len(SITES)}
                               for i in range(len(SITES))})


def test_two_rounds_of_fedklpr(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data)
    grid = federation(cfg, tmp_path / "state")
    strategy = run_server(grid, cfg, tmp_path / "run", node_wait_s=1)
    records = load_records(tmp_path / "run")
    trains = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "evaluate"]
    assert [r["round"] for r in trains] == [1, 2]
    assert [r["round"] for r in evals] == [0, 1, 2]
    assert all(not r["failures"] for r in trains)
    # Every site pruned: masks reached the server. Round 1 sends only the seeded start's
    # digest; round 2 downloads are the global model sparse under each site's mask.
    assert set(strategy.state.site_masks) == set(SITES)
    assert trains[0]["bytes_down"] < 1000 < trains[1]["bytes_down"] < trains[1]["dense_bytes"] / 2
    assert trains[1]["bytes_up"] < trains[1]["dense_bytes"] / 2
    ratios = [s["prune_ratio"] for s in trains[1]["sites"].values()]
    assert all(0.2 < r <= 0.5 + 1e-6 for r in ratios)
    w = [s["weight"] for s in trains[1]["sites"].values()]
    assert sum(w) == pytest.approx(1.0)
    # Private state persisted per site (context.state and the state file), never sent.
    for site in SITES:
        assert (tmp_path / "state" / f"{site}.pt").exists()
    for msg in grid.sent:
        keys = set(msg.content.array_records.get("arrays", {}).keys())
        assert not any(k.startswith(("private", "mask/", "crr/")) for k in keys)
    assert (tmp_path / "run" / "summary.md").read_text().count("|") > 10
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


def test_a_failing_site_is_recorded_and_others_aggregated(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, rounds=1, extra=["fl.round_timeout=1"])
    grid = federation(cfg, tmp_path / "state")
    grid.silent[101] = {"train"}  # cuhk01 is admitted, then never answers a training round
    run_server(grid, cfg, tmp_path / "run", node_wait_s=1)
    train = [r for r in load_records(tmp_path / "run") if r["kind"] == "train"][0]
    assert len(train["sites"]) == 2
    assert len(train["failures"]) == 1 and "deadline" in train["failures"][0]["reason"]


def test_a_site_that_never_answers_is_left_out_after_the_wait(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, rounds=1)
    grid = federation(cfg, tmp_path / "state")
    grid.dead.add(101)
    run_server(grid, cfg, tmp_path / "run", node_wait_s=1)
    train = [r for r in load_records(tmp_path / "run") if r["kind"] == "train"][0]
    assert sorted(train["sites"]) == ["ilids", "market"] and not train["failures"]


def test_resume_gives_the_same_next_round(tiny_data, tmp_path):
    cfg2 = tiny_config(tiny_data, rounds=2)
    full = run_server(federation(cfg2, tmp_path / "a-state"), cfg2, tmp_path / "a", node_wait_s=1)

    cfg1 = tiny_config(tiny_data, rounds=1)
    grid = federation(cfg1, tmp_path / "b-state")
    run_server(grid, cfg1, tmp_path / "b", node_wait_s=1)
    state, _, _ = load_checkpoint(tmp_path / "b")
    assert state.last_round == 1
    # "Restart": a fresh grid (empty Context.state) and the same state dir and run dir.
    resumed = run_server(federation(cfg2, tmp_path / "b-state"), cfg2, tmp_path / "b", resume=True,
                         node_wait_s=1)
    for key, value in full.state.global_state.items():
        np.testing.assert_allclose(resumed.state.global_state[key], value, rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    rounds = [r["round"] for r in load_records(tmp_path / "b") if r["kind"] == "train"]
    assert rounds == [1, 2]


def test_a_round_redone_after_a_coordinator_crash_starts_from_the_earlier_site_state(tiny_data, tmp_path):
    """Sites saved round 2, the coordinator died before aggregating it: the resumed run redoes
    round 2, and each site trains it from its state after round 1 (not pruning twice)."""
    cfg1, cfg2 = tiny_config(tiny_data, rounds=1), tiny_config(tiny_data, rounds=2)
    run_server(federation(cfg1, tmp_path / "state"), cfg1, tmp_path / "b", node_wait_s=1)
    shutil.copytree(tmp_path / "b", tmp_path / "c")  # the coordinator's files after round 1
    done = run_server(federation(cfg2, tmp_path / "state"), cfg2, tmp_path / "b", resume=True, node_wait_s=1)
    # "crash": the coordinator lost round 2; the sites' state files already hold it
    redone = run_server(federation(cfg2, tmp_path / "state"), cfg2, tmp_path / "c", resume=True, node_wait_s=1)
    round2 = [r for r in load_records(tmp_path / "c") if r["kind"] == "train"][-1]
    assert round2["round"] == 2 and all(s["redone_round"] == 1.0 for s in round2["sites"].values())
    first = [r for r in load_records(tmp_path / "b") if r["kind"] == "train"][-1]
    for site, metrics in first["sites"].items():
        assert round2["sites"][site]["prune_ratio"] == pytest.approx(metrics["prune_ratio"])
    for key, value in done.state.global_state.items():
        np.testing.assert_allclose(redone.state.global_state[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("strategy", ["fedcapr", "fedpav", "fedavg"])
def test_baselines_run_dense(tiny_data, tmp_path, strategy):
    cfg = tiny_config(tiny_data, strategy=strategy, rounds=1)
    strat = run_server(federation(cfg, tmp_path / "s"), cfg, tmp_path / "run", node_wait_s=1)
    train = [r for r in load_records(tmp_path / "run") if r["kind"] == "train"][0]
    assert len(train["sites"]) == 3 and not train["failures"]
    assert not strat.state.site_masks  # dense: nothing pruned
    assert train["bytes_up"] == pytest.approx(train["dense_bytes"] / 2, rel=0.01)


def test_crr_restores_the_mask_and_halts_pruning_on_a_score_drop(tiny_data, tmp_path, monkeypatch):
    """Round 2's download scores far below round 1's: the site undoes the step and stops pruning."""
    from fedreid.federated_client import FederatedClient

    scores = iter([0.9, 0.1, 0.1, 0.1] * 3)
    monkeypatch.setattr(FederatedClient, "crr_score", lambda self, labels: next(scores))
    cfg = tiny_config(tiny_data, rounds=3, extra=["crr.delta=0.05", "data.sites=[market]"])
    grid = InProcessGrid(make_client_app(cfg, state_dir=tmp_path / "s"), {1: {"partition-id": 0}})
    run_server(grid, cfg, tmp_path / "run", node_wait_s=1)
    trains = [r["sites"]["market"] for r in load_records(tmp_path / "run") if r["kind"] == "train"]
    assert trains[0]["prune_ratio"] > 0 and trains[0]["pruned_this_round"] == 1
    assert trains[1]["crr_restored"] == 1 and trains[1]["prune_ratio"] == 0 and trains[1]["crr_halted"] == 1
    assert trains[2]["pruned_this_round"] == 0 and trains[2]["prune_ratio"] == 0


def test_crr_pause_stops_pruning_for_its_rounds_then_resumes(tiny_data, tmp_path, monkeypatch):
    """halt=pause: a restore in round 2 pauses rounds 2 and 3; round 4 prunes again, though
    nothing was pending to check in round 3."""
    from fedreid.federated_client import FederatedClient

    scores = iter([0.9, 0.1] + [0.1] * 20)  # round 1 records 0.9; round 2's download: 0.1
    monkeypatch.setattr(FederatedClient, "crr_score", lambda self, labels: next(scores))
    cfg = tiny_config(tiny_data, rounds=4, extra=["crr.delta=0.05", "crr.halt=pause", "crr.pause_rounds=2",
                                                   "data.sites=[market]", "eval.every=4"])
    grid = InProcessGrid(make_client_app(cfg, state_dir=tmp_path / "s"), {1: {"partition-id": 0}})
    run_server(grid, cfg, tmp_path / "run", node_wait_s=1)
    trains = [r["sites"]["market"] for r in load_records(tmp_path / "run") if r["kind"] == "train"]
    assert [t["pruned_this_round"] for t in trains] == [1, 0, 0, 1]
    assert trains[1]["crr_restored"] == 1 and not any(t["crr_halted"] for t in trains)


def test_a_site_at_its_target_sparsity_takes_no_more_steps_so_crr_is_not_armed(tiny_data, tmp_path):
    """magnitude_prune stops a hair under the target (floor of target × elements); that must
    count as reached, or every later round takes an empty step that CRR checks and may undo."""
    cfg = tiny_config(tiny_data, rounds=3, extra=["prune.step=0.5", "prune.target=0.3", "crr.delta=1.0",
                                                   "data.sites=[market]"])
    grid = InProcessGrid(make_client_app(cfg, state_dir=tmp_path / "s"), {1: {"partition-id": 0}})
    run_server(grid, cfg, tmp_path / "run", node_wait_s=1)
    trains = [r["sites"]["market"] for r in load_records(tmp_path / "run") if r["kind"] == "train"]
    assert [t["pruned_this_round"] for t in trains] == [1, 0, 0]
    assert trains[0]["prune_ratio"] == trains[2]["prune_ratio"] == pytest.approx(0.3, abs=1e-6)
    assert "crr_restored" not in trains[2]  # no empty step in round 2 for CRR to check


def test_differential_privacy_clips_sites_and_noises_the_aggregate(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, rounds=2, extra=["dp.enabled=true", "dp.clipping_norm=0.5",
                                                  "dp.noise_multiplier=0.5", "eval.every=2"])
    grid = federation(cfg, tmp_path / "state")
    strategy = run_server(grid, cfg, tmp_path / "run", node_wait_s=1)
    trains = [r for r in load_records(tmp_path / "run") if r["kind"] == "train"]
    assert [r["round"] for r in trains] == [1, 2] and not any(r["failures"] for r in trains)
    for r in trains:
        assert all(s["dp_update_norm"] > 0.5 and s["dp_clipped"] == 1.0 for s in r["sites"].values())
        assert 0 < r["dp_noise_std_max"] <= 0.5 * 0.5 + 1e-6
    assert trains[1]["dp_epsilon"] > trains[0]["dp_epsilon"] > 0
    assert all(np.isfinite(v).all() for v in strategy.state.global_state.values())


def _comparable(records: list[dict]) -> list[dict]:
    """metrics.jsonl without the wall-clock figures, which differ between any two runs."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if "seconds" not in k}
        return value
    return [strip(r) for r in records]


def test_the_same_config_and_seed_give_identical_metrics(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, rounds=2, extra=["fl.fraction_train=0.67"])
    runs = []
    for name, first_id in (("a", 100), ("b", 9_000_000_000)):
        # node ids are random in a real run: another set, in another order, must not matter
        app = make_client_app(cfg, state_dir=tmp_path / f"{name}-state")
        grid = InProcessGrid(app, {first_id - i: {"partition-id": i} for i in range(len(SITES))})
        run_server(grid, cfg, tmp_path / name, node_wait_s=1)
        runs.append(_comparable(load_records(tmp_path / name)))
    assert runs[0] == runs[1]


def test_int8_view_downloads_send_each_global_once_and_sites_hold_the_coordinators_view(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, rounds=3, extra=("codec.download=difference-int8",
                                                  "codec.upload=difference-int8", "eval.every=2"))
    grid = federation(cfg, tmp_path / "state")
    strategy = run_server(grid, cfg, tmp_path / "run", node_wait_s=1)
    records = load_records(tmp_path / "run")
    trains = [r for r in records if r["kind"] == "train"]
    evals = {r["round"]: r for r in records if r["kind"] == "evaluate"}
    assert sorted(evals) == [0, 2, 3] and all(not r["failures"] for r in trains)
    # dense_bytes counts a float32 model each way per site: a quarter of it is a byte a weight.
    # Round 1: the seeded start; round 2: one int8 step; round 3: the round-2 evaluation
    # already carried the global, so only tokens travel.
    one_way = trains[1]["dense_bytes"] / 2
    assert trains[0]["bytes_down"] < 1000 * len(SITES)
    assert 0.24 * one_way < trains[1]["bytes_down"] < 0.27 * one_way
    assert trains[2]["bytes_down"] < 1000 * len(SITES)
    assert evals[2]["bytes_down"] < 0.27 * evals[2]["dense_bytes"]
    # uploads: int8 differences (a byte a kept weight, plus bitmaps in rounds that prune)
    assert all(r["bytes_up"] < 0.32 * r["dense_bytes"] / 2 for r in trains)
    from clients.runtime import load_view

    for context in grid.contexts.values():
        view = load_view(context)
        assert view.token == strategy.views.view.token
        for key, value in strategy.views.view.view.items():
            np.testing.assert_array_equal(view.state[key], value, err_msg=key)


def test_a_site_that_lost_its_view_is_sent_the_whole_view(tiny_data, tmp_path, monkeypatch):
    import clients.runtime as runtime

    calls = {"n": 0}
    real = runtime.load_view

    def forgetful(context):  # the 10th call is the first site's round-2 training
        calls["n"] += 1
        return runtime.SiteView() if calls["n"] == 10 else real(context)

    monkeypatch.setattr(runtime, "load_view", forgetful)
    cfg = tiny_config(tiny_data, rounds=2, extra=("codec.download=difference-int8",))
    run_server(federation(cfg, tmp_path / "state"), cfg, tmp_path / "run", node_wait_s=1)
    trains = [r for r in load_records(tmp_path / "run") if r["kind"] == "train"]
    assert calls["n"] > 10 and all(not r["failures"] for r in trains)
    assert set(trains[1]["sites"]) == set(SITES)  # repaired, not dropped
    # one whole float32 view on top of the token-only downloads
    one_model = trains[0]["dense_bytes"] / (2 * len(SITES))
    assert one_model * 0.99 < trains[1]["bytes_down"] < one_model * 1.01
