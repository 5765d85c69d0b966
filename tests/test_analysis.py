"""Attribute-importance analysis: per-query scores, a planted importance recovered from
synthetic features by every measure, the paired tests, the report files, and the knock-out
of a real mosaic model on a generated site checked against the generator's truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from scipy import stats
from typer.testing import CliRunner

from cli.analyse import analyse_app
from fedreid.analysis import (
    Knockout,
    attribute_importance,
    generator_truth,
    importance_chart,
    importance_markdown,
    query_scores,
    rank_agreement,
    run_knockout,
)
from fedreid.analysis.models import checkpoint_site_models, site_knockout
from fedreid.config import load_config, write_run_config
from fedreid.data.split_images import load_split_images
from fedreid.data.synth import generate_synthetic8
from fedreid.eval import evaluate
from fedreid.training import build_method

PLANTED = np.array([1.2, 0.6, 0.3, 0.0])  # how much each attribute's component carries


def planted_knockout(seed: int = 0) -> Knockout:
    """Embeddings = a weak identity part + Σ_a w_a·code_a over the person's attributes + noise;
    knocking out ``a`` removes its component from every image, as a zero gate does."""
    rng = np.random.default_rng(seed)
    e, d, n = len(PLANTED), 32, 100
    attrs = (rng.random((n, e)) < 0.5).astype(float)
    codes = rng.normal(size=(e, d))
    codes /= np.linalg.norm(codes, axis=1, keepdims=True)
    ident = rng.normal(size=(n, d)) * 0.08
    q_pids, g_pids = np.arange(n), np.repeat(np.arange(n), 2)
    q_noise, g_noise = rng.normal(size=(n, d)) * 0.15, rng.normal(size=(2 * n, d)) * 0.15

    def embed(off):
        keep = np.ones(e)
        keep[list(off)] = 0.0

        def features(pids, noise):
            x = ident[pids] + (attrs[pids] * keep * PLANTED) @ codes + noise + 0.3
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        return features(q_pids, q_noise), features(g_pids, g_noise)

    return run_knockout(embed, [f"a{i}" for i in range(e)], q_pids, g_pids, np.zeros(n, int),
                        np.ones(2 * n, int), attrs[q_pids], group="planted")


def test_query_scores_match_evaluate_and_rank1():
    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(6, 8)), rng.normal(size=(10, 8))
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    gf /= np.linalg.norm(gf, axis=1, keepdims=True)
    q_pids, g_pids = np.array([0, 1, 2, 3, 4, 9]), np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 5])
    q_cams, g_cams = np.zeros(6, int), np.array([0, 1, 1, 1, 0, 1, 1, 1, 1, 1])
    scores = query_scores(qf, gf, q_pids, g_pids, q_cams, g_cams)
    ref = evaluate(1 - qf @ gf.T, q_pids, g_pids, q_cams, g_cams, max_rank=1)
    assert scores.queries.tolist() == [0, 1, 2, 3, 4]  # pid 9 has no match
    np.testing.assert_allclose(scores.ap.mean(), ref["mAP"])
    assert scores.hit.mean() == pytest.approx(ref["cmc"][0])


def test_a_planted_importance_is_recovered_by_every_measure():
    ko = planted_knockout()
    imp = attribute_importance(ko, seed=0, trees=50)
    truth = dict(zip(ko.names, PLANTED, strict=True))
    for measure in ("delta_ap", "glm_ap"):
        assert rank_agreement(imp.measure(measure), truth)[0] == pytest.approx(1.0)
    for measure in ("glm_hit", "forest", "shap"):
        if measure == "shap" and imp.shap is None:
            continue
        assert rank_agreement(imp.measure(measure), truth)[0] >= 0.79  # one neighbour swap at most
    assert imp.delta_ap[3] == 0.0 and imp.wilcoxon_p[3] == 1.0  # an expert that carries nothing
    assert (imp.wilcoxon_p[:3] < 0.01).all()
    assert (imp.glm_ap_p[:2] < 0.01).all()


def test_paired_tests_are_holm_corrected():
    ko = planted_knockout(seed=3)
    imp = attribute_importance(ko, seed=0, trees=20)
    raw = [stats.wilcoxon(ko.ap[0] - ko.ap[a + 1]).pvalue for a in range(3)]
    order = np.argsort(raw)
    smallest = min(1.0, raw[order[0]] * 4)  # Holm: the smallest p times the number of tests
    assert imp.wilcoxon_p[order[0]] == pytest.approx(smallest)


def test_pooling_sites_and_rank_agreement_edge_cases():
    a, b = planted_knockout(0), planted_knockout(1)
    pooled = Knockout.concat([a, b])
    assert pooled.num_queries == a.num_queries + b.num_queries
    with pytest.raises(ValueError, match="different experts"):
        Knockout.concat([a, Knockout(("x",), a.attributes[:, :1], a.ap[:2], a.hit[:2], a.group)])
    assert np.isnan(rank_agreement({"x": 1.0, "y": 1.0, "z": 1.0}, {"x": 0.0, "y": 1.0, "z": 2.0})[0])
    rho, n = rank_agreement({"x": 1.0, "y": 2.0}, {"x": 1.0, "y": 2.0})
    assert np.isnan(rho) and n == 2  # too few attributes to rank


def test_report_table_and_chart(tmp_path):
    ko = planted_knockout()
    imp = attribute_importance(ko, seed=0, trees=20)
    truth = dict(zip(ko.names, PLANTED, strict=True))
    text = importance_markdown(imp, "planted", truth, present=["a0", "a1", "a2"])
    lines = [line for line in text.splitlines() if line.startswith("| a") and "attribute" not in line]
    assert [line.split("|")[1].strip() for line in lines][:3] == ["a0", "a1", "a2"]  # by ΔAP
    assert "ρ = 1.000 over 4 attributes" in text
    path = importance_chart(imp, tmp_path / "planted.png", "planted")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def mosaic_checkpoint(tmp_path_factory):
    """A mosaic model (random experts) saved as `fedreid train` saves it, beside its config."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("run")
    root = folder / "syn"
    generate_synthetic8(root, scale=0.05, seed=4, size=(32, 16), sites=["viper", "ilids"], min_test_ids=6,
                        workers=1)
    cfg = load_config([f"data.root={root}", "data.sites=[viper,ilids]", "data.height=32", "data.width=16",
                       "method.name=mosaic", "model.arch=vit_tiny_p8", "model.vit_depth=2",
                       "method.mosaic.expert_blocks=1", "device=cpu", "eval.batch_size=64"])
    write_run_config(folder, cfg)
    images = load_split_images(root / "viper", "fedreid", (32, 16))
    model = build_method(cfg, "mosaic", images.train, torch.device("cpu")).model
    for experts in model.backbone.experts:
        torch.nn.init.normal_(experts.up, std=0.5)
    path = folder / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "method": "mosaic", "arch": "vit_tiny_p8"}, path)
    return path


