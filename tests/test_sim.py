"""The simulation harness: Ray settings, run-folder reports, and (slow) a real Flower run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from fedreid.config import load_config
from fedreid.config.presets import parse_strategy_runs
from fedreid.report import compare_runs, run_curves, write_summary
from sims.runner import backend_config


def test_ray_address_reaches_ray_init(monkeypatch):
    """With sim.ray_address the simulation joins that cluster: Flower's Ray backend must call
    ray.init(address=...) with it (and nothing that would start a local cluster)."""
    import ray
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    cfg = load_config(["sim.ray_address=ray://10.1.2.3:10001", "sim.client_cpus=4"])
    RayBackend(backend_config(cfg, num_sites=8))
    assert calls and calls[0]["address"] == "ray://10.1.2.3:10001"
    assert "num_cpus" not in calls[0]


def test_each_site_gets_a_gpu_share_when_gpus_exist(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    conf = backend_config(load_config(["device=auto"]), num_sites=8)
    assert conf["client_resources"]["num_gpus"] == pytest.approx(0.25)
    assert conf["init_args"]["num_gpus"] == 2
    cpu = backend_config(load_config(["device=cpu"]), num_sites=8)
    assert cpu["client_resources"]["num_gpus"] == 0


def _fake_run(folder: Path, strategy: str, maps: list[float], up: int, rerank: float = 0.0) -> Path:
    folder.mkdir(parents=True)
    lines = []
    for rnd, m in enumerate(maps):
        if rnd:
            lines.append({"kind": "train", "round": rnd, "bytes_up": up, "bytes_down": up, "sites": {},
                          "failures": [], "dense_bytes": 4 * up, "mean_prune_ratio": 0.2})
        sites = {s: {"global_mAP": m, "global_rank1": m + 0.1, "personal_mAP": m, "personal_rank1": m}
                 for s in ("a", "b")}
        means = {"mean_mAP": m, "mean_rank1": m + 0.1}
        if rerank:
            for site in sites.values():
                site.update(global_rerank_mAP=m + rerank, global_rerank_rank1=m + 0.1 + rerank)
            means.update(mean_rerank_mAP=m + rerank, mean_rerank_rank1=m + 0.1 + rerank)
        lines.append({"kind": "evaluate", "round": rnd, "sites": sites, **means,
                      "mean_personal_mAP": m, "mean_personal_rank1": m,
                      "bytes_up": 0, "bytes_down": up // 2})
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return folder


def test_summary_comparison_and_plots(tmp_path):
    a = _fake_run(tmp_path / "fedklpr", "fedklpr", [0.1, 0.2, 0.3], up=100)
    b = _fake_run(tmp_path / "fedcapr", "fedcapr", [0.1, 0.25, 0.31], up=250)
    c = run_curves(a)
    # evaluation broadcasts count too: 50 bytes a round here, beside 200 of training
    assert c["rounds"] == [0, 1, 2] and c["bytes"] == [50, 300, 550]
    assert (c["train_bytes"], c["eval_bytes"]) == (400, 150)
    assert "(training 400, evaluation 150)" in write_summary(a, "t")
    assert "| **mean** | 0.1 | 0.3 |" in write_summary(a, "t")
    text = compare_runs({"fedklpr": a, "fedcapr": b}, tmp_path)
    assert "60.0%" in text  # 550 vs 1375 bytes
    # The saving and the accuracy gap open the comparison, in one sentence.
    assert text.splitlines()[2] == (
        "**fedklpr** sent 60.0 % fewer bytes than **fedcapr** (0 MB against 0 MB: training and "
        "evaluation, up and down) and ended 1.0 mAP points below it (final mean mAP 0.300 against 0.310).")
    described = compare_runs({"fedklpr": a, "fedavg": b}, tmp_path,
                             {"fedklpr": "fedklpr (codec.value_dtype=float16)", "fedavg": "fedavg"})
    assert "- `fedklpr`: fedklpr (codec.value_dtype=float16)" in described
    assert "than **fedavg**" in described
    for name in ("map_per_round.png", "bytes_per_round.png", "map_vs_bytes.png", "comparison.md"):
        assert (tmp_path / name).stat().st_size > 0


def test_compare_entries_carry_their_own_overrides():
    runs = parse_strategy_runs("fedklpr:codec.value_dtype=float16:prune.start_round=3, fedavg,fedklpr")
    assert [(r.label, r.strategy, r.overrides) for r in runs] == [
        ("fedklpr", "fedklpr", ("codec.value_dtype=float16", "prune.start_round=3")),
        ("fedavg", "fedavg", ()), ("fedklpr-2", "fedklpr", ())]
    assert runs[0].describe() == "fedklpr (codec.value_dtype=float16, prune.start_round=3)"
    with pytest.raises(ValueError, match="fedklpr, fedcapr"):
        parse_strategy_runs("fedkl")
    with pytest.raises(ValueError, match="STRATEGY:key=value"):
        parse_strategy_runs("fedklpr:float16")


def test_summary_puts_reranked_figures_beside_plain_ones(tmp_path):
    plain = write_summary(_fake_run(tmp_path / "plain", "fedklpr", [0.1, 0.3], up=100), "t")
    assert "re-ranked" not in plain
    text = write_summary(_fake_run(tmp_path / "kwf", "fedklpr", [0.1, 0.3], up=100, rerank=0.05), "t")
    header = next(line for line in text.splitlines() if line.startswith("| site"))
    assert "| mAP round 1 | Rank-1 round 1 | mAP re-ranked | Rank-1 re-ranked |" in header
    assert "| **mean** | 0.1 | 0.3 | 0.4 | 0.35 | 0.45 |" in text


@pytest.mark.slow
def test_real_flower_simulation(tmp_path):
    """Flower's simulation engine (Ray actors) over two tiny sites, FedKLPR vs FedCAPR."""
    from fedreid.data.synth import generate_synthetic8
    from sims.runner import run_sim_command

    data = tmp_path / "data"
    generate_synthetic8(data, scale=0.05, seed=0, size=(32, 16), sites=["market", "cuhk01"], min_test_ids=6,
                        workers=1)
    base = run_sim_command(
        ["data.sites=[market,cuhk01]", "data.height=32", "data.width=16", "fl.rounds=2",
         "train.max_batches=2", f"run_dir={tmp_path / 'runs'}", "sim.client_cpus=1"],
        strategies=parse_strategy_runs("fedklpr,fedcapr"), data=data, resume=None, config_file=None, console=Console(),
    )
    for strategy in ("fedklpr", "fedcapr"):
        c = run_curves(base / strategy)
        assert c["rounds"] == [0, 1, 2]
        assert not any(t["failures"] for t in c["trains"].values())
    ours, dense = run_curves(base / "fedklpr"), run_curves(base / "fedcapr")
    assert ours["bytes_up"] < dense["bytes_up"]
    assert (base / "comparison.md").exists() and (base / "map_vs_bytes.png").exists()
