"""`fedreid pretrain` → `model.init`: a starting model from generated identities, a federation
that starts from it, and the errors for a missing or mismatched file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from clients.app import make_client_app
from fedreid.config import load_config
from fedreid.config.presets import strategy_overrides
from fedreid.data.synth import generate_from_prompts, generate_synthetic8, random_prompts
from fedreid.models.init_file import load_init_state
from fedreid.report import load_records
from fedreid.training import initial_shared_state
from server.app import run_server
from sims.inprocess_grid import InProcessGrid

runner = CliRunner()
SITES = ["market", "cuhk01"]
SMALL = ["data.height=32", "data.width=16", "model.arch=vit_tiny_p8", "model.vit_depth=1", "device=cpu"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny generated site and the dppp model pretrained on it by the command."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("pre")
    generate_from_prompts(random_prompts(8, 5), tmp / "gen", seed=5, size=(32, 16), images_per_identity=4,
                          cameras=2, workers=1)
    out = tmp / "init.pt"
    result = runner.invoke(app, [
        "pretrain", "--generated", str(tmp / "gen"), "--out", str(out), *SMALL, "train.epochs=1",
        "train.max_batches=2", "train.batch_size=8", "train.num_instances=2", "method.dppp.word_dim=32",
        "method.dppp.joint_dim=32", "method.dppp.text_depth=1", f"run_dir={tmp / 'runs'}",
    ])
    assert result.exit_code == 0, result.output
    assert "model.init=" in result.output
    return out


@pytest.fixture(scope="module")
def tiny_sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate_synthetic8(root, scale=0.05, seed=0, size=(32, 16), sites=SITES, min_test_ids=6, workers=1)
    return root


def fed_config(root, *extra):
    torch.set_num_threads(1)
    return load_config([
        *strategy_overrides("fedklpr"), f"data.root={root}", f"data.sites=[{','.join(SITES)}]", *SMALL,
        "method.name=bot", "fl.rounds=1", "train.batch_size=16", "train.max_batches=1", "eval.batch_size=64",
        "crr.delta=1.0", "fl.round_timeout=60", *extra,
    ])


@pytest.mark.usefixtures("task_identity")
def test_a_federation_starts_from_the_pretrained_model(pretrained, tiny_sites, tmp_path):
    file = torch.load(pretrained, weights_only=True)
    assert file["method"] == "dppp" and file["arch"] == "vit_tiny_p8" and file["image_size"] == [32, 16]
    assert not any(k.startswith("heads") for k in file["model"])  # text side and heads stay behind
    cfg = fed_config(tiny_sites, f"model.init={pretrained}")
    start = initial_shared_state(cfg, "bot")  # a bot federation on the dppp-pretrained encoder
    fresh = initial_shared_state(fed_config(tiny_sites), "bot")
    assert start.keys() == fresh.keys()
    assert all(np.array_equal(v, file["model"][k].numpy()) for k, v in start.items())
    assert any(not np.array_equal(start[k], fresh[k]) for k in start)
    app_ = make_client_app(cfg, state_dir=tmp_path / "s")
    grid = InProcessGrid(app_, {100 + i: {"partition-id": i} for i in range(len(SITES))})
    strategy = run_server(grid, cfg, tmp_path / "run", node_wait_s=1)
    train = [r for r in load_records(tmp_path / "run") if r["kind"] == "train"]
    assert train and sorted(train[0]["sites"]) == sorted(SITES) and not train[0]["failures"]
    assert all(np.isfinite(v).all() for v in strategy.state.global_state.values())


def test_model_init_errors_name_the_file_and_both_models(pretrained, tiny_sites, tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=r"model.init=.*nope\.pt: no such file.*fedreid pretrain"):
        initial_shared_state(fed_config(tiny_sites, f"model.init={missing}"), "bot")
    deeper = fed_config(tiny_sites, f"model.init={pretrained}", "model.vit_depth=2")
    with pytest.raises(ValueError, match=r"model.vit_depth=1.*lacks .* shared keys.*model.vit_depth=2"):
        initial_shared_state(deeper, "bot")
    taller = fed_config(tiny_sites, f"model.init={pretrained}", "data.height=64")
    with pytest.raises(ValueError, match=r"size 32x16.*size 64x16.*differ in shape.*in the file"):
        initial_shared_state(taller, "bot")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    with pytest.raises(ValueError, match="not a readable torch file"):
        load_init_state(junk, {}, "run")


def test_commands_refuse_clearly(tmp_path):
    no_site = runner.invoke(app, ["pretrain", "--generated", str(tmp_path / "empty"), "--out", str(tmp_path / "m.pt")])
    assert no_site.exit_code == 2 and "no pytorch/ folder" in no_site.output and "data generate" in no_site.output
    method = runner.invoke(app, ["pretrain", "--generated", str(tmp_path), "--out", "m.pt", "--method", "scm"])
    assert method.exit_code == 2 and "dppp, bot" in method.output
    sim = runner.invoke(app, ["sim", f"model.init={tmp_path / 'missing.pt'}", "--data", str(tmp_path)])
    assert sim.exit_code == 1 and "missing.pt: no such file" in sim.output