def test_knockout_of_a_mosaic_checkpoint_on_a_generated_site(mosaic_checkpoint):
    (site,) = checkpoint_site_models(mosaic_checkpoint, ["viper"], [])
    ko = site_knockout(site, flip=False)
    truth = generator_truth(site.data_dir)
    assert truth is not None and len(truth.separability) == 41
    absent = [i for i, n in enumerate(ko.names) if truth.classes[n] == "absent"]
    assert absent and np.array_equal(ko.ap[[a + 1 for a in absent]], np.repeat(ko.ap[:1], len(absent), 0))
    assert ko.ap.shape == (42, ko.num_queries) and set(ko.group) == {"viper"}
    with pytest.raises(ValueError, match="--site"):
        checkpoint_site_models(mosaic_checkpoint, [], [])


def test_the_command_writes_tables_and_charts_per_site_and_federation(mosaic_checkpoint, tmp_path):
    app = typer.Typer()
    app.add_typer(analyse_app, name="analyse")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["analyse", "attributes", "--checkpoint", str(mosaic_checkpoint),
                                      "--site", "viper", "--site", "ilids", "--out", str(out),
                                      "--trees", "10", "--no-flip"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"viper.md", "viper.png", "ilids.md", "ilids.png",
                                               "federation.md", "federation.png", "importance.json"}
    assert "Rank agreement with the generator's separability" in (out / "viper.md").read_text()
    assert "Rank agreement between sites" in (out / "federation.md").read_text()
    report = json.loads((out / "importance.json").read_text())
    assert report["federation"]["num_queries"] == sum(report["sites"][s]["num_queries"] for s in ("viper", "ilids"))
    bad = CliRunner().invoke(app, ["analyse", "attributes", "nowhere", "--checkpoint", str(mosaic_checkpoint)])
    assert bad.exit_code != 0 and "not both" in bad.output
